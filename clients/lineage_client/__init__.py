"""Python client and CLI for lineaged: ``from lineage_client import Client``."""

from __future__ import annotations

from lineage_client.client import Client, EventStream, Page, RunRecorder, digest_file, parse_time

__all__ = ["Client", "EventStream", "Page", "RunRecorder", "digest_file", "parse_time"]
