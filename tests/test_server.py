"""The gRPC server's transport: socket hygiene, error interceptor, limits, token, TLS, health.

Transport-level tests use ``RpcServer`` in-process with a tiny engine object (it only has to
answer the few calls used here); behaviour against the real store is in test_client/test_cli.
The last tests start real ``lineaged`` processes (state lock, TCP with a token).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from lineage_client import Client
from lineage_core._proto.lineage.v1 import lineage_pb2 as pb
from lineage_core._proto.lineage.v1 import lineage_pb2_grpc as pb_grpc
from lineage_core.errors import (
    AmbiguousDigest,
    ConfigError,
    FailedPrecondition,
    LineageError,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
)
from lineage_core.models import ChangeKind, Event, Version

from lineaged.server import RpcServer, ServerOptions
from tests.conftest import DaemonProcess, health_status, umask
from tests.helpers import wait_for

VERSION = Version(
    id=7,
    path="/data/a.csv",
    digest="ab" * 32,
    size=3,
    mtime_ns=1,
    valid_from=2,
    valid_until=None,
    seen=ChangeKind.SCAN,
)


class TinyEngine:
    """Just enough engine for transport tests: ``get_version`` behaves by id."""

    def __init__(self) -> None:
        self.serving = False
        self._listeners: list[Callable[[bool], None]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.subscribed = threading.Event()
        # The parts the service asks: this one object plays them all.
        self.queries = self.events = self

    def add_health_listener(self, listener: Callable[[bool], None]) -> None:
        self._listeners.append(listener)
        listener(self.serving)

    def set_serving(self, serving: bool) -> None:
        self.serving = serving
        for listener in self._listeners:
            listener(serving)

    def get_version(self, version_id: int) -> Version:
        if version_id == 1:
            raise NotFound("no version 1")
        if version_id == 2:
            raise RuntimeError("secret detail /etc/shadow")
        if version_id == 3:
            self.entered.set()
            assert self.release.wait(10)
        if version_id == 4:
            raise AmbiguousDigest("abcd1234 matches 2 digests: abcd1234aa…, abcd1234bb…")
        return VERSION

    def versions_by_digest(self, digest: str, *, limit: int) -> list[Version]:
        return [VERSION]

    def subscribe(self, path_prefix: str = "") -> _Subscription:
        self.subscribed.set()
        return _Subscription()


class _Subscription:
    overflowed = False

    def get(self, timeout: float) -> Event | None:
        threading.Event().wait(timeout)
        return None

    def close(self) -> None:
        pass


@pytest.fixture
def engine() -> TinyEngine:
    return TinyEngine()


@pytest.fixture
def serve(engine: TinyEngine, socket_dir: Path) -> Iterator[Callable[..., RpcServer]]:
    """Start RpcServers on a socket under ``socket_dir``; all stopped at teardown."""
    servers: list[RpcServer] = []

    def start(**options: object) -> RpcServer:
        options.setdefault("socket_path", str(socket_dir / "run" / "lineaged.sock"))
        server = RpcServer(engine, ServerOptions(**options))  # type: ignore[arg-type]
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(grace=0)


def stub(target: str) -> tuple[grpc.Channel, pb_grpc.LineageServiceStub]:
    channel = grpc.insecure_channel(target)
    return channel, pb_grpc.LineageServiceStub(channel)


# --- socket directory and file -----------------------------------------------------------


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_socket_directory_is_private_whatever_the_umask(serve, socket_dir: Path, mask: int) -> None:
    with umask(mask):
        server = serve()
    folder = socket_dir / "run"
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    sock = folder / "lineaged.sock"
    assert stat.S_ISSOCK(os.lstat(sock).st_mode)
    assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
    assert server.address == f"unix:{sock}"


def test_socket_group_gets_0750_and_the_group(serve, socket_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chgrp to an arbitrary group needs root")
    serve(socket_group="daemon")
    info = os.stat(socket_dir / "run")
    assert stat.S_IMODE(info.st_mode) == 0o750
    assert info.st_gid == 1
    sock = os.lstat(socket_dir / "run" / "lineaged.sock")
    assert (stat.S_IMODE(sock.st_mode), sock.st_gid) == (0o660, 1)


def test_existing_directory_mode_is_fixed(serve, socket_dir: Path) -> None:
    folder = socket_dir / "run"
    folder.mkdir()
    folder.chmod(0o755)
    serve()
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700


def test_directory_owned_by_someone_else_is_refused(engine, socket_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a directory owned by another user needs root")
    folder = socket_dir / "run"
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, 65534)
    server = RpcServer(engine, ServerOptions(socket_path=str(folder / "lineaged.sock")))
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        server.start()


def test_shared_directory_such_as_tmp_is_refused_not_chmodded(engine, socket_dir: Path) -> None:
    shared = socket_dir / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    server = RpcServer(engine, ServerOptions(socket_path=str(shared / "lineaged.sock")))
    with pytest.raises(ConfigError, match="shared"):
        server.start()
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o1777


def test_stale_socket_is_replaced(serve, socket_dir: Path) -> None:
    folder = socket_dir / "run"
    folder.mkdir(mode=0o700)
    path = folder / "lineaged.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # bound, never listening: nobody answers connect
    serve()
    channel, lineage = stub(f"unix:{path}")
    with channel:
        assert lineage.GetVersion(pb.GetVersionRequest(version_id=7), timeout=5).version.id == 7


def test_live_socket_is_refused(engine, socket_dir: Path) -> None:
    folder = socket_dir / "run"
    folder.mkdir(mode=0o700)
    path = folder / "lineaged.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        server = RpcServer(engine, ServerOptions(socket_path=str(path)))
        with pytest.raises(FailedPrecondition, match="another lineaged is serving on"):
            server.start()
        assert stat.S_ISSOCK(os.lstat(path).st_mode)


@pytest.mark.parametrize("occupant", ["file", "directory"])
def test_non_socket_occupant_is_refused_and_kept(engine, socket_dir: Path, occupant: str) -> None:
    folder = socket_dir / "run"
    folder.mkdir(mode=0o700)
    path = folder / "lineaged.sock"
    if occupant == "file":
        path.write_text("precious")
    else:
        path.mkdir()
    server = RpcServer(engine, ServerOptions(socket_path=str(path)))
    with pytest.raises(ConfigError, match="exists and is not a socket; refusing to remove it"):
        server.start()
    assert path.exists()


def test_too_long_socket_path_is_a_config_error(engine, socket_dir: Path) -> None:
    path = socket_dir / ("x" * 120) / "lineaged.sock"
    with pytest.raises(ConfigError, match="at most 107"):
        RpcServer(engine, ServerOptions(socket_path=str(path))).start()


def test_stop_lets_in_flight_calls_finish_then_removes_the_socket(serve, engine) -> None:
    server = serve()
    path = Path(server.address.removeprefix("unix:"))
    channel, lineage = stub(server.address)
    answers: list[object] = []

    def slow_call() -> None:
        try:
            answers.append(lineage.GetVersion(pb.GetVersionRequest(version_id=3), timeout=20))
        except grpc.RpcError as exc:
            answers.append(exc)

    caller = threading.Thread(target=slow_call)
    caller.start()
    assert engine.entered.wait(10)
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 10})
    stopper.start()

    def refuses_new_calls() -> bool:
        try:
            lineage.GetVersion(pb.GetVersionRequest(version_id=7), timeout=5)
        except grpc.RpcError:
            return True
        return False

    wait_for(refuses_new_calls, what="the stopping server to refuse new calls")
    assert caller.is_alive()  # the slow call is still in flight while the server stops
    engine.release.set()
    caller.join(10)
    stopper.join(10)
    channel.close()
    assert isinstance(answers[0], pb.GetVersionResponse), answers
    assert not path.exists()


def test_stop_ends_subscribe_streams_instead_of_waiting_out_the_grace(
    serve, engine: TinyEngine
) -> None:
    server = serve()
    channel, lineage = stub(server.address)
    stream = lineage.Subscribe(pb.SubscribeRequest(path_prefix="/data/"), timeout=60)
    assert engine.subscribed.wait(10), "the servicer never opened the subscription"
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 60})
    stopper.start()
    assert list(stream) == []  # ended by the server with OK, not cancelled after the grace
    assert stream.code() == grpc.StatusCode.OK
    stopper.join(60)
    channel.close()


# --- the error interceptor ---------------------------------------------------------------


def test_lineage_errors_keep_status_message_and_class(serve) -> None:
    server = serve()
    channel, lineage = stub(server.address)
    with channel, pytest.raises(grpc.RpcError) as caught:
        lineage.GetVersion(pb.GetVersionRequest(version_id=1), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "no version 1"
    assert ("lineage-error-class", "NotFound") in tuple(caught.value.trailing_metadata())

    client = Client(socket=server.address.removeprefix("unix:"))
    with client, pytest.raises(AmbiguousDigest, match="matches 2 digests"):
        client.get_version(4)


def test_unexpected_exception_is_internal_without_internals(serve, caplog) -> None:
    server = serve()
    channel, lineage = stub(server.address)
    with (
        caplog.at_level(logging.ERROR, logger="lineaged.server"),
        channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        lineage.GetVersion(pb.GetVersionRequest(version_id=2), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == "internal error (see the daemon log)"
    assert "secret" not in str(caught.value.trailing_metadata())
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and "secret detail" in str(logged[0].exc_info[1])

    client = Client(socket=server.address.removeprefix("unix:"))
    with client, pytest.raises(LineageError) as error:
        client.get_version(2)
    assert type(error.value) is LineageError


def test_validation_errors_are_invalid_argument(serve) -> None:
    server = serve()
    channel, lineage = stub(server.address)
    with channel, pytest.raises(grpc.RpcError) as caught:
        lineage.GetVersion(pb.GetVersionRequest(version_id=-5), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "positive" in caught.value.details()


# --- limits ------------------------------------------------------------------------------


def test_oversized_request_is_resource_exhausted(serve) -> None:
    server = serve(max_message_bytes=64 * 1024)
    client = Client(socket=server.address.removeprefix("unix:"))
    with client, pytest.raises(ResourceExhausted):
        client.find_digest("ab" * 32 + "0" * 100_000)


def test_calls_beyond_the_concurrency_limit_are_resource_exhausted(serve, engine) -> None:
    server = serve(max_concurrent_rpcs=1)
    channel, lineage = stub(server.address)
    blocked = lineage.GetVersion.future(pb.GetVersionRequest(version_id=3), timeout=20)
    assert engine.entered.wait(10)
    with pytest.raises(grpc.RpcError) as caught:
        lineage.GetVersion(pb.GetVersionRequest(version_id=7), timeout=5)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    engine.release.set()
    assert blocked.result().version.id == 7
    channel.close()


# --- health and reflection ---------------------------------------------------------------


def test_health_follows_the_engine(serve, engine) -> None:
    server = serve()
    path = server.address.removeprefix("unix:")
    assert health_status(path) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert (
        health_status(path, "lineage.v1.LineageService")
        == health_pb2.HealthCheckResponse.NOT_SERVING
    )
    engine.set_serving(True)
    assert health_status(path) == health_pb2.HealthCheckResponse.SERVING
    assert (
        health_status(path, "lineage.v1.LineageService") == health_pb2.HealthCheckResponse.SERVING
    )


def test_reflection_lists_the_services(serve) -> None:
    server = serve()
    with grpc.insecure_channel(server.address) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answers = list(reflection.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"lineage.v1.LineageService", "grpc.health.v1.Health"} <= names


def test_reflection_describes_a_graph_as_messages_per_node_and_edge(serve) -> None:
    # What `grpcurl describe lineage.v1.Graph` shows, and what lets it print a graph.
    server = serve()
    with grpc.insecure_channel(server.address) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="lineage.v1.Graph")
        [answer] = list(reflection.ServerReflectionInfo(iter([request]), timeout=5))
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in answer.file_descriptor_response.file_descriptor_proto
    ]
    [lineage] = [f for f in files if f.package == "lineage.v1"]
    [graph] = [m for m in lineage.message_type if m.name == "Graph"]
    repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    fields = {f.name: (f.label == repeated, f.type_name or f.type) for f in graph.field}
    assert fields == {
        "truncated": (False, descriptor_pb2.FieldDescriptorProto.TYPE_BOOL),
        "start": (True, descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
        "versions": (True, ".lineage.v1.Version"),
        "runs": (True, ".lineage.v1.Run"),
        "edges": (True, ".lineage.v1.Edge"),
    }


# --- TCP, token, TLS ---------------------------------------------------------------------


@pytest.fixture
def token_file(socket_dir: Path) -> Path:
    path = socket_dir / "token"
    path.write_text("s3cret-token\n")
    path.chmod(0o600)
    return path


def test_tcp_without_a_token_file_is_refused(engine, socket_dir: Path) -> None:
    options = ServerOptions(socket_path=str(socket_dir / "s" / "l.sock"), listen="127.0.0.1:0")
    with pytest.raises(ConfigError, match="needs --token-file"):
        RpcServer(engine, options).start()


def test_tcp_checks_the_token_on_every_call(serve, token_file: Path) -> None:
    server = serve(listen="127.0.0.1:0", token_file=str(token_file))
    target = server.tcp_address
    assert re.fullmatch(r"127\.0\.0\.1:\d+", target) and not target.endswith(":0")
    with Client(target=target, token="s3cret-token") as good:
        assert good.get_version(7) == VERSION
    for token in ("wrong", None, "s3cret-token-and-more"):
        with Client(target=target, token=token) as bad, pytest.raises(Unauthenticated):
            bad.get_version(7)
    # Health and reflection are behind the token too; the Unix socket needs none.
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as caught:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with Client(socket=server.address.removeprefix("unix:")) as local:
        assert local.get_version(7).id == 7


def test_tcp_with_tls(serve, token_file: Path, socket_dir: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, key = socket_dir / "cert.pem", socket_dir / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = serve(
        listen="localhost:0", token_file=str(token_file), tls_cert=str(cert), tls_key=str(key)
    )
    with Client(target=server.tcp_address, token="s3cret-token", tls=str(cert)) as client:
        assert client.get_version(7).id == 7
    with (
        Client(target=server.tcp_address, token="s3cret-token") as plaintext,
        pytest.raises(LineageError),
    ):
        plaintext.get_version(7)


# --- real daemons ------------------------------------------------------------------------


def test_second_daemon_on_the_same_state_is_refused(
    daemon: DaemonProcess, socket_dir: Path
) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "lineaged", "--state-dir", str(daemon.state_dir),
         "--socket", str(socket_dir / "other" / "l.sock"), "--watch", f"{daemon.data}:data"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert second.returncode != 0
    assert f"already running (pid {daemon.proc.pid})" in second.stderr
    assert daemon.client().status().pid == daemon.proc.pid


def test_second_daemon_on_the_same_socket_is_refused(
    daemon: DaemonProcess, socket_dir: Path
) -> None:
    second = subprocess.run(
        [sys.executable, "-m", "lineaged", "--state-dir", str(socket_dir / "state2"),
         "--socket", str(daemon.socket), "--watch", f"{daemon.data}:data"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert second.returncode != 0
    assert "another lineaged is serving on" in second.stderr
    assert daemon.client().status().pid == daemon.proc.pid


def test_daemon_refuses_tcp_without_a_token(socket_dir: Path) -> None:
    (socket_dir / "data").mkdir()
    refused = subprocess.run(
        [sys.executable, "-m", "lineaged", "--state-dir", str(socket_dir / "state"),
         "--socket", str(socket_dir / "run" / "l.sock"), "--watch", f"{socket_dir / 'data'}:data",
         "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == ConfigError.exit_code
    assert "token" in refused.stderr


def test_daemon_over_tcp_with_a_token(make_daemon, token_file: Path) -> None:
    daemon = make_daemon("--listen", "127.0.0.1:0", "--token-file", str(token_file))
    found = wait_for(
        lambda: re.search(r"serving on unix:\S+ and (127\.0\.0\.1:\d+)", daemon.log_text()),
        what="the TCP address in the log",
    )
    target = found.group(1)  # type: ignore[union-attr]
    assert "s3cret-token" not in daemon.log_text()
    with Client(target=target, token="s3cret-token") as client:
        assert client.status().pid == daemon.proc.pid
    with Client(target=target, token="nope-wrong-token") as client, pytest.raises(Unauthenticated):
        client.status()
    # The daemon logs at debug level here: neither the token nor a wrong one reaches the log.
    log = daemon.log_text()
    assert "s3cret-token" not in log and "nope-wrong-token" not in log
