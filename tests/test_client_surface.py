"""The public surface of ``lineage_client``: complete, sorted, documented."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import typing

import lineage_client
from lineage_client import reproduce
from lineage_client.client import Client
from lineage_core import errors, models

# The modules whose types make up the client's API.
API_MODULES = (models.__name__, errors.__name__, reproduce.__name__)


def _public_methods() -> list[str]:
    return [name for name, _ in inspect.getmembers(Client, inspect.isfunction) if name[0] != "_"]


def _classes_in(annotation: object) -> set[type]:
    found: set[type] = set()
    if isinstance(annotation, type):
        found.add(annotation)
    for argument in typing.get_args(annotation):
        found |= _classes_in(argument)
    return found


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert lineage_client.__all__ == sorted(lineage_client.__all__)
    assert len(set(lineage_client.__all__)) == len(lineage_client.__all__)
    for name in lineage_client.__all__:
        assert getattr(lineage_client, name) is not None, name


def test_every_value_the_client_takes_or_returns_is_exported() -> None:
    """A caller never has to reach into the daemon's modules for a type of the API."""
    exported = {getattr(lineage_client, name) for name in lineage_client.__all__}
    needed: set[type] = set()
    for name in _public_methods():
        # Names the client module imports only for type checking resolve in their modules.
        names = {**vars(models), **vars(errors), **vars(reproduce)}
        hints = typing.get_type_hints(getattr(Client, name), localns=names)
        for annotation in hints.values():
            needed |= {cls for cls in _classes_in(annotation) if cls.__module__ in API_MODULES}
    # ... and every type those values hold in their fields (a Version's ChangeKind, ...).
    todo = list(needed)
    while todo:
        cls = todo.pop()
        if not dataclasses.is_dataclass(cls):
            continue
        names = {**vars(models), **vars(errors), **vars(reproduce)}
        for annotation in typing.get_type_hints(cls, localns=names).values():
            for found in _classes_in(annotation) - needed:
                if found.__module__ in API_MODULES:
                    needed.add(found)
                    todo.append(found)
    assert needed, "no model type found in the client's signatures: the check is broken"
    assert needed <= exported, sorted(c.__name__ for c in needed - exported)


def test_every_error_a_caller_can_catch_is_exported() -> None:
    """The client raises the very class the daemon raised: any of the tree."""
    for name in errors.__all__:
        found = getattr(errors, name)
        if isinstance(found, type) and issubclass(found, errors.LineageError):
            assert name in lineage_client.__all__, name


def test_every_public_name_has_a_docstring() -> None:
    for name in lineage_client.__all__:
        value = getattr(lineage_client, name)
        if isinstance(value, type) and issubclass(value, enum.Enum):
            doc = value.__doc__
        else:
            doc = inspect.getdoc(value)
        assert doc and doc.strip(), f"{name} has no docstring"
    for name in _public_methods():
        assert inspect.getdoc(getattr(Client, name)), f"Client.{name} has no docstring"


def test_the_client_never_imports_the_daemon() -> None:
    """Client and daemon share lineage_core and nothing else: importing every client module
    (the CLI, the capture wrapper, spool, reproduce, the web view) leaves ``lineaged`` out."""
    import pkgutil
    import subprocess
    import sys

    names = [
        info.name
        for info in pkgutil.walk_packages(lineage_client.__path__, "lineage_client.")
        if "mlflow" not in info.name  # the MLflow bridge imports MLflow, an optional extra
        and "._boot" not in info.name  # sitecustomize of runs under capture: it acts on import
    ]
    assert "lineage_client.cli" in names and "lineage_client.ui.server" in names
    program = (
        "import importlib, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "daemon = sorted(m for m in sys.modules if m == 'lineaged' or m.startswith('lineaged.'))\n"
        "sys.exit(f'the client imported {daemon}' if daemon else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_error_maps_are_built_from_the_classes() -> None:
    """The tree drawn in errors.py's docstring is the tree of classes, and a status code alone
    maps back to the most general class that answers with it."""
    import re

    drawn = {
        name: (status, int(code))
        for name, status, code in re.findall(r"(\w+)\s+([A-Z_]+)\s+exit (\d)", errors.__doc__ or "")
    }
    classes = {name: (cls.grpc_status, cls.exit_code) for name, cls in errors.ERROR_CLASSES.items()}
    assert drawn == classes
    assert set(classes) <= set(errors.__all__)
    for name, cls in errors.ERROR_CLASSES.items():
        assert type(errors.error_for_status("OK", "m", name)) is cls
        general = type(errors.error_for_status(cls.grpc_status, "m"))
        assert general.grpc_status == cls.grpc_status
        assert all(parent.grpc_status != cls.grpc_status for parent in general.__mro__[1:-3])
    assert type(errors.error_for_status("NO_SUCH_CODE", "m")) is errors.LineageError


def _modules_after(statement: str) -> set[str]:
    import subprocess
    import sys

    program = f"import sys\n{statement}\nprint(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_imports_that_only_one_path_needs_stay_off_the_others() -> None:
    """The deferred imports marked (e) (docs/architecture.md): a query client does not load
    the run wrapper; `lineaged --once` loads neither grpc nor sqlite-utils (which loads pandas
    when it is installed), importlib.metadata (only watching asks watchdog's version) nor
    multiprocessing (only a first index of many files hashes in a process pool)."""
    client = _modules_after("import lineage_client.client, lineage_client.cli")
    assert "lineage_client.client" in client
    assert not {"lineage_client.runcmd", "lineage_client.capture.declared"} & client
    daemon = _modules_after("import lineaged.daemon")
    assert "lineaged.engine" in daemon and "lineaged.store" in daemon
    heavy = {"grpc", "sqlite_utils", "pandas", "lineaged.server", "importlib.metadata"}
    assert not (heavy | {"multiprocessing"}) & daemon
