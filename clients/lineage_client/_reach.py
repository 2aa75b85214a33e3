"""Finding the daemon's socket, a cheap check that a daemon listens on it, and the variable
naming the run a command belongs to.

Kept free of grpc so ``lineage run`` can make sure a daemon is there before it starts the
command, and import the client (grpc) while the command runs.
"""

from __future__ import annotations

import errno
import os
import socket as socket_module
from typing import TYPE_CHECKING

from lineage_core.errors import DaemonUnavailable, PermissionDenied
from lineage_core.paths import candidate_socket_paths

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "PARENT_ENV",
    "START_HINT",
    "find_socket",
    "not_running",
    "permission_denied",
    "probe_socket",
]

# Set by `lineage run` for its command: the run that command belongs to, which runs begun
# inside it (a nested `lineage run`, `client.run()`) name as their parent.
PARENT_ENV = "LINEAGE_RUN_ID"

START_HINT = "start it with `lineaged` or `make run`"


def not_running(where: str) -> DaemonUnavailable:
    """The error for a socket nobody listens on."""
    return DaemonUnavailable(f"lineaged is not running at {where}; {START_HINT}")


def permission_denied(where: str) -> PermissionDenied:
    """The error for a socket of another user."""
    return PermissionDenied(
        f"permission denied on {where}: the socket belongs to another user"
        " (ask to be added to its group)"
    )


def find_socket(socket: str | os.PathLike[str] | None = None) -> str:
    """The absolute socket path: ``socket`` (``unix:`` prefix allowed) or the first that exists.

    Looks where the daemon binds by default (see ``Client``); DaemonUnavailable when no
    candidate exists.
    """
    if socket is not None:
        return os.path.abspath(os.fspath(socket).removeprefix("unix:"))
    candidates = candidate_socket_paths()
    for path in candidates:
        if os.path.exists(path):
            return os.path.abspath(path)
    looked = ", ".join(str(path) for path in candidates)
    raise DaemonUnavailable(f"lineaged is not running (no socket at {looked}); {START_HINT}")


def probe_socket(path: str | Path) -> None:
    """Connect to the Unix socket and hang up: raise what a client call would if nobody listens.

    DaemonUnavailable when nothing accepts there, PermissionDenied when the socket (or its
    directory) is another user's; a socket that accepts passes (a daemon that then fails to
    answer shows up on the first call).
    """
    where = os.fspath(path)
    probe = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
    try:
        probe.settimeout(5.0)
        probe.connect(where)
    except PermissionError:
        raise permission_denied(where) from None
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise permission_denied(where) from None
        raise not_running(where) from None
    finally:
        probe.close()
