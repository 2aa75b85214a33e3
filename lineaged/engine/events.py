"""The event bus: what the daemon committed, handed to the ``Subscribe`` streams.

Publishing is explicit. The indexer and the scanner hand ``publish_versions`` the versions
each of their writes recorded, once the writer has committed them (``watching.indexer``'s
``publish_when_committed``); run recording calls ``publish_run`` with a run it began or
ended. Nothing is published for a write that did not commit.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Sequence

from lineage_core.errors import ResourceExhausted
from lineage_core.models import Event, EventKind, Run, Version

__all__ = ["MAX_SUBSCRIBERS", "SUBSCRIBER_BUFFER", "EventBus", "Subscription"]

MAX_SUBSCRIBERS = 8  # each Subscribe stream holds a worker thread (16 by default)
SUBSCRIBER_BUFFER = 10_000


class Subscription:
    """A subscriber's queue of events; read with ``get`` and ``close`` when done."""

    def __init__(self, bus: EventBus, path_prefix: str) -> None:
        self._bus = bus
        self.path_prefix = path_prefix
        self._queue: queue.Queue[Event] = queue.Queue(SUBSCRIBER_BUFFER)
        self._overflowed = False

    def offer(self, event: Event) -> None:
        """Queue an event without blocking the publisher; drop and remember when full."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._overflowed = True

    def get(self, timeout: float) -> Event | None:
        """The next event, or None when ``timeout`` seconds pass without one."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        """Stop receiving events."""
        self._bus.unsubscribe(self)

    @property
    def overflowed(self) -> bool:
        """True when events were dropped because the subscriber fell too far behind."""
        return self._overflowed

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """The subscribers, and the calls that publish new versions and run events to them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[Subscription] = []

    def subscribe(self, path_prefix: str) -> Subscription:
        """A new subscription to the events whose path starts with ``path_prefix``."""
        sub = Subscription(self, path_prefix)
        with self._lock:
            if len(self._subscribers) >= MAX_SUBSCRIBERS:
                raise ResourceExhausted(
                    f"too many subscribers ({MAX_SUBSCRIBERS}): each stream holds one of the "
                    "daemon's worker threads; close one first"
                )
            self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget ``sub`` (closing twice is harmless)."""
        with self._lock, contextlib.suppress(ValueError):
            self._subscribers.remove(sub)

    @property
    def listened(self) -> bool:
        """Whether anyone subscribes (read without the lock: a stale answer is harmless)."""
        return bool(self._subscribers)

    def publish_versions(self, versions: Sequence[Version]) -> None:
        """Publish committed new versions (called on the writer thread)."""
        # A first scan commits 100k versions, and wrapping each in an event nobody reads
        # cost a second of it.
        if not self.listened:
            return
        self.publish([Event(kind=EventKind.VERSION, version=version) for version in versions])

    def publish_run(self, run: Run) -> None:
        """Publish a run that began or ended."""
        self.publish([Event(kind=EventKind.RUN, run=run)])

    def publish(self, events: Sequence[Event]) -> None:
        """Offer each event to every subscriber whose prefix it matches."""
        with self._lock:
            subscribers = list(self._subscribers)
        for event in events:
            for sub in subscribers:
                if _matches(event, sub.path_prefix):
                    sub.offer(event)


def _matches(event: Event, prefix: str) -> bool:
    if not prefix:
        return True
    if event.version is not None:
        return event.version.path.startswith(prefix)
    if event.run is not None:
        return event.run.cwd.startswith(prefix)
    return False
