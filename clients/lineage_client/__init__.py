"""Python client and CLI for lineaged: ``from lineage_client import Client``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lineage_client.client import (
        Client,
        EventStream,
        Page,
        RunRecorder,
        digest_file,
        parse_time,
    )

__all__ = ["Client", "EventStream", "Page", "RunRecorder", "digest_file", "parse_time"]


def __getattr__(name: str) -> Any:
    # The client imports grpc (a quarter of a second): `lineage run` starts its command
    # first and imports it while the command runs, so nothing here imports it eagerly.
    if name in __all__:
        from lineage_client import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
