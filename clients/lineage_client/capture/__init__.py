"""Automatic capture of what a run read, wrote and ran with (``lineage run -- CMD``).

- :func:`git_state` — commit, branch, remote, dirty flag, diff and untracked files.
- :func:`env_state` — interpreter, platform, installed distributions, allowlisted variables.
- :func:`capture_command` — run a command and trace its file accesses and source files
  (audit hook for Python, strace otherwise).
- :func:`hash_external` — fill digest, size and mtime of a file the daemon must not open.
"""

from __future__ import annotations

from lineage_client.capture.digest import hash_external
from lineage_client.capture.environment import DEFAULT_ALLOWLIST, env_state, looks_secret
from lineage_client.capture.git import DEFAULT_DIFF_CAP, git_state, strip_credentials
from lineage_client.capture.runner import (
    METHOD_AUDIT_HOOK,
    METHOD_NONE,
    METHOD_STRACE,
    MODES,
    CapturedRun,
    capture_command,
    python_interpreter,
)
from lineage_client.capture.strace import STRACE_MISSING_WARNING

__all__ = [
    "DEFAULT_ALLOWLIST",
    "DEFAULT_DIFF_CAP",
    "METHOD_AUDIT_HOOK",
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
