"""lineage_core: what the lineaged daemon and its clients share.

The data model (``models``), the error classes and their gRPC status codes (``errors``), every
limit and default of the API (``limits``), default paths (``paths``), run ids (``runid``),
BLAKE3 hashing of files (``hasher``, through directory descriptors: ``dirfd``), secret
redaction (``redact``), the content store's object files (``objects``), the wire codecs
(``wire``), the request gate (``gate``) and the generated gRPC stubs (``_proto``).

It depends on blake3, grpcio and protobuf only: a client-only install (``pip install
lineaged``) needs nothing the daemon alone uses (watchdog, sqlite-utils).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
