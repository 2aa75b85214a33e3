"""Shared fixtures: a real ``lineaged`` process on a socket of its own, and no thread leaks."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from lineage_client import Client

from lineaged.store import DB_NAME, Store

REPO = Path(__file__).resolve().parent.parent


def short_tmp_dir() -> Path:
    """A fresh directory with a short path: Unix socket paths are limited to 107 bytes."""
    return Path(tempfile.mkdtemp(prefix="lg-", dir="/tmp"))


def health_status(socket: Path | str, service: str = "") -> int | None:
    """The daemon's grpc.health.v1 status, or None when it does not answer."""
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.RpcError:
            return None
        return int(response.status)


class DaemonProcess:
    """A ``python -m lineaged`` process serving on ``socket``, with its state and roots."""

    def __init__(self, base: Path, *extra: str, roles: tuple[str, ...] = ("data", "model")) -> None:
        self.base = base
        self.socket = base / "run" / "lineaged.sock"
        self.state_dir = base / "state"
        self.roots = {role: base / role for role in roles}
        for root in self.roots.values():
            root.mkdir(parents=True, exist_ok=True)
        self.log = base / "daemon.log"
        watches = [
            arg for role, path in self.roots.items() for arg in ("--watch", f"{path}:{role}")
        ]
        self.args = [
            "--state-dir", str(self.state_dir), "--socket", str(self.socket),
            *watches, "--settle-ms", "50", "--log-level", "debug", *extra,
        ]  # fmt: skip
        self._clients: list[Client] = []
        with open(self.log, "wb") as log:
            # A file, not a pipe: a chatty daemon must never block on a full pipe.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lineaged", *self.args], stdout=log, stderr=log, cwd=REPO
            )

    def wait_serving(self, timeout: float = 30.0) -> None:
        """Wait until health says SERVING (the initial scan is done)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"lineaged exited {self.proc.returncode}:\n{self.log_text()}")
            if (
                self.socket.exists()
                and health_status(self.socket) == health_pb2.HealthCheckResponse.SERVING
            ):
                return
            time.sleep(0.05)
        raise AssertionError(f"lineaged did not become SERVING in {timeout}s:\n{self.log_text()}")

    def log_text(self) -> str:
        """What the daemon logged so far."""
        return self.log.read_text(errors="replace")

    @property
    def data(self) -> Path:
        """The root watched with role ``data``."""
        return self.roots["data"]

    @property
    def models(self) -> Path:
        """The root watched with role ``model``."""
        return self.roots["model"]

    def client(self, **options: object) -> Client:
        """A client on the daemon's socket, closed at teardown."""
        client = Client(socket=self.socket, **options)  # type: ignore[arg-type]
        self._clients.append(client)
        return client

    def run_cli(
        self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``python -m lineage_client.cli --socket SOCKET ARGS...``."""
        return subprocess.run(
            [sys.executable, "-m", "lineage_client.cli", "--socket", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=cwd or self.base,
            env=env,
        )

    def logical_digest(self) -> str:
        """A digest of the store's logical content (every table, rowid order)."""
        store = Store.open_readonly(self.state_dir / DB_NAME)
        try:
            return store.logical_digest()
        finally:
            store.close()

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def stop(self) -> int:
        """SIGTERM, wait, return the exit status."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def finish(self) -> None:
        """Teardown: the daemon must still be alive, and stop cleanly with exit 0."""
        alive = self.alive()
        code = self.stop()
        assert alive, f"lineaged died during the test (exit {code}):\n{self.log_text()[-4000:]}"
        assert code == 0, f"lineaged exited {code} on SIGTERM:\n{self.log_text()[-4000:]}"


@pytest.fixture
def make_daemon() -> Iterator[Callable[..., DaemonProcess]]:
    """Start daemons (extra flags allowed); each is checked alive and stopped at teardown."""
    started: list[DaemonProcess] = []
    bases: list[Path] = []

    def start(*extra: str, wait: bool = True, base: Path | None = None) -> DaemonProcess:
        if base is None:
            base = short_tmp_dir()
            bases.append(base)
        daemon = DaemonProcess(base, *extra)
        started.append(daemon)
        if wait:
            daemon.wait_serving()
        return daemon

    yield start
    try:
        for daemon in started:
            daemon.finish()
    finally:
        for daemon in started:
            if daemon.alive():
                daemon.proc.kill()
                daemon.proc.wait()
        for base in bases:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def daemon(make_daemon: Callable[..., DaemonProcess]) -> DaemonProcess:
    """A real lineaged watching ``data`` and ``model`` roots, SERVING."""
    return make_daemon()


@pytest.fixture(scope="module")
def module_daemon() -> Iterator[DaemonProcess]:
    """One real lineaged shared by a module's tests (each test works under its own folder)."""
    base = short_tmp_dir()
    daemon = DaemonProcess(base)
    try:
        daemon.wait_serving()
        yield daemon
        daemon.finish()
    finally:
        if daemon.alive():
            daemon.proc.kill()
            daemon.proc.wait()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short-pathed scratch directory for sockets, removed afterwards."""
    base = short_tmp_dir()
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True)
def private_spool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Each test's ``lineage`` commands spool into a state folder of their own, never the
    user's (``lineage run`` journals what no daemon took; see docs/capture-reliability.md)."""
    state = tmp_path_factory.mktemp("xdg-state")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(state))
        yield state / "lineage" / "spool"


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """Every thread a test starts must be gone (allowing a moment to wind down) at its end."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    leaked: list[threading.Thread] = []
    while time.monotonic() < deadline:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked:
            return
        time.sleep(0.02)
    names = ", ".join(sorted(t.name for t in leaked))
    raise AssertionError(f"threads leaked by the test: {names}")


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """Run a block under another umask."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)
