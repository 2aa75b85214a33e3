"""What is never a run's input: files that belong to the environment or to the tools, not
to the run's data and code (docs/capture-reliability.md, "What counts as an input").

- the interpreter, its standard library and every site-packages folder (the environment
  fingerprint describes them);
- lineage's own files (``lineaged`` and ``lineage_client``): a nested ``lineage run`` or the
  capture hook loads them in the traced processes;
- version-control internals (``.git/``, ``.hg/``, ``.svn/``): the run's code state records
  the commit, branch, dirty flag and diff;
- the user's configuration: dotfiles directly in ``$HOME`` (``~/.gitconfig``, ``~/.netrc``)
  and the configuration folders ``CONFIG_DIRS`` (``~/.config``, ``~/.ssh``, ...). Caches are
  not configuration: a model loaded from ``~/.cache/huggingface`` is an input.
"""

from __future__ import annotations

import functools
import os
import site
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from contextlib import suppress
from importlib.util import find_spec

import lineage_core

import lineage_client
from lineage_client.capture.native import cache_dir

__all__ = ["CONFIG_DIRS", "VCS_DIRS", "environment_dirs", "is_noise", "noise_filter"]

VCS_DIRS = (".git", ".hg", ".svn")
CONFIG_DIRS = (".config", ".ssh", ".gnupg", ".pki", ".ipython", ".jupyter")
_VCS_PARTS = tuple(f"/{name}/" for name in VCS_DIRS)


@functools.cache
def environment_dirs() -> tuple[str, ...]:
    """Folders of this interpreter and of lineage itself, resolved, shortest first."""
    # The daemon's package too when it is installed, found without importing it: the client
    # never loads the daemon (tests/test_client_surface.py).
    daemon = find_spec("lineaged")
    dirs = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    dirs += site.getsitepackages()
    with suppress(Exception):
        dirs.append(site.getusersitepackages())
    paths = sysconfig.get_paths()
    dirs += [paths[n] for n in ("stdlib", "platstdlib", "purelib", "platlib") if n in paths]
    for package in (lineage_core, lineage_client):
        dirs += list(getattr(package, "__path__", []))
    if daemon is not None:
        dirs += list(daemon.submodule_search_locations or [])
    found = {os.path.realpath(d) for d in dirs if d}
    found |= {os.path.normpath(d) for d in dirs if d}
    found.discard("/")
    return tuple(sorted(found, key=len))


def _home() -> str:
    home = os.environ.get("HOME") or os.path.expanduser("~")
    return os.path.realpath(home) if home and home != "/" else ""


def is_noise(path: str, *, home: str | None = None, extra: Sequence[str] = ()) -> bool:
    """Whether ``path`` (absolute, canonical) is environment, tooling or configuration."""
    return noise_filter(home=home, extra=extra)(path)


def noise_filter(*, home: str | None = None, extra: Sequence[str] = ()) -> _Filter:
    """A predicate for many paths: :func:`is_noise` with its prefixes worked out once."""
    # lineage's own cache (the interposer it built, strace's hand-over notes) is the tool's.
    return _Filter(_home() if home is None else home, [*environment_dirs(), cache_dir(), *extra])


class _Filter:
    __slots__ = ("_home", "_prefixes")

    def __init__(self, home: str, dirs: Iterable[str]) -> None:
        self._home = home.rstrip("/") + "/" if home else ""
        config = [self._home + name for name in CONFIG_DIRS] if home else []
        self._prefixes = tuple(d.rstrip("/") + "/" for d in [*dirs, *config] if d and d != "/")

    def __call__(self, path: str) -> bool:
        if path.startswith(self._prefixes):
            return True
        if any(part in path for part in _VCS_PARTS):
            return True
        home = self._home
        # ~/.gitconfig, ~/.netrc: the user's settings, not the run's data.
        return (
            bool(home)
            and path.startswith(home)
            and path[len(home) : len(home) + 1] == "."
            and "/" not in path[len(home) :]
        )
