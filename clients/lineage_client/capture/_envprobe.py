"""Describe the running interpreter: Python, platform, installed distributions.

Standalone (standard library only): imported by ``environment.py`` for the wrapper's own
interpreter, and its source is run with ``python -c`` in another interpreter, which prints
the same description as one JSON object.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from collections.abc import Iterable, Sequence
from importlib.machinery import PathFinder
from typing import Protocol

__all__ = ["describe", "installed", "scanned"]


class _Readable(Protocol):
    """What is read of a distribution (``importlib.metadata.Distribution`` or a ``_Folder``)."""

    def read_text(self, filename: str) -> str | None: ...


class _Folder:
    """A metadata folder on sys.path, read as ``PathDistribution.read_text`` reads it."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def read_text(self, filename: str) -> str | None:
        try:
            with open(os.path.join(self.path, filename), encoding="utf-8") as stream:
                return stream.read()
        # Missing or unreadable: None, as importlib.metadata says. Undecodable: skipped too,
        # where importlib.metadata would raise.
        except (OSError, UnicodeDecodeError):
            return None


def scanned(path: Sequence[str]) -> list[_Folder] | None:
    """The ``*.dist-info``/``*.egg-info`` entries ``importlib.metadata.distributions()`` finds
    on ``path``, in its order, without importing it (its email and zipfile imports cost the
    wrapper 40-60 ms); None when ``path`` holds what only importlib.metadata reads (a zip or
    egg file) or an import hook lists distributions of its own."""
    for finder in sys.meta_path:
        if getattr(finder, "find_distributions", None) is not None and finder is not PathFinder:
            return None
    found: list[_Folder] = []
    for entry in path:
        folder = entry or "."
        if folder.lower().endswith(".egg"):
            return None  # an egg folder's EGG-INFO
        try:
            names = os.listdir(folder)
        except NotADirectoryError:
            return None  # a zip on sys.path
        except OSError:
            continue  # missing or unreadable: importlib.metadata finds nothing there either
        # Grouped as importlib.metadata's Lookup groups them: by the normalised name before
        # the first "-", groups in order of first appearance.
        groups: dict[str, list[_Folder]] = {}
        for name in names:
            low = name.lower()
            if low.endswith((".dist-info", ".egg-info")):
                key = re.sub(r"[-_.]+", "-", low.rpartition(".")[0].partition("-")[0])
                key = key.replace("-", "_")
                groups.setdefault(key, []).append(_Folder(os.path.join(folder, name)))
        for group in groups.values():
            found += group
    return found


def _name_version(dist: _Readable) -> tuple[str | None, str | None]:
    # The headers before the first blank line say what ``dist.metadata["Name"]`` and
    # ``dist.version`` say, without parsing the whole file (long description included)
    # through the email parser twice per distribution.
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    name = version = None
    for line in text.splitlines():
        if not line.strip():
            break
        key, sep, value = line.partition(":")
        if not sep or key[:1].isspace():
            continue
        key = key.strip().lower()
        if key == "name" and name is None:
            name = value.strip()
        elif key == "version" and version is None:
            version = value.strip()
    return name, version


def installed(distributions: Iterable[_Readable] | None = None) -> list[str]:
    """``name==version`` of each distribution on sys.path, sorted case-insensitively."""
    if distributions is None:
        distributions = scanned(sys.path)
    if distributions is None:
        # Only for a zip or egg on sys.path: importlib.metadata (email, zipfile) costs ~18 ms
        # of every `lineage run` and of every `python -c` probe of another interpreter.
        from importlib import metadata

        distributions = metadata.distributions()
    seen: dict[str, str] = {}
    for dist in distributions:
        name, version = _name_version(dist)
        # The first one on sys.path wins, as it does for imports.
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={version}"
    return sorted(seen.values(), key=str.lower)


def describe() -> dict[str, object]:
    """The running interpreter's description, as ``env_state`` records it."""
    return {
        "python_version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": installed(),
    }


if __name__ == "__main__":
    print(json.dumps(describe()))
