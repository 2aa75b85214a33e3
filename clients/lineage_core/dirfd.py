"""Opening what is under a root only through directory descriptors (the ``os.fwalk`` model).

A user who can write into a watched root can swap any directory for a symbolic link at any
moment. A path string that was checked (``is_dir(follow_symlinks=False)``) and then handed
to ``open``/``scandir`` is resolved again by the kernel, and ``O_NOFOLLOW`` guards only its
last component: a link swapped in for a directory on the way is followed, and a root daemon
would read ``/etc``. So nothing below a root is ever opened by its path:

- the root itself is opened with ``O_DIRECTORY|O_NOFOLLOW`` (roots are resolved when the
  configuration is read: its path holds no link);
- every directory below it is opened with ``openat`` relative to its parent's descriptor,
  one name at a time, with ``O_NOFOLLOW|O_DIRECTORY``: a link fails with ``ELOOP``, a file
  with ``ENOTDIR``, and the ``fstat`` of what was opened is the directory that is read;
- a file is opened relative to its directory's descriptor with ``O_NOFOLLOW|O_NONBLOCK``
  (the hasher then ``fstat``-s the descriptor and refuses anything but a regular file).

A swap that wins the race only makes that open fail: what was swapped in is never read.
``FolderDescriptors`` keeps a few directory descriptors open so a batch of files in the
same folders pays for each folder once.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict

__all__ = [
    "DIR_FLAGS",
    "FILE_FLAGS",
    "FolderDescriptors",
    "open_dir_at",
    "open_dir_beneath",
    "open_file_at",
    "open_root",
]

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

# A link where a directory was: ELOOP (O_NOFOLLOW); a file or other non-directory: ENOTDIR.
SWAPPED_ERRNOS = frozenset({errno.ELOOP, errno.ENOTDIR})


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name:
        raise OSError(errno.EINVAL, f"not a single path component: {name!r}")


def open_root(path: str) -> int:
    """A descriptor of the root directory ``path`` (no link followed at its last component)."""
    fd = os.open(path, DIR_FLAGS)
    if not stat.S_ISDIR(os.fstat(fd).st_mode):  # O_DIRECTORY promises it; checked anyway
        os.close(fd)
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
    return fd


def open_dir_at(dir_fd: int, name: str) -> int:
    """The directory ``name`` in ``dir_fd``; ``OSError`` (ELOOP, ENOTDIR) for anything else."""
    _check_name(name)
    fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    if not stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), name)
    return fd


def open_file_at(dir_fd: int, name: str) -> int:
    """The entry ``name`` in ``dir_fd`` opened for reading: never through a link, never
    blocking (a FIFO); the caller ``fstat``-s it to see what it is."""
    _check_name(name)
    return os.open(name, FILE_FLAGS, dir_fd=dir_fd)


def _relative_parts(root: str, path: str) -> list[str]:
    root = root.rstrip("/") or "/"
    if path == root:
        return []
    prefix = root if root.endswith("/") else root + "/"
    if not path.startswith(prefix):
        raise OSError(errno.EXDEV, f"{path} is not under the root {root}")
    parts = path[len(prefix) :].split("/")
    for part in parts:
        _check_name(part)
    return parts


def open_dir_beneath(root: str, path: str) -> int:
    """The directory ``path`` under ``root``, opened one component at a time from the root."""
    parts = _relative_parts(root, path)
    fd = open_root(root)
    try:
        for part in parts:
            child = open_dir_at(fd, part)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


class FolderDescriptors:
    """Open files under one root through cached descriptors of their folders.

    Each folder is reached from the root by ``open_dir_at``, starting at the deepest folder
    on its way that is already open. At most ``limit`` descriptors are kept (the oldest is
    closed first), so a deep or wide tree cannot exhaust the process's descriptors.
    """

    def __init__(self, root: str, *, limit: int = 64) -> None:
        self.root = root.rstrip("/") or "/"
        self.limit = max(2, limit)
        self._fds: OrderedDict[str, int] = OrderedDict()

    def folder(self, folder: str) -> int:
        """A descriptor of ``folder`` (owned by this cache: do not close it)."""
        fd = self._fds.get(folder)
        if fd is not None:
            self._fds.move_to_end(folder)
            return fd
        parts = _relative_parts(self.root, folder)
        # The deepest folder on the way that is open already (iterative: trees are deep).
        depth = len(parts)
        start_fd = -1
        while depth > 0:
            cached = self._fds.get(self._join(parts[:depth]))
            if cached is not None:
                start_fd = cached
                break
            depth -= 1
        if start_fd < 0:
            start_fd = self._fds.get(self.root, -1)
            if start_fd < 0:
                start_fd = self._keep(self.root, open_root(self.root))
        fd = start_fd
        for index in range(depth, len(parts)):
            fd = self._keep(self._join(parts[: index + 1]), open_dir_at(fd, parts[index]))
        return fd

    def open_file(self, path: str) -> int:
        """``path`` opened for reading through its folder's descriptor (see ``open_file_at``)."""
        folder, _, name = path.rpartition("/")
        return open_file_at(self.folder(folder or "/"), name)

    def _join(self, parts: list[str]) -> str:
        return self.root + "/" + "/".join(parts) if self.root != "/" else "/" + "/".join(parts)

    def _keep(self, folder: str, fd: int) -> int:
        self._fds[folder] = fd
        # Never evict the descriptor just opened: the caller is about to use it.
        while len(self._fds) > self.limit:
            oldest, old_fd = next(iter(self._fds.items()))
            if oldest == folder:
                break
            del self._fds[oldest]
            os.close(old_fd)
        return fd

    def close(self) -> None:
        """Close every descriptor held."""
        fds = list(self._fds.values())
        self._fds.clear()
        for fd in fds:
            os.close(fd)

    def __enter__(self) -> FolderDescriptors:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
