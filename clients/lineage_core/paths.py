"""Where state and the socket live by default (docs/design.md "Running"), for daemon and clients."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "SYSTEM_SOCKET",
    "candidate_socket_paths",
    "candidate_sockets",
    "default_socket",
    "default_state_dir",
    "is_normal_path",
]

SOCKET_NAME = "lineaged.sock"
SYSTEM_SOCKET = "/run/lineaged/lineaged.sock"


def is_normal_path(value: str) -> bool:
    """Whether an absolute ``value`` equals its ``posixpath.normpath`` (and has no "//" start).

    The same answer as comparing with ``normpath``, by substring tests (no component list is
    built: checked once per access, for runs that report thousands): no empty, "." or ".."
    component and no trailing "/".
    """
    if value == "/":
        return True
    return not (
        "//" in value or "/./" in value or "/../" in value or value.endswith(("/", "/.", "/.."))
    )


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$STATE_DIRECTORY`` (systemd), else ``$XDG_STATE_HOME/lineaged``, else ``~/.local/state/lineaged``."""
    env = os.environ if environ is None else environ
    if env.get("STATE_DIRECTORY"):
        # systemd may pass several colon-separated directories; the first is ours.
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "lineaged"
    return Path(env.get("HOME") or Path.home()) / ".local" / "state" / "lineaged"


def default_socket(environ: Mapping[str, str] | None = None, *, uid: int | None = None) -> Path:
    """The socket path a daemon binds when not told: see docs/design.md for the order."""
    return candidate_sockets(environ, uid=uid)[0]


def candidate_sockets(
    environ: Mapping[str, str] | None = None, *, uid: int | None = None
) -> list[Path]:
    """Socket paths in the order clients try them; the daemon binds the first."""
    return list(dict.fromkeys(Path(path) for path in candidate_socket_paths(environ, uid=uid)))


def candidate_socket_paths(
    environ: Mapping[str, str] | None = None, *, uid: int | None = None
) -> list[str]:
    """:func:`candidate_sockets` as strings."""
    env = os.environ if environ is None else environ
    uid = os.getuid() if uid is None else uid
    found: list[str] = []
    if env.get("LINEAGE_SOCKET"):
        found.append(env["LINEAGE_SOCKET"])
    if env.get("RUNTIME_DIRECTORY"):
        found.append(os.path.join(env["RUNTIME_DIRECTORY"].split(":")[0], SOCKET_NAME))
    if env.get("XDG_RUNTIME_DIR"):
        found.append(os.path.join(env["XDG_RUNTIME_DIR"], "lineaged", SOCKET_NAME))
    found.append(SYSTEM_SOCKET if uid == 0 else f"/tmp/lineaged-{uid}/{SOCKET_NAME}")
    if SYSTEM_SOCKET not in found:
        found.append(SYSTEM_SOCKET)  # the system service, tried last by clients
    return found
