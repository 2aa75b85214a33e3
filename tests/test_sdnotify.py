"""sd_notify(3) against real datagram sockets, as systemd's notify socket receives them."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lineaged import sdnotify
from lineaged.sdnotify import Notifier


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket on a filesystem path, like /run/systemd/notify."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10)
        yield sock, str(path)


@pytest.fixture
def abstract_receiver() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in the abstract namespace, as ``@name`` in $NOTIFY_SOCKET."""
    name = f"lineaged-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        yield sock, "@" + name


def assert_nothing_queued(sock: socket.socket) -> None:
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


def test_messages_arrive_as_sent_on_a_path_socket(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled

    assert notifier.ready("watching 2 roots")
    assert sock.recv(4096) == b"READY=1\nSTATUS=watching 2 roots"
    assert notifier.ready()
    assert sock.recv(4096) == b"READY=1"
    assert notifier.status("scanning /srv/ml/data: 1200 files")
    assert sock.recv(4096) == b"STATUS=scanning /srv/ml/data: 1200 files"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    assert notifier.send("STATUS=ünïcode", "EXTEND_TIMEOUT_USEC=5000000")
    assert sock.recv(4096) == "STATUS=ünïcode\nEXTEND_TIMEOUT_USEC=5000000".encode()


def test_messages_arrive_on_an_abstract_socket(
    abstract_receiver: tuple[socket.socket, str],
) -> None:
    sock, address = abstract_receiver
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    assert notifier.ready("up")
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_reloading_carries_a_monotonic_timestamp(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier({"NOTIFY_SOCKET": path})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    first, second = sock.recv(4096).decode().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_default_environment_is_os_environ(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert Notifier().ready()
    assert sock.recv(4096) == b"READY=1"


def test_unset_socket_sends_nothing_and_returns_false(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, _ = receiver
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    for notifier in (Notifier({}), Notifier({"NOTIFY_SOCKET": ""}), Notifier()):
        assert not notifier.enabled
        assert not notifier.send("READY=1")
        assert not notifier.ready("x")
        assert not notifier.status("x")
        assert not notifier.stopping()
        assert not notifier.reloading()
        assert not notifier.watchdog()
        assert notifier.watchdog_interval() is None
    assert_nothing_queued(sock)


@pytest.mark.parametrize("value", ["relative/notify", "vsock:2:1234", "@"])
def test_unsupported_addresses_disable_notification(value: str) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": value})
    assert not notifier.enabled
    assert not notifier.ready()


def test_a_missing_listener_returns_false_instead_of_raising(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()


def test_a_full_queue_gives_up_instead_of_blocking(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = receiver
    # Only shortens the wait: the full queue itself is real, nobody reads the receiver.
    monkeypatch.setattr(sdnotify, "_SEND_TIMEOUT", 0.05)
    notifier = Notifier({"NOTIFY_SOCKET": path})
    sent = 0
    while notifier.watchdog():
        sent += 1
        assert sent < 1_000_000, "the receive queue never filled"
    assert sent > 0
    assert sock.recv(4096) == b"WATCHDOG=1"


@pytest.mark.parametrize(
    "assignments",
    [(), ("READY",), ("STATUS=ok\nREADY=1",), ("READY=1", "STATUS=a\nWATCHDOG=trigger")],
)
def test_malformed_assignments_are_refused(
    receiver: tuple[socket.socket, str], assignments: tuple[str, ...]
) -> None:
    sock, path = receiver
    assert not Notifier({"NOTIFY_SOCKET": path}).send(*assignments)
    assert_nothing_queued(sock)


def test_status_text_cannot_inject_assignments(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.status("line one\nREADY=1")
    assert sock.recv(4096) == b"STATUS=line one READY=1"
    assert notifier.ready("a\r\nb")
    assert sock.recv(4096) == b"READY=1\nSTATUS=a b"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000"}, 0.0005),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "30s"}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None, tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify"), **env})
    assert notifier.watchdog_interval() == expected


def test_watchdog_interval_needs_a_notify_socket() -> None:
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval() is None
