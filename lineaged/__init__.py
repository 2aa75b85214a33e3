"""lineaged: the daemon that watches data and model folders, hashes every content state with
BLAKE3, records lineage in SQLite and answers gRPC queries. What it shares with its clients
lives in ``lineage_core``."""

from __future__ import annotations

from lineage_core import __version__

__all__ = ["__version__"]
