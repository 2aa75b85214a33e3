"""Describe the running interpreter: Python, platform, installed distributions.

Standalone (standard library only): imported by ``environment.py`` for the wrapper's own
interpreter, and its source is run with ``python -c`` in another interpreter, which prints
the same description as one JSON object.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable
from importlib import metadata

__all__ = ["describe", "installed"]


def _name_version(dist: metadata.Distribution) -> tuple[str | None, str | None]:
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


def installed(distributions: Iterable[metadata.Distribution] | None = None) -> list[str]:
    """``name==version`` of each distribution on sys.path, sorted case-insensitively."""
    seen: dict[str, str] = {}
    for dist in metadata.distributions() if distributions is None else distributions:
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
