"""The domain values: frozen, slotted dataclasses whose ``__init__`` behaves as generated."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from dataclasses import FrozenInstanceError

import pytest

from lineaged import models
from lineaged.models import Edge, build_many

MODELS = [
    value
    for value in vars(models).values()
    if isinstance(value, type) and dataclasses.is_dataclass(value)
]


def _reference(cls: type) -> type:
    """The same fields through dataclasses' own generated ``__init__``."""
    specs = []
    for item in dataclasses.fields(cls):
        if item.default is not dataclasses.MISSING:
            specs.append((item.name, item.type, dataclasses.field(default=item.default)))
        elif item.default_factory is not dataclasses.MISSING:
            specs.append(
                (item.name, item.type, dataclasses.field(default_factory=item.default_factory))
            )
        else:
            specs.append((item.name, item.type))
    return dataclasses.make_dataclass(cls.__name__, specs, frozen=True, slots=True)


def test_every_model_is_a_frozen_slotted_dataclass() -> None:
    assert len(MODELS) >= 17
    for cls in MODELS:
        assert cls.__dataclass_params__.frozen, cls  # type: ignore[attr-defined]
        assert "__slots__" in cls.__dict__, cls


@pytest.mark.parametrize("cls", MODELS, ids=lambda cls: cls.__name__)
def test_init_takes_what_the_generated_one_takes(cls: type) -> None:
    ours = inspect.signature(cls.__init__).parameters
    theirs = inspect.signature(_reference(cls).__init__).parameters
    assert list(ours) == list(theirs)
    for name, param in ours.items():
        reference = theirs[name]
        assert param.kind == reference.kind, name
        # A default_factory field shows a sentinel in both: only "has a default" is comparable.
        assert (param.default is inspect.Parameter.empty) == (
            reference.default is inspect.Parameter.empty
        ), name
        if reference.default is not inspect.Parameter.empty:
            field = next(f for f in dataclasses.fields(cls) if f.name == name)
            if field.default_factory is dataclasses.MISSING:
                assert param.default is reference.default, name


def test_values_are_stored_defaults_filled_and_frozen() -> None:
    edge = models.Edge("run:a", "version:1", "read")
    assert (edge.source, edge.target, edge.kind, edge.how, edge.role) == (
        "run:a",
        "version:1",
        "read",
        "traced",
        "data",
    )
    assert edge == models.Edge(source="run:a", target="version:1", kind="read")
    assert hash(edge) == hash(models.Edge("run:a", "version:1", "read", "traced"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        edge.kind = "wrote"  # type: ignore[misc]
    with pytest.raises(TypeError, match="target"):
        models.Edge("run:a")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword"):
        models.Edge("run:a", "version:1", "read", colour="red")  # type: ignore[call-arg]
    changed = dataclasses.replace(edge, kind="wrote")
    assert changed.kind == "wrote" and edge.kind == "read"
    assert pickle.loads(pickle.dumps(edge)) == edge


def test_a_default_factory_gives_each_value_its_own() -> None:
    first, second = models.EnvState(), models.EnvState()
    assert first.variables == {} and first.variables is not second.variables
    given = {"LANG": "C"}
    assert models.EnvState(variables=given).variables is given
    assert models.RunStart("train").params == {}


@pytest.mark.parametrize(
    "extra",
    [
        {"b": dataclasses.field(default=0, init=False)},
        {"b": dataclasses.field(default=0, kw_only=True)},
        {"__post_init__": lambda self: None},
    ],
    ids=["init-false", "kw-only", "post-init"],
)
def test_what_the_faster_init_does_not_do_is_refused(extra: dict[str, object]) -> None:
    namespace: dict[str, object] = {"__annotations__": {"a": int}}
    for name, value in extra.items():
        if name == "__post_init__":
            namespace[name] = value
        else:
            namespace["__annotations__"][name] = int  # type: ignore[index]
            namespace[name] = value
    cls = dataclasses.dataclass(frozen=True, slots=True)(type("Value", (), namespace))
    with pytest.raises(TypeError, match="need care"):
        models._store_through_slots(cls)


def test_build_many_makes_the_values_the_constructor_makes() -> None:
    columns = (["run:a", "run:b"], ["version:1", "version:2"], ["read", "wrote"],
               ["traced", "declared"], ["data", "code"], [False, True])  # fmt: skip
    built = build_many(Edge, 2, *columns)
    assert built == list(map(Edge, *columns))
    assert all(type(edge) is Edge for edge in built)
    with pytest.raises(FrozenInstanceError):
        built[0].kind = "wrote"  # type: ignore[misc]
    with pytest.raises(ValueError, match="6 columns of 2 values"):
        build_many(Edge, 2, *columns[:5])
    with pytest.raises(ValueError, match="6 columns of 3 values"):
        build_many(Edge, 3, *columns)
