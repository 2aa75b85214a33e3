"""The daemon's signal handling: handlers only note what arrived, and a signal wakes the main
loop at once, whenever it lands (a handler that took a lock could deadlock the daemon)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from lineaged.daemon import _Signals
from tests.conftest import REPO

PELTED = textwrap.dedent(
    """
    import os, signal, sys, threading
    from lineaged.daemon import _Signals

    signals = _Signals()
    signals.install()

    def pelt():
        for _ in range(20_000):
            os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=pelt, daemon=True).start()
    reloads = 0
    while not signals.stop:
        signals.wait(0.0001)
        reloads += signals.take_reload()
    print("stopped", reloads > 0)
    """
)

WOKEN = textwrap.dedent(
    """
    import os, signal, threading, time
    from lineaged.daemon import _Signals

    signals = _Signals()
    signals.install()
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
    signals.wait(600)  # an hour would do: the signal ends the wait
    print("woken", signals.stop)
    """
)


def _run(script: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_handlers_take_no_lock() -> None:
    """A Python signal handler runs in the main thread, between two of its instructions: a
    handler that takes a lock deadlocks when the main thread holds it. The old handlers set
    threading.Events (a lock each); holding an event's lock and raising SIGTERM hung the
    daemon for good, SIGTERM included (shown by hand; the notify test met it twice)."""
    signals = _Signals()
    called: list[str] = []

    def profile(frame: object, event: str, arg: object) -> None:
        if event == "c_call":
            called.append(str(getattr(arg, "__qualname__", arg)))

    sys.setprofile(profile)
    try:
        signals._on_reload(signal.SIGHUP, None)
        signals._on_stop(signal.SIGTERM, None)
    finally:
        sys.setprofile(None)
    assert not [name for name in called if "acquire" in name or "__enter__" in name], called
    assert signals.stop and signals.take_reload() and not signals.take_reload()


def test_a_storm_of_signals_never_stalls_the_main_loop() -> None:
    assert _run(PELTED) == "stopped True"


def test_a_signal_ends_the_wait_at_once() -> None:
    assert _run(WOKEN) == "woken True"
