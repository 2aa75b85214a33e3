"""``lineage ui``: a local, read-only web view of lineage over the Python client (docs/ui.md)."""

from __future__ import annotations

from lineage_client.ui.server import DEFAULT_PORT, UiServer, is_loopback, serve

__all__ = ["DEFAULT_PORT", "UiServer", "is_loopback", "serve"]
