"""Run ids: time-ordered, unique, made by the daemon or chosen by a client.

Kept apart from ``lineage_core.models`` (whose dataclasses take tens of milliseconds to build at
import) so ``lineage run`` can make its run's id before it starts the command.
"""

from __future__ import annotations

import os
import time

__all__ = ["is_new_run_id", "new_run_id", "run_id_time_ns"]

_HEX_DIGITS = frozenset("0123456789abcdef")


def new_run_id() -> str:
    """A time-ordered, unique run id (48-bit ms timestamp + 80 random bits, as 32 hex)."""
    millis = time.time_ns() // 1_000_000
    return f"{millis:012x}{os.urandom(10).hex()}"


def is_new_run_id(text: str) -> bool:
    """Whether ``text`` has the form ``new_run_id`` makes: 32 lowercase hex characters."""
    return len(text) == 32 and _HEX_DIGITS.issuperset(text)


def run_id_time_ns(run_id: str) -> int | None:
    """When ``new_run_id`` made ``run_id`` (millisecond precision); None for another form."""
    return int(run_id[:12], 16) * 1_000_000 if is_new_run_id(run_id) else None
