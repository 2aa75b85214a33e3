"""The state directory is private: only the daemon's user reads the history it holds.

The daemon runs with umask 077, so whatever it creates is 0600/0700. A state directory that
existed before (made by hand, by an installer or by ``mkdir -p`` under umask 022) may let
group or others in: :func:`secure_state_dir` takes those bits away from the directory and
from every file of the store in it, with one warning per repaired file. A directory owned
by another user is refused: its owner could put anything in it (or read it back).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from lineage_core.errors import ConfigError

__all__ = ["PRIVATE_UMASK", "STATE_FILE_SUFFIXES", "secure_state_dir"]

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
# Files of the store, by suffix after the database name: WAL, shared memory, journal, markers.
STATE_FILE_SUFFIXES = ("", "-wal", "-shm", "-journal", "-clean", "-open")


def secure_state_dir(state_dir: Path, db_name: str, others: tuple[str, ...] = ()) -> list[str]:
    """Create ``state_dir`` 0700 or make an existing one private; returns what was repaired.

    ``others`` names more files in the directory to make private (lock, key). Raises
    ConfigError when the directory cannot be made or belongs to another user.
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = os.stat(state_dir)
    except OSError as exc:
        raise ConfigError(f"cannot create state directory {state_dir}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"state directory {state_dir} is not a directory")
    if st.st_uid != os.geteuid():
        raise ConfigError(
            f"state directory {state_dir} belongs to uid {st.st_uid}, not to the daemon's user "
            f"(uid {os.geteuid()}): refusing to keep the store where another user can change it"
        )
    repaired: list[str] = []
    _make_private(state_dir, st, repaired)
    names = [db_name + suffix for suffix in STATE_FILE_SUFFIXES] + list(others)
    for name in names:
        path = state_dir / name
        try:
            file_st = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError(f"cannot inspect {path}: {exc.strerror}") from None
        if stat.S_ISLNK(file_st.st_mode):
            raise ConfigError(f"{path} is a symbolic link; refusing to use it as store state")
        _make_private(path, file_st, repaired)
    return repaired


def _make_private(path: Path, st: os.stat_result, repaired: list[str]) -> None:
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return
    private = mode & 0o700
    try:
        os.chmod(path, private)
    except OSError as exc:
        raise ConfigError(
            f"{path} is readable by group or others (mode {mode:04o}) and cannot be made "
            f"private: {exc.strerror}"
        ) from None
    log.warning(
        "%s was open to group or others (mode %04o); made private (mode %04o)", path, mode, private
    )
    repaired.append(str(path))
