"""Delivering OpenLineage events: where they go (settings), and the thread that sends them.

Recording never waits for a lineage server. Beginning or ending a run queues its event in the
store's outbox in the same transaction (``Store.openlineage_outbox``); this module's thread
reads the outbox in order, builds each event (``ol_events``), hands it to openlineage-python's
client (its transports: HTTP, file, console, Kafka, composite, ...) and marks it delivered
once the transport returned. A failure keeps the event at the head of the queue and retries
it with exponential backoff, so events go out in the order they were queued: a run's START
before its end, and a parent's START before its child's.

Exactly once, as far as the sender can tell: an event is marked delivered only after the
transport accepted it, and the thread stops between two events (finishing the marks) when the
daemon stops, so a restart sends what was not sent and nothing twice. Only a daemon killed
between a transport's success and the mark can send one event again, and that event is the
same bytes (the same runId, eventType and eventTime), which OpenLineage consumers such as
Marquez store once.

Where events go is configured as openlineage-python is: ``OPENLINEAGE_URL`` (plus
``OPENLINEAGE_API_KEY``, ``OPENLINEAGE_ENDPOINT``), ``OPENLINEAGE__TRANSPORT__*`` variables,
``openlineage.yml`` (``OPENLINEAGE_CONFIG``, the daemon's working directory,
``~/.openlineage/``), or an ``[openlineage]`` section of lineaged's TOML config, whose
``transport`` table wins over those. ``OPENLINEAGE_DISABLED=true`` turns it off.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lineage_core.errors import ConfigError, FailedPrecondition

if TYPE_CHECKING:
    from lineaged.store import Store, Writer

__all__ = [
    "OpenLineageDelivery",
    "OpenLineageSettings",
    "export_events",
    "settings_from",
]

log = logging.getLogger(__name__)

BATCH = 100  # outbox entries read at once
MARK_EVERY = 20  # delivered entries marked in one writer transaction
IDLE_SECONDS = 1.0  # between looks at an empty outbox when nobody wakes the thread
# Sending is background work: it waits until runs have not been recorded for QUIET_SECONDS,
# or until the oldest waiting event is max_delay_seconds old (then it sends while runs are
# recorded). A do-nothing HTTP endpoint cost the daemon about 1 ms of CPU per event, which
# on two cores took recording down to 0.69x while a burst of runs was recorded.
QUIET_SECONDS = 0.2
BACKLOG_SECONDS = 1.0  # how stale the backlog in status may be
_SECTION_KEYS = {
    "enabled",
    "namespace",
    "backoff_seconds",
    "max_backoff_seconds",
    "max_delay_seconds",
    # openlineage-python's own configuration (as in openlineage.yml)
    "transport",
    "facets",
    "filters",
    "tags",
    "dataset",
}
_CLIENT_KEYS = ("transport", "facets", "filters", "tags", "dataset")
INSTALL_HINT = "install the extra: pip install 'lineaged[openlineage]'"


@dataclass(frozen=True, slots=True)
class OpenLineageSettings:
    """Where OpenLineage events go and how the daemon retries them."""

    source: str  # what turned it on, for the log: "[openlineage] in lineaged.toml", ...
    namespace: str = ""  # the jobs' namespace; "" = one per host (lineaged://HOST)
    client_config: Mapping[str, Any] = field(default_factory=dict)
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 300.0
    max_delay_seconds: float = 10.0  # how long sending may wait for recording to pause


def _number(section: Mapping[str, Any], key: str, default: float, *, zero: bool = False) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"[openlineage] {key} must be a positive number of seconds")
    if value == 0 and not zero:
        raise ConfigError(f"[openlineage] {key} must be a positive number of seconds")
    return float(value)


def settings_from(
    section: Mapping[str, Any] | None, environ: Mapping[str, str]
) -> OpenLineageSettings | None:
    """The OpenLineage settings, or None when nothing asks for OpenLineage events."""
    if environ.get("OPENLINEAGE_DISABLED", "").strip().lower() == "true":
        return None
    namespace = environ.get("OPENLINEAGE_NAMESPACE", "")
    if section is not None:
        if not isinstance(section, Mapping):
            raise ConfigError("[openlineage] must be a table")
        unknown = set(section) - _SECTION_KEYS
        if unknown:
            raise ConfigError(f"[openlineage]: unknown keys {', '.join(sorted(unknown))}")
        enabled = section.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError("[openlineage] enabled must be true or false")
        if not enabled:
            return None
        namespace = section.get("namespace", namespace)
        if not isinstance(namespace, str):
            raise ConfigError("[openlineage] namespace must be a string")
        transport = section.get("transport")
        if transport is not None and not (isinstance(transport, Mapping) and "type" in transport):
            raise ConfigError("[openlineage] transport must be a table with a type")
        backoff = _number(section, "backoff_seconds", 1.0)
        return OpenLineageSettings(
            source="[openlineage] in the configuration file",
            namespace=namespace,
            client_config={key: section[key] for key in _CLIENT_KEYS if key in section},
            backoff_seconds=backoff,
            max_backoff_seconds=max(backoff, _number(section, "max_backoff_seconds", 300.0)),
            max_delay_seconds=_number(section, "max_delay_seconds", 10.0, zero=True),
        )
    found = ""
    if environ.get("OPENLINEAGE_URL"):
        found = "OPENLINEAGE_URL"
    elif any(key.startswith("OPENLINEAGE__TRANSPORT") for key in environ):
        found = "OPENLINEAGE__TRANSPORT__* variables"
    elif environ.get("OPENLINEAGE_CONFIG"):
        found = f"OPENLINEAGE_CONFIG={environ['OPENLINEAGE_CONFIG']}"
    else:
        for candidate in (
            os.path.join(os.getcwd(), "openlineage.yml"),
            os.path.join(os.path.expanduser("~/.openlineage"), "openlineage.yml"),
        ):
            if os.path.isfile(candidate):
                found = candidate
                break
    if not found:
        return None
    return OpenLineageSettings(source=found, namespace=namespace)


def make_client(settings: OpenLineageSettings) -> Any:
    """openlineage-python's ``OpenLineageClient`` for these settings (ConfigError if it
    cannot be made: the extra is missing, or its configuration is wrong)."""
    try:
        # (c) optional: openlineage-python may not be installed.
        from openlineage.client import OpenLineageClient
    except ImportError:
        raise ConfigError(
            f"OpenLineage is configured ({settings.source}) but openlineage-python is not "
            f"installed; {INSTALL_HINT}"
        ) from None
    config = {key: value for key, value in settings.client_config.items()}
    # The client would add a sourceCodeLocation of the daemon's own working tree to events
    # of runs that have none: the code location comes from the run or not at all.
    facets = dict(config.get("facets", {}))
    facets["source_code_location"] = {
        **dict(facets.get("source_code_location", {})),
        "disabled": True,
    }
    config["facets"] = facets
    try:
        return OpenLineageClient(config=config)
    except ImportError as exc:  # a transport's own dependency, e.g. confluent-kafka for kafka
        raise ConfigError(
            f"OpenLineage configuration ({settings.source}): the transport needs a package "
            f"that is not installed ({exc}); e.g. pip install 'openlineage-python[kafka]'"
        ) from None
    except Exception as exc:  # its factories raise ValueError, TypeError, KeyError, ...
        raise ConfigError(f"OpenLineage configuration ({settings.source}): {exc}") from None


def _event_source(store: Store, namespace: str) -> Callable[[str, str], Any]:
    from lineaged import ol_events  # (c) optional: it imports openlineage-python

    return ol_events.event_source(store.get_run, store.run_datasets, namespace)


def export_events(
    store: Store, namespace: str, run_ids: Sequence[str], client: Any = None
) -> Iterator[str]:
    """Each run's events (START, then its end when it ended) as JSON, one string each: the
    events the daemon sends, with the configured client's tags and environment facets."""
    try:
        from lineaged import ol_events  # (c) optional: it imports openlineage-python
    except ImportError:
        raise FailedPrecondition(
            f"exporting OpenLineage events needs openlineage-python in the daemon; {INSTALL_HINT}"
        ) from None
    source = _event_source(store, namespace)
    for run_id in run_ids:
        run = store.get_run(run_id)
        phases = ["start"] if run.ended_at is None else ["start", "end"]
        for phase in phases:
            event = source(run.run_id, phase)
            if client is not None:
                event = client.update_event_tags_facets(client.add_environment_facets(event))
            yield ol_events.event_json(event)


def _record_failure(store: Store, *, entry_id: int, error: str) -> None:
    store.openlineage_failed(entry_id, error)


class OpenLineageDelivery:
    """The thread that sends the outbox's events in order; a stoppable context manager."""

    def __init__(
        self,
        store: Store,
        writer: Writer,
        settings: OpenLineageSettings,
        *,
        client: Any = None,
    ) -> None:
        self.store = store
        self.writer = writer
        self.settings = settings
        self.client = client if client is not None else make_client(settings)
        self._source = _event_source(store, settings.namespace)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lineaged-openlineage", daemon=True)
        self._last_error = ""
        self._backlog: tuple[float, int, str] | None = None
        self._last_activity = 0.0  # time.monotonic() of the last run recorded
        self.delivered = 0

    @property
    def transport(self) -> str:
        """The kind of transport events go through ("http", "file", "composite", ...)."""
        return str(
            getattr(self.client.transport, "kind", "") or type(self.client.transport).__name__
        )

    def start(self) -> None:
        """Start sending (the writer must be running)."""
        _, self._last_error = self.store.openlineage_backlog()
        log.info(
            "OpenLineage: sending run events through the %s transport (%s)",
            self.transport,
            self.settings.source,
        )
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the event in flight (its mark is kept); the writer must still run."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("OpenLineage: a transport call is still running; not waiting for it")
        try:
            self.client.close(1.0)
        except Exception:  # closing a transport that never connected is no reason to fail
            log.debug("closing the OpenLineage transport failed", exc_info=True)

    def __enter__(self) -> OpenLineageDelivery:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wake(self) -> None:
        """A run began or ended: there is an event to send once recording pauses."""
        self._last_activity = time.monotonic()
        self._wake.set()

    def busy(self) -> None:
        """Runs are being recorded: sending waits for a pause (up to max_delay_seconds)."""
        self._last_activity = time.monotonic()

    def _may_send(self, queued_at: int) -> bool:
        """Recording has paused, or the event has waited long enough."""
        if time.monotonic() - self._last_activity >= QUIET_SECONDS:
            return True
        return (time.time_ns() - queued_at) / 1e9 >= self.settings.max_delay_seconds

    def backlog(self) -> tuple[int, str]:
        """Events waiting to be delivered, and the last delivery error ("" after a success)."""
        now = time.monotonic()
        cached = self._backlog
        if cached is None or now - cached[0] > BACKLOG_SECONDS:
            count, _ = self.store.openlineage_backlog()
            cached = self._backlog = (now, count, self._last_error)
        return cached[1], self._last_error if cached[1] else ""

    def _loop(self) -> None:
        delay = self.settings.backoff_seconds
        while not self._stop.is_set():
            try:
                entries = self.store.openlineage_pending(BATCH)
            except Exception as exc:  # a failing store: say so and look again later
                self._last_error = f"reading the outbox: {exc}"
                log.exception("OpenLineage: reading the outbox failed")
                self._stop.wait(delay)
                continue
            if not entries:
                self._wake.wait(IDLE_SECONDS)
                self._wake.clear()
                continue
            if not self._may_send(entries[0].queued_at):
                self._stop.wait(QUIET_SECONDS / 2)
                continue
            try:
                delivered = self._deliver(entries)
            except Exception as exc:  # the store refused a mark: retry the same way
                self._last_error = f"recording a delivery: {exc}"
                log.exception("OpenLineage: recording a delivery failed")
                delivered = False
            if delivered:
                delay = self.settings.backoff_seconds
            else:
                log.info("OpenLineage: retrying in %.1f s", delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.settings.max_backoff_seconds)

    def _deliver(self, entries: Sequence[Any]) -> bool:
        """Send entries in order until one fails or the thread stops; True if none failed."""
        done: list[int] = []
        try:
            for entry in entries:
                if self._stop.is_set() or not self._may_send(entry.queued_at):
                    return True
                try:
                    self.client.emit(self._source(entry.run_id, entry.phase))
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"[:4096]
                    self._last_error = error
                    log.warning(
                        "OpenLineage: delivering the %s event of run %s failed (try %d): %s",
                        entry.phase,
                        entry.run_id,
                        entry.attempts + 1,
                        error,
                    )
                    self._mark(done)
                    self.writer.call(
                        functools.partial(_record_failure, entry_id=entry.id, error=error)
                    )
                    return False
                done.append(entry.id)
                if len(done) >= MARK_EVERY:
                    self._mark(done)
            self._last_error = ""
            return True
        finally:
            self._mark(done)

    def _mark(self, done: list[int]) -> None:
        if not done:
            return
        ids, at = list(done), time.time_ns()
        self.writer.call(lambda store: store.openlineage_delivered(ids, at))
        self.delivered += len(ids)
        self._backlog = None
        done.clear()
