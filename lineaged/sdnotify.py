"""The sd_notify(3) protocol: tell systemd we are ready, reloading, stopping or alive."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier"]

logger = logging.getLogger(__name__)

# A full notify queue would block sendto() forever; a late message is worth less than a
# daemon that keeps working, so give up after this long.
_SEND_TIMEOUT = 2.0


def _address(value: str) -> str | None:
    """The AF_UNIX address for a ``$NOTIFY_SOCKET`` value, or None when it is not one."""
    if value.startswith("@") and len(value) > 1:
        # Linux abstract namespace: a leading NUL instead of a path.
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # Relative paths are invalid; "vsock:" addresses (systemd 253+ in VMs) are not ours.
    return None


class Notifier:
    """sd_notify(3) over $NOTIFY_SOCKET; every method is a no-op returning False when unset."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from ``environ``."""
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self._address = _address(raw) if raw else None
        if raw and self._address is None:
            logger.debug("ignoring unsupported NOTIFY_SOCKET=%r", raw)
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")

    @property
    def enabled(self) -> bool:
        """True when a service manager is listening on ``$NOTIFY_SOCKET``."""
        return self._address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; True when it was sent."""
        if self._address is None or not assignments:
            return False
        for assignment in assignments:
            # A newline would split one assignment into two, letting text forge state.
            if "=" not in assignment or "\n" in assignment:
                logger.debug("refusing malformed sd_notify assignment %r", assignment)
                return False
        payload = "\n".join(assignments).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(_SEND_TIMEOUT)
                sock.sendto(payload, self._address)
        except OSError as exc:
            logger.debug("sd_notify %r failed: %s", assignments, exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """``READY=1``: startup finished, or a reload did (with an optional ``STATUS=``)."""
        if status:
            return self.send("READY=1", _status(status))
        return self.send("READY=1")

    def status(self, text: str) -> bool:
        """``STATUS=``: one line shown by ``systemctl status``."""
        return self.send(_status(text))

    def stopping(self) -> bool:
        """``STOPPING=1``: graceful shutdown has begun."""
        return self.send("STOPPING=1")

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC=``; send ``ready()`` once the reload is done."""
        # Type=notify-reload matches the reload to its request by this timestamp, which
        # must come from CLOCK_MONOTONIC like systemd's own.
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={now_usec}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the keep-alive ping."""
        return self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of ``WATCHDOG_USEC``), or None when no watchdog is ours."""
        if self._address is None:
            return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        if usec <= 0:
            return None
        if self._watchdog_pid:
            try:
                pid = int(self._watchdog_pid)
            except ValueError:
                return None
            # The watchdog belongs to another process (e.g. we are a forked child).
            if pid != os.getpid():
                return None
        return usec / 2 / 1_000_000


def _status(text: str) -> str:
    """A ``STATUS=`` assignment with newlines flattened, since they end an assignment."""
    return "STATUS=" + " ".join(text.splitlines())
