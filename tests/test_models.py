"""The domain values are frozen, slotted dataclasses (docs/design.md)."""

from __future__ import annotations

import dataclasses

from lineage_core import models

MODELS = [
    value
    for value in vars(models).values()
    if isinstance(value, type) and dataclasses.is_dataclass(value)
]


def test_every_model_is_a_frozen_slotted_dataclass() -> None:
    assert len(MODELS) >= 17
    for cls in MODELS:
        assert cls.__dataclass_params__.frozen, cls  # type: ignore[attr-defined]
        assert "__slots__" in cls.__dict__, cls
