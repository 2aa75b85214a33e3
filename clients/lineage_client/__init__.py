"""Python client and CLI for lineaged: ``from lineage_client import Client``.

Everything a caller of ``Client`` meets is importable from here: the client, the values its
methods take and return, and the errors they raise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lineage_core.errors import (
        AlreadyExists,
        AlreadyRunning,
        AmbiguousDigest,
        CaptureIncomplete,
        ConfigError,
        CorruptObject,
        CorruptStore,
        DaemonUnavailable,
        DamagedRow,
        DeadlineExceeded,
        FailedPrecondition,
        HashCancelled,
        HashError,
        InvalidArgument,
        LineageError,
        NotFound,
        PathOutsideRoots,
        PermissionDenied,
        ResourceExhausted,
        StoreError,
        TooLarge,
        Unauthenticated,
        UnstableFile,
    )
    from lineage_core.models import (
        Access,
        AccessHow,
        AccessMode,
        AccessRole,
        Capture,
        ChangeKind,
        CodeState,
        Counts,
        Direction,
        Edge,
        EdgeKind,
        EnvState,
        Event,
        EventKind,
        GcReport,
        Graph,
        Keep,
        PinReport,
        Role,
        Root,
        Run,
        RunFile,
        RunStart,
        RunStatus,
        ScanState,
        SourceFile,
        StartNode,
        Status,
        VerifyItem,
        VerifyState,
        Version,
    )

    from lineage_client.client import (
        Client,
        EventStream,
        Page,
        RunRecorder,
        digest_file,
        parse_time,
    )
    from lineage_client.reproduce import (
        Checkout,
        Missing,
        OutputComparison,
        Reproduction,
        Restored,
    )

_CLIENT = ("Client", "EventStream", "Page", "RunRecorder", "digest_file", "parse_time")
_REPRODUCE = ("Checkout", "Missing", "OutputComparison", "Reproduction", "Restored")
_ERRORS = (
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
)
_MODELS = (
    "Access",
    "AccessHow",
    "AccessMode",
    "AccessRole",
    "Capture",
    "ChangeKind",
    "CodeState",
    "Counts",
    "Direction",
    "Edge",
    "EdgeKind",
    "EnvState",
    "Event",
    "EventKind",
    "GcReport",
    "Graph",
    "Keep",
    "PinReport",
    "Role",
    "Root",
    "Run",
    "RunFile",
    "RunStart",
    "RunStatus",
    "ScanState",
    "SourceFile",
    "StartNode",
    "Status",
    "VerifyItem",
    "VerifyState",
    "Version",
)

__all__ = [
    "Access",
    "AccessHow",
    "AccessMode",
    "AccessRole",
    "AlreadyExists",
    "AlreadyRunning",
    "AmbiguousDigest",
    "Capture",
    "CaptureIncomplete",
    "ChangeKind",
    "Checkout",
    "Client",
    "CodeState",
    "ConfigError",
    "CorruptObject",
    "CorruptStore",
    "Counts",
    "DaemonUnavailable",
    "DamagedRow",
    "DeadlineExceeded",
    "Direction",
    "Edge",
    "EdgeKind",
    "EnvState",
    "Event",
    "EventKind",
    "EventStream",
    "FailedPrecondition",
    "GcReport",
    "Graph",
    "HashCancelled",
    "HashError",
    "InvalidArgument",
    "Keep",
    "LineageError",
    "Missing",
    "NotFound",
    "OutputComparison",
    "Page",
    "PathOutsideRoots",
    "PermissionDenied",
    "PinReport",
    "Reproduction",
    "ResourceExhausted",
    "Restored",
    "Role",
    "Root",
    "Run",
    "RunFile",
    "RunRecorder",
    "RunStart",
    "RunStatus",
    "ScanState",
    "SourceFile",
    "StartNode",
    "Status",
    "StoreError",
    "TooLarge",
    "Unauthenticated",
    "UnstableFile",
    "VerifyItem",
    "VerifyState",
    "Version",
    "digest_file",
    "parse_time",
]


def __getattr__(name: str) -> Any:
    # (a) `lineage run` start-up: the client imports grpc (a quarter of a second): `lineage run` starts its command
    # first and imports it while the command runs, so nothing here imports it eagerly
    # (tests/test_capture_start_first.py holds that budget).
    if name in _CLIENT:
        from lineage_client import client

        return getattr(client, name)
    if name in _REPRODUCE:
        from lineage_client import reproduce

        return getattr(reproduce, name)
    if name in _ERRORS:
        from lineage_core import errors

        return getattr(errors, name)
    if name in _MODELS:
        from lineage_core import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
