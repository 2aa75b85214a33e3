"""The content store: the bytes of kept versions, one file per BLAKE3 digest.

Every file read or written for keeping bytes goes through this module (the SQL that says what
is kept lives in the store). An object lives at ``<root>/ab/cdef...`` (the digest's first two
hex characters name the folder), so identical bytes are stored once whatever their paths.

Writes are atomic: the bytes go to a temporary file in the object's own folder, are hashed
*there* (the digest of exactly what was copied, whatever the source did meanwhile), synced,
and renamed to their name only when that digest is the one expected. A source that changed
before it could be copied is reported as not kept, never stored under a wrong name.

Copies are reflinks (``FICLONE``) where the file system shares extents (btrfs, XFS, bcachefs:
O(1) in the size), else an in-kernel copy (``copy_file_range``, then ``sendfile``).

Reads are verified: an object is hashed as it is read, and its last chunk is only handed out
once all of it hashed to its name; one that no longer does raises ``CorruptObject``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lineage_core import hasher
from lineage_core.errors import CorruptObject, NotFound

__all__ = [
    "CHUNK",
    "FICLONE",
    "ObjectStore",
    "PutResult",
    "copy_into",
    "copy_verified",
    "keep_bytes",
]

FICLONE = 0x40049409  # _IOW(0x94, 9, int) from <linux/fs.h>
CHUNK = 1 << 20  # bytes per chunk when an object is streamed
_PIECE = 32 << 20  # bytes per in-kernel copy step (hashed while the next one is copied)
_SOURCE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
# What a refused clone or in-kernel copy says: fall back to the next way, nothing is wrong.
_UNSUPPORTED = frozenset(
    (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EBADF)
)


_NO_REFLINK: set[tuple[int, int]] = set()


@dataclass(frozen=True, slots=True)
class PutResult:
    """What keeping one version's bytes did: kept (how) or not (why)."""

    digest: str
    kept: bool
    size: int = 0
    method: str = ""  # "reflink", "copy", or "present" (the object was there already)
    reason: str = ""  # why not kept


def copy_into(source_fd: int, target_fd: int) -> str:
    """Copy a whole file between two descriptors: a reflink if possible, else in the kernel.

    Returns the way it copied ("reflink" or "copy").
    """
    if _reflink(source_fd, target_fd):
        return "reflink"
    step = _copy_step(source_fd, target_fd)
    offset = 0
    while n := step(offset):
        offset += n
    return "copy"


def _reflink(source_fd: int, target_fd: int) -> bool:
    devices = (os.fstat(source_fd).st_dev, os.fstat(target_fd).st_dev)
    if devices in _NO_REFLINK:
        return False
    try:
        fcntl.ioctl(target_fd, FICLONE, source_fd)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            _NO_REFLINK.add(devices)  # this pair of file systems shares no extents
        return False
    return True


def _copy_step(source_fd: int, target_fd: int) -> Callable[[int], int]:
    """A function copying the next piece at an offset (``copy_file_range``, else
    ``sendfile``); it returns the piece's length, 0 at the end."""
    use_range = True

    def step(offset: int) -> int:
        nonlocal use_range
        if use_range:
            try:
                return os.copy_file_range(source_fd, target_fd, _PIECE, offset, offset)
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
                use_range = False
        os.lseek(target_fd, offset, os.SEEK_SET)
        return os.sendfile(target_fd, source_fd, offset, _PIECE)

    return step


def copy_verified(
    source_fd: int, target: Path, digest: str, *, sync: bool = True, mode: int | None = None
) -> PutResult:
    """Copy ``source_fd`` to ``target`` atomically, only when the copy hashes to ``digest``.

    A temporary file beside ``target`` receives the bytes; it is hashed, synced (``sync``),
    given ``mode`` (default 0600) and renamed over ``target`` when its digest is ``digest``,
    else removed.
    """
    folder = target.parent
    temporary = folder / f".tmp-{secrets.token_hex(8)}"
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            if _reflink(source_fd, fd):
                method = "reflink"
                copied, size = hasher.hash_own_file(fd)
            else:
                # The copy of each piece overlaps the hash of the one before it.
                method = "copy"
                copied, size = hasher.hash_while_copying(fd, _copy_step(source_fd, fd))
            if copied != digest:
                return PutResult(
                    digest, False, reason="the file changed before its bytes could be kept"
                )
            if mode is not None:
                os.fchmod(fd, mode)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, target)
        temporary = Path()
        if sync:
            _sync_folder(folder)
        return PutResult(digest, True, size, method)
    finally:
        if temporary != Path():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)


def keep_bytes(root: str, digest: str, data: memoryview | bytes) -> str:
    """Keep ``data``, which the caller hashed to ``digest`` (the hasher's own buffer), under
    the store at ``root``, unsynced: "present" when it was there, else "copy".

    The caller syncs the batch (:meth:`ObjectStore.flush`) before recording it as kept.
    """
    target = os.path.join(root, digest[:2], digest[2:])
    try:
        st = os.stat(target)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISREG(st.st_mode) and st.st_size == len(data):
            return "present"
    folder = os.path.dirname(target)
    temporary = os.path.join(folder, f".tmp-{secrets.token_hex(8)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(temporary, flags, 0o600)
    except FileNotFoundError:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd = os.open(temporary, flags, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.rename(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return "copy"


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ObjectStore:
    """Kept bytes under one folder, named by digest; written atomically, verified on read."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_of(self, digest: str) -> Path:
        """Where the object of ``digest`` lives (whether or not it is there)."""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a digest: {digest[:80]!r}")
        return self.root / digest[:2] / digest[2:]

    def present(self, digest: str, size: int) -> bool:
        """Whether an object of this digest and size is there (its bytes are checked on read)."""
        try:
            st = os.stat(self.path_of(digest))
        except FileNotFoundError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size == size

    def put(self, path: str, digest: str, *, sync: bool = True) -> PutResult:
        """Keep the bytes ``path`` holds if they hash to ``digest``; once per digest.

        ``sync=False`` leaves durability to one :meth:`flush` for a batch: an object that
        is not durable yet is not recorded as kept before that flush.
        """
        try:
            fd = os.open(path, _SOURCE_FLAGS)
        except FileNotFoundError:
            return PutResult(
                digest, False, reason="the file was gone before its bytes could be kept"
            )
        except OSError as exc:
            return PutResult(
                digest, False, reason=f"cannot open it to keep its bytes: {exc.strerror}"
            )
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return PutResult(digest, False, reason="not a regular file")
            if self.present(digest, st.st_size):
                return PutResult(digest, True, st.st_size, "present")
            target = self.path_of(digest)
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                return copy_verified(fd, target, digest, sync=sync)
            except OSError as exc:
                return PutResult(digest, False, reason=f"cannot keep its bytes: {exc}")
        finally:
            os.close(fd)

    def flush(self) -> None:
        """Make every object written with ``sync=False`` durable (``syncfs`` on the store)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.syncfs(fd) != 0:
                os.sync()
        except (OSError, AttributeError):
            os.sync()
        finally:
            os.close(fd)

    def chunks(self, digest: str, chunk: int = CHUNK) -> Iterator[bytes]:
        """The object's bytes in chunks, hashed as they are read: the last chunk is only
        given once the whole object hashed to ``digest`` (else ``CorruptObject``), so a
        consumer never completes a wrong copy."""
        try:
            fd = os.open(self.path_of(digest), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise NotFound(f"the bytes of {digest} are not kept") from None
        try:
            found = hasher.StreamDigest()
            offset = 0
            held = b""
            while data := os.pread(fd, chunk, offset):
                found.update(data)
                offset += len(data)
                if held:
                    yield held
                held = data
            if found.hexdigest() != digest:
                raise CorruptObject(
                    f"the kept object {self.path_of(digest)} no longer holds the bytes of "
                    f"{digest} (they hash to {found.hexdigest()}); refusing to hand it out"
                )
            if held:
                yield held
        finally:
            os.close(fd)

    def remove(self, digest: str) -> int:
        """Delete an object; the bytes it took (0 when it was not there)."""
        target = self.path_of(digest)
        try:
            size = os.stat(target).st_size
            os.unlink(target)
        except FileNotFoundError:
            return 0
        return size

    def disk_usage(self) -> tuple[int, int]:
        """(objects, bytes) found on disk under the store (a walk; for tests and tools)."""
        count = total = 0
        if not self.root.is_dir():
            return 0, 0
        for folder in os.scandir(self.root):
            if not folder.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(folder.path):
                if entry.is_file(follow_symlinks=False) and not entry.name.startswith(".tmp-"):
                    count += 1
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
        return count, total
