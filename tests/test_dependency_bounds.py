"""pyproject.toml's runtime bounds allow nothing the committed stubs would refuse.

The gRPC stubs refuse to import on a grpcio older than the generator that wrote them
(``GRPC_GENERATED_VERSION``), and protobuf's gencode refuses a runtime older than itself or
of another major version. A lower bound below those is a promise the code cannot keep.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
STUBS = REPO / "clients" / "lineage_core" / "_proto" / "lineage" / "v1"


def _project() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return project


def _bounds() -> dict[str, SpecifierSet]:
    """Every runtime bound: the client's dependencies and the daemon extra's."""
    project = _project()
    texts = project["dependencies"] + project["optional-dependencies"]["daemon"]
    return {r.name.lower(): r.specifier for r in map(Requirement, texts)}


def test_client_install_leaves_out_the_daemon_dependencies() -> None:
    """pip install lineaged is the client; watchdog and sqlite-utils come with [daemon]."""
    client = {Requirement(text).name.lower() for text in _project()["dependencies"]}
    daemon = {
        Requirement(text).name.lower() for text in _project()["optional-dependencies"]["daemon"]
    }
    assert client == {"blake3", "grpcio", "protobuf"}
    assert {"watchdog", "sqlite-utils"} <= daemon


def _lowest_allowed(specifier: SpecifierSet) -> Version:
    lows = [Version(s.version) for s in specifier if s.operator in (">=", "==", "~=")]
    assert lows, f"{specifier} has no lower bound"
    return max(lows)


def _grpc_generated() -> Version:
    text = (STUBS / "lineage_pb2_grpc.py").read_text()
    found = re.search(r"^GRPC_GENERATED_VERSION = '([^']+)'", text, re.MULTILINE)
    assert found, "the gRPC stubs no longer record their generator's version"
    return Version(found.group(1))


def _protobuf_gencode() -> Version:
    text = (STUBS / "lineage_pb2.py").read_text()
    found = re.search(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*"
        r"(\d+),\s*(\d+),\s*(\d+),",
        text,
    )
    assert found, "the protobuf stubs no longer record their gencode version"
    return Version(".".join(found.groups()))


def test_grpcio_lower_bound_is_what_the_stubs_require() -> None:
    bounds = _bounds()
    generated = _grpc_generated()
    assert _lowest_allowed(bounds["grpcio"]) >= generated, (
        f"pyproject.toml allows grpcio {bounds['grpcio']}, but the stubs need >= {generated}"
    )


def test_protobuf_bounds_are_what_the_gencode_requires() -> None:
    specifier = _bounds()["protobuf"]
    gencode = _protobuf_gencode()
    assert _lowest_allowed(specifier) >= gencode
    # The gencode refuses a runtime of another major version.
    assert not specifier.contains(f"{gencode.major + 1}.0.0"), (
        f"pyproject.toml allows protobuf {specifier}: a new major release would refuse the stubs"
    )


@pytest.mark.parametrize("name", ["grpcio-health-checking", "grpcio-reflection"])
def test_grpc_companions_are_bounded(name: str) -> None:
    assert _lowest_allowed(_bounds()[name]).major >= 1


def test_watchdog_is_bounded_to_the_tested_releases() -> None:
    """The watcher relies on watchdog's reports of lost events and unwatched directories."""
    specifier = _bounds()["watchdog"]
    assert not specifier.contains("7.1.0")
    assert specifier.contains("7.1.1")
    assert not specifier.contains("8.0.0")


def test_installed_versions_satisfy_the_bounds() -> None:
    from importlib.metadata import version

    for name, specifier in _bounds().items():
        assert specifier.contains(version(name), prereleases=True), (
            f"installed {name} {version(name)} is outside {specifier}"
        )


def test_every_package_is_in_the_wheel() -> None:
    """pyproject.toml lists packages by hand (they live in three folders): each package of the
    source tree must be listed, or the wheel ships without it."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = setuptools["package-dir"]
    found = set()
    for top, folder in folders.items():
        for module in sorted((REPO / folder).rglob("*.py")):  # _boot has no __init__.py
            relative = module.parent.relative_to(REPO / folder)
            found.add(".".join([top, *relative.parts]))
    assert found == set(setuptools["packages"])
