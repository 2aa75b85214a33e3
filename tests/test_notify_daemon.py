"""The real daemon speaks systemd's notify protocol: READY=1 once the store is open and the
socket bound, STATUS= lines, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from tests.conftest import short_tmp_dir


def _messages(listener: socket.socket, until: float) -> list[str]:
    received = []
    while time.monotonic() < until:
        try:
            received.append(listener.recv(4096).decode())
        except TimeoutError:
            continue
    return received


def test_ready_watchdog_status_and_stopping() -> None:
    base = short_tmp_dir()
    try:
        notify = base / "notify"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(str(notify))
        listener.settimeout(0.2)
        (base / "data").mkdir()
        sock = base / "run" / "s"
        env = {**os.environ, "NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "400000"}
        env.pop("WATCHDOG_PID", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "lineaged", "--state-dir", str(base / "state"),
             "--socket", str(sock), "--watch", f"{base / 'data'}:data"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            ready_seen_with_socket = None
            deadline = time.monotonic() + 30
            messages: list[str] = []
            while time.monotonic() < deadline and ready_seen_with_socket is None:
                for message in _messages(listener, time.monotonic() + 0.2):
                    messages.append(message)
                    if "READY=1" in message.split("\n"):
                        ready_seen_with_socket = (
                            sock.exists() and (base / "state" / "lineaged.db").exists()
                        )
            assert ready_seen_with_socket is True, messages
            # Watchdog pings keep coming while the daemon is healthy (waited for, not timed).
            later: list[str] = []
            deadline = time.monotonic() + 20
            while sum("WATCHDOG=1" in m for m in later) < 2 and time.monotonic() < deadline:
                later += _messages(listener, time.monotonic() + 0.5)
            assert sum("WATCHDOG=1" in m for m in later) >= 2, later
            assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for m in messages + later)
            proc.send_signal(signal.SIGTERM)
            stopping: list[str] = []
            deadline = time.monotonic() + 20
            while not any("STOPPING=1" in m for m in stopping) and time.monotonic() < deadline:
                stopping += _messages(listener, time.monotonic() + 0.5)
            assert any("STOPPING=1" in m for m in stopping), stopping
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            listener.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
