"""The files the pages load, shipped in the package: read once, addressed by their digest.

Pages link ``/static/app.js?v=<digest prefix>``, so a browser may keep an asset as long as it
likes (a new bundle has a new address) and a page load fetches nothing it already has.
"""

from __future__ import annotations

import functools
from importlib import resources

import blake3

__all__ = ["TYPES", "asset", "asset_url"]

TYPES = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "THIRD-PARTY-LICENSES.txt": "text/plain; charset=utf-8",
}


@functools.cache
def asset(name: str) -> bytes:
    """The bytes of one static file (``name`` must be a key of ``TYPES``)."""
    if name not in TYPES:
        raise KeyError(name)
    return resources.files("lineage_client.ui").joinpath("static", name).read_bytes()


@functools.cache
def asset_url(name: str) -> str:
    """The address of a static file, with a version taken from its content."""
    return f"/static/{name}?v={blake3.blake3(asset(name)).hexdigest()[:16]}"
