"""Automatic capture of what a run read, wrote and ran with (``lineage run -- CMD``).

- :func:`git_state` — commit, branch, remote, dirty flag, diff and untracked files.
- :func:`env_state` — interpreter, platform, installed distributions, allowlisted variables.
- :func:`capture_command` — run a command and trace its file accesses and source files
  (LD_PRELOAD interposer, else strace, else partial; the audit hook for Python sources).
- :func:`hash_external` — fill digest, size and mtime of a file the daemon must not open.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lineage_client.capture.digest import hash_external
    from lineage_client.capture.environment import DEFAULT_ALLOWLIST, env_state, looks_secret
    from lineage_client.capture.git import DEFAULT_DIFF_CAP, git_state, strip_credentials
    from lineage_client.capture.result import CapturedRun
    from lineage_client.capture.runner import (
        METHOD_AUDIT_HOOK,
        METHOD_INTERPOSER,
        METHOD_NONE,
        METHOD_STRACE,
        MODES,
        capture_command,
        python_interpreter,
    )
    from lineage_client.capture.strace import STRACE_MISSING_WARNING

# (a) `lineage run` start-up: each public name and the module that defines it, imported on
# first use: `lineage run`
# needs only the runner before it starts the command (hashing, git and the environment
# fingerprint import blake3 and importlib.metadata while the command runs).
_HOMES = {
    "hash_external": "digest",
    "DEFAULT_ALLOWLIST": "environment",
    "env_state": "environment",
    "looks_secret": "environment",
    "DEFAULT_DIFF_CAP": "git",
    "git_state": "git",
    "strip_credentials": "git",
    "METHOD_AUDIT_HOOK": "runner",
    "METHOD_INTERPOSER": "runner",
    "METHOD_NONE": "runner",
    "METHOD_STRACE": "runner",
    "MODES": "runner",
    "CapturedRun": "result",
    "capture_command": "runner",
    "python_interpreter": "runner",
    "STRACE_MISSING_WARNING": "strace",
}

__all__ = [
    "DEFAULT_ALLOWLIST",
    "DEFAULT_DIFF_CAP",
    "METHOD_AUDIT_HOOK",
    "METHOD_INTERPOSER",
    "METHOD_NONE",
    "METHOD_STRACE",
    "MODES",
    "STRACE_MISSING_WARNING",
    "CapturedRun",
    "capture_command",
    "env_state",
    "git_state",
    "hash_external",
    "looks_secret",
    "python_interpreter",
    "strip_credentials",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
