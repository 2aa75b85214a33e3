"""The SQLite store: every SQL statement of lineaged lives in this package.

One writer thread owns the write connection (``Writer``); every other thread reads through its
own connection (WAL lets them run beside the writer). Where each thing is:

- ``store``: ``Store``, the connections and transactions; its methods hand each query to
- ``versions``: roots, artifacts, versions and the stat cache;
- ``runs``: runs, their accesses and edges, reproductions;
- ``content``: what the content store holds, pins; ``outbox``: the OpenLineage outbox;
- ``walk``: the lineage graph walk (one recursive query);
- ``rows``: the row codec (named rows, JSON columns, the version checksum);
- ``names``: digests and file names as the store keeps them (requests were checked at the
  edge: the store trusts its arguments);
- ``connection``: opening, pragmas, integrity checks, the clean-stop marker, the WAL checks;
- ``migrations``: the schema and ``MIGRATIONS``;
- ``writer``: the writer thread and the checkpointer beside it.
"""

from __future__ import annotations

from lineaged.store.connection import CACHE_KIB, DB_NAME, TransactionLost
from lineaged.store.migrations import (
    APP_ID,
    MIGRATIONS,
    SCHEMA_VERSION,
    _migration_capture_completeness,
    _migration_openlineage,
    _migration_redact_secrets,
)
from lineaged.store.names import digest_to_blob
from lineaged.store.outbox import OutboxEntry
from lineaged.store.rows import pack_stat, pack_stat_key, version_checksum
from lineaged.store.store import Store
from lineaged.store.versions import CacheEntry, VersionWrite
from lineaged.store.writer import Writer

__all__ = [
    "APP_ID",
    "CACHE_KIB",
    "DB_NAME",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "CacheEntry",
    "OutboxEntry",
    "Store",
    "TransactionLost",
    "VersionWrite",
    "Writer",
    "_migration_capture_completeness",
    "_migration_openlineage",
    "_migration_redact_secrets",
    "digest_to_blob",
    "pack_stat",
    "pack_stat_key",
    "version_checksum",
]
