"""The one exception tree of lineaged, shared by the daemon, the client and the CLI.

Each class names the gRPC status code the service answers with and the exit code the
``lineage`` CLI ends with. Servicers raise these; one interceptor maps them to status
codes; the client maps status codes back to the same classes.

    LineageError                      INTERNAL             exit 1
    ├── InvalidArgument               INVALID_ARGUMENT     exit 2
    │   ├── AmbiguousDigest           INVALID_ARGUMENT     exit 2
    │   ├── PathOutsideRoots          INVALID_ARGUMENT     exit 2
    │   └── ConfigError               INVALID_ARGUMENT     exit 2
    ├── NotFound                      NOT_FOUND            exit 3
    ├── AlreadyExists                 ALREADY_EXISTS       exit 1
    ├── DaemonUnavailable             UNAVAILABLE          exit 4
    ├── Unauthenticated               UNAUTHENTICATED      exit 5
    ├── PermissionDenied              PERMISSION_DENIED    exit 5
    ├── FailedPrecondition            FAILED_PRECONDITION  exit 1
    │   ├── AlreadyRunning            FAILED_PRECONDITION  exit 1
    │   └── CaptureIncomplete         FAILED_PRECONDITION  exit 2
    ├── ResourceExhausted             RESOURCE_EXHAUSTED   exit 1
    ├── DeadlineExceeded              DEADLINE_EXCEEDED    exit 1
    ├── StoreError                    INTERNAL             exit 1
    │   ├── CorruptStore              INTERNAL             exit 1
    │   │   └── DamagedRow            DATA_LOSS            exit 1
    │   └── CorruptObject             DATA_LOSS            exit 1
    └── HashError                     INTERNAL             exit 1
        ├── UnstableFile              INTERNAL             exit 1
        ├── TooLarge                  INTERNAL             exit 1
        └── HashCancelled             INTERNAL             exit 1
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # typing costs `lineage run` milliseconds before its command starts
    from typing import ClassVar

__all__ = [
    "ERROR_CLASSES",
    "AlreadyExists",
    "AlreadyRunning",
    "AmbiguousDigest",
    "CaptureIncomplete",
    "ConfigError",
    "CorruptObject",
    "CorruptStore",
    "DaemonUnavailable",
    "DamagedRow",
    "DeadlineExceeded",
    "FailedPrecondition",
    "HashCancelled",
    "HashError",
    "InvalidArgument",
    "LineageError",
    "NotFound",
    "PathOutsideRoots",
    "PermissionDenied",
    "ResourceExhausted",
    "StoreError",
    "TooLarge",
    "Unauthenticated",
    "UnstableFile",
    "error_for_status",
]


class LineageError(Exception):
    """Base of every error lineaged raises on purpose."""

    grpc_status: ClassVar[str] = "INTERNAL"
    exit_code: ClassVar[int] = 1

    @property
    def message(self) -> str:
        """The human message, without the class name."""
        return str(self.args[0]) if self.args else self.__class__.__name__


class InvalidArgument(LineageError):
    """The request or the command line is malformed or out of range."""

    grpc_status = "INVALID_ARGUMENT"
    exit_code = 2


class AmbiguousDigest(InvalidArgument):
    """A digest prefix matches more than one digest; the message lists candidates."""


class PathOutsideRoots(InvalidArgument):
    """A path is not under any watched root, so the daemon will not open it."""


class ConfigError(InvalidArgument):
    """The daemon's configuration (flags or TOML) is invalid."""


class NotFound(LineageError):
    """A path, digest, version or run that the store has never seen."""

    grpc_status = "NOT_FOUND"
    exit_code = 3


class AlreadyExists(LineageError):
    """Something the request would create exists already (a run id chosen by the client)."""

    grpc_status = "ALREADY_EXISTS"
    exit_code = 1


class DaemonUnavailable(LineageError):
    """The daemon cannot be reached (not running, wrong socket)."""

    grpc_status = "UNAVAILABLE"
    exit_code = 4


class Unauthenticated(LineageError):
    """A TCP call without the right bearer token."""

    grpc_status = "UNAUTHENTICATED"
    exit_code = 5


class PermissionDenied(LineageError):
    """The caller may not do this (socket permissions, refused path)."""

    grpc_status = "PERMISSION_DENIED"
    exit_code = 5


class FailedPrecondition(LineageError):
    """The system is not in a state that allows the request (run already ended, ...)."""

    grpc_status = "FAILED_PRECONDITION"
    exit_code = 1


class AlreadyRunning(FailedPrecondition):
    """Another daemon holds the state directory's lock."""


class CaptureIncomplete(FailedPrecondition):
    """``lineage run --require-complete``: the command's capture would be partial."""

    exit_code = 2


class ResourceExhausted(LineageError):
    """A request too large, or too many concurrent calls."""

    grpc_status = "RESOURCE_EXHAUSTED"
    exit_code = 1


class DeadlineExceeded(LineageError):
    """The call's deadline passed before it finished."""

    grpc_status = "DEADLINE_EXCEEDED"
    exit_code = 1


class StoreError(LineageError):
    """SQLite failed underneath the store."""


class CorruptStore(StoreError):
    """The database file is corrupt or is not a lineaged store; it is left untouched."""


class DamagedRow(CorruptStore):
    """A stored row fails its checksum: it is not served (never a wrong digest)."""

    grpc_status = "DATA_LOSS"


class CorruptObject(StoreError):
    """A kept object's bytes no longer hash to its digest: it is never handed out."""

    grpc_status = "DATA_LOSS"


class HashError(LineageError):
    """A file could not be hashed."""


class UnstableFile(HashError):
    """A file kept changing while it was hashed, beyond the retry bound."""


class TooLarge(HashError):
    """A file is bigger than its root's ``max_hash_size``: not hashed (said so in status)."""


class HashCancelled(HashError):
    """Hashing was stopped because the daemon is stopping."""


def _tree() -> list[type[LineageError]]:
    """Every class of the tree, breadth first: a class comes before its subclasses."""
    found: list[type[LineageError]] = [LineageError]
    for cls in found:  # grows as it goes
        found.extend(sorted(cls.__subclasses__(), key=lambda sub: sub.__name__))
    return found


ERROR_CLASSES: dict[str, type[LineageError]] = {cls.__name__: cls for cls in _tree()}
"""Each class of the tree by its name: what the daemon sends in the error-class metadata."""

_BY_STATUS: dict[str, type[LineageError]] = {}
for _cls in _tree():  # the most general class answering with each status code
    _BY_STATUS.setdefault(_cls.grpc_status, _cls)


def error_for_status(status_name: str, message: str, class_name: str = "") -> LineageError:
    """The exception the daemon raised: its class by ``class_name`` when that names one of
    the tree, else the most general class of the gRPC status code ``status_name``."""
    cls = ERROR_CLASSES.get(class_name) or _BY_STATUS.get(status_name, LineageError)
    return cls(message)
