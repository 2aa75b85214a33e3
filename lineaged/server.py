"""The gRPC server: socket directory and file hygiene, limits, interceptors, health, reflection.

``RpcServer`` serves ``LineageService`` (plus ``grpc.health.v1`` and reflection) on a Unix
socket, and optionally on TCP. The Unix socket is protected by its directory's permissions
(0700, or 0750 with a group); TCP is only allowed with a bearer token, checked on every call by
its own server's interceptor (so the local socket needs no token), and TLS when given a cert.
"""

from __future__ import annotations

import grp
import hmac
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from lineage_core._proto.lineage.v1 import lineage_pb2_grpc as pb_grpc
from lineage_core.credentials import read_secret, read_token
from lineage_core.errors import ConfigError, FailedPrecondition, LineageError
from lineage_core.limits import DEFAULT_MAX_MESSAGE_BYTES, MAX_ANSWER_BYTES
from lineage_core.wire import ERROR_CLASS_KEY

from lineaged.engine import Engine
from lineaged.service import SERVICE_NAME, LineageServicer

__all__ = ["ERROR_CLASS_KEY", "RpcServer", "ServerOptions"]

logger = logging.getLogger(__name__)

_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes, NUL included
_INTERNAL_MESSAGE = "internal error (see the daemon log)"
_SERVICE_PREFIX = f"/{SERVICE_NAME}/"


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """How and where the server listens."""

    socket_path: str
    socket_group: str = ""  # group name or gid: socket dir 0750 + chgrp; else 0700
    listen: str = ""  # "host:port" TCP, only with a token
    token_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_concurrent_rpcs: int = 64
    workers: int = 16


# --- interceptors ------------------------------------------------------------------------


def _abort_with(context: Any, exc: LineageError) -> None:
    context.set_trailing_metadata(((ERROR_CLASS_KEY, type(exc).__name__),))
    # Details travel as UTF-8; a path with undecodable bytes must not break the answer itself.
    message = exc.message.encode("utf-8", "backslashreplace").decode("utf-8")
    context.abort(getattr(grpc.StatusCode, exc.grpc_status), message)


def _handle(context: Any, exc: BaseException, method: str) -> None:
    """Turn an exception from a servicer into a status; re-raise grpc's own abort."""
    if isinstance(exc, LineageError):
        if type(exc).grpc_status == "INTERNAL":
            # Store and hash failures are the daemon's own trouble: keep the traceback.
            logger.error("%s failed: %s", method, type(exc).__name__, exc_info=exc)
        _abort_with(context, exc)
    code = context.code()
    if code is not None and code != grpc.StatusCode.OK:
        raise exc  # the context was aborted already (grpc's abort raises a bare Exception)
    logger.error("%s raised an unexpected exception", method, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE)


class _ErrorInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Map ``LineageError`` to its status code, anything else to a bare INTERNAL."""

    def __init__(self) -> None:
        # A method's handler never changes once the server runs: it is wrapped once, not on
        # every call (a status poll is a few hundred microseconds; the wrapping was a share).
        self._wrapped: dict[str, Any] = {}

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        method = details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = continuation(details)
        # Health and reflection set their own codes; only our servicer is wrapped (and cached:
        # a name a client makes up is never stored, so the cache stays the size of the service).
        if handler is None or not method.startswith(_SERVICE_PREFIX):
            return handler
        wrapped = self._wrapped[method] = self._wrap(handler, method)
        return wrapped

    @staticmethod
    def _wrap(handler: Any, method: str) -> Any:
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            def unary_unary(request: Any, context: Any) -> Any:
                try:
                    return unary(request, context)
                except Exception as exc:
                    _handle(context, exc, method)
                    raise  # pragma: no cover - _handle always raises

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            def unary_stream(request: Any, context: Any) -> Iterator[Any]:
                try:
                    yield from stream(request, context)
                except Exception as exc:
                    _handle(context, exc, method)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # no client- or bidi-streaming methods in lineage.v1


class _TokenInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuse every call on the TCP server whose bearer token is missing or wrong."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def _allowed(self, metadata: Any) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(presented, self._expected)
        return False

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        if self._allowed(details.invocation_metadata):
            return continuation(details)
        handler = continuation(details)
        if handler is None:
            return None

        def refuse(request: Any, context: Any) -> Any:
            context.set_trailing_metadata(((ERROR_CLASS_KEY, "Unauthenticated"),))
            context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or wrong bearer token (metadata 'authorization: Bearer <token>')",
            )

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(refuse)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(refuse)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(refuse)
        return grpc.unary_unary_rpc_method_handler(refuse)


# --- socket hygiene ----------------------------------------------------------------------


def _resolve_group(group: str) -> int | None:
    if not group:
        return None
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"socket group {group!r} does not exist") from None


def _prepare_socket_dir(directory: Path, gid: int | None) -> None:
    """Create (or check and fix) the socket's directory: 0700, or 0750 owned by ``gid``."""
    mode = 0o750 if gid is not None else 0o700
    try:
        directory.mkdir(mode=mode, parents=True)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create socket directory {directory}: {exc.strerror}") from exc
    info = os.lstat(directory)
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(f"socket directory {directory} is a symlink; refusing to use it")
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"socket directory {directory} exists and is not a directory")
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"socket directory {directory} is owned by uid {info.st_uid}, not by this user"
            f" (uid {os.geteuid()}); refusing to use it"
        )
    if info.st_mode & (stat.S_ISVTX | stat.S_IWOTH):
        # A shared directory such as /tmp: fixing its mode would break everyone else.
        raise ConfigError(
            f"socket directory {directory} is shared (mode {stat.S_IMODE(info.st_mode):o});"
            " give the socket a directory of its own, e.g. "
            f"{directory / f'lineaged-{os.geteuid()}' / 'lineaged.sock'}"
        )
    try:
        if gid is not None and info.st_gid != gid:
            os.chown(directory, -1, gid)
        # mkdir's mode passes through the umask; set it explicitly.
        if stat.S_IMODE(info.st_mode) != mode:
            logger.info("setting socket directory %s to mode %o", directory, mode)
            os.chmod(directory, mode)
    except OSError as exc:
        raise ConfigError(f"cannot secure socket directory {directory}: {exc.strerror}") from exc


def _socket_answers(path: Path) -> bool:
    """True when a process accepts connections on the socket file ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot tell whether another lineaged is serving on {path}: {exc}"
            ) from exc
        return True


def _clear_socket(path: Path) -> None:
    """Remove a stale socket; refuse a live one or anything that is not a socket."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"{path} exists and is not a socket; refusing to remove it")
    if _socket_answers(path):
        raise FailedPrecondition(
            f"another lineaged is serving on {path}; stop it first or choose another --socket"
        )
    logger.info("removing stale socket %s", path)
    path.unlink(missing_ok=True)


# --- the server --------------------------------------------------------------------------


class RpcServer:
    """``LineageService`` + health + reflection on a Unix socket (and optionally TCP)."""

    def __init__(self, engine: Engine, options: ServerOptions) -> None:
        self._engine = engine
        self._options = options
        self._socket = Path(os.path.abspath(options.socket_path))
        self._stopping = threading.Event()
        self._servers: list[Any] = []
        self._executor: ThreadPoolExecutor | None = None
        self._health: Any = None
        self._socket_ino: int | None = None
        self._tcp_address = ""
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        """The Unix socket target, ``unix:/path``."""
        return f"unix:{self._socket}"

    @property
    def tcp_address(self) -> str:
        """``host:port`` of the TCP listener with the port actually bound, or ``""``."""
        return self._tcp_address

    def __enter__(self) -> RpcServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _check_options(self) -> None:
        opts = self._options
        if opts.listen and not opts.token_file:
            raise ConfigError(
                f"--listen {opts.listen} needs --token-file: TCP clients must present a token"
            )
        if bool(opts.tls_cert) != bool(opts.tls_key):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        if opts.tls_cert and not opts.listen:
            raise ConfigError("--tls-cert/--tls-key apply to --listen; the Unix socket is local")
        if opts.listen and opts.listen.rpartition(":")[0] == "":
            raise ConfigError(f"--listen takes host:port, not {opts.listen!r}")
        for name in ("max_message_bytes", "max_concurrent_rpcs", "workers"):
            if getattr(opts, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if len(os.fsencode(self._socket)) > _SUN_PATH_MAX:
            raise ConfigError(
                f"socket path {self._socket} is {len(os.fsencode(self._socket))} bytes;"
                f" Unix sockets allow at most {_SUN_PATH_MAX}: choose a shorter --socket"
            )

    def _new_server(self, interceptors: list[Any]) -> Any:
        opts = self._options
        assert self._executor is not None
        server = grpc.server(
            self._executor,
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", opts.max_message_bytes),
                # Answers may be as big as clients accept (a graph of many runs, each whole).
                ("grpc.max_send_message_length", max(opts.max_message_bytes, MAX_ANSWER_BYTES)),
                # Without this a second daemon could bind the same TCP port and split traffic.
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=opts.max_concurrent_rpcs,
        )
        pb_grpc.add_LineageServiceServicer_to_server(
            LineageServicer(self._engine, stopping=self._stopping), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        self._servers.append(server)
        return server

    def start(self) -> None:
        """Bind and serve; raises ConfigError/FailedPrecondition with a clear message."""
        with self._lock:
            if self._servers:
                raise FailedPrecondition("the RPC server is already started")
            self._check_options()
            opts = self._options
            token = read_token(opts.token_file) if opts.listen else ""
            tls = (
                (read_secret(opts.tls_key, "TLS key"), read_secret(opts.tls_cert, "TLS cert"))
                if opts.tls_cert
                else None
            )
            gid = _resolve_group(opts.socket_group)
            _prepare_socket_dir(self._socket.parent, gid)
            _clear_socket(self._socket)
            self._stopping.clear()
            self._executor = ThreadPoolExecutor(
                max_workers=opts.workers, thread_name_prefix="lineaged-rpc"
            )
            self._health = health.HealthServicer()
            try:
                self._bind(gid, token, tls)
            except BaseException:
                self._shutdown(grace=0)
                raise
            self._engine.add_health_listener(self._set_serving)
            logger.info(
                "serving on %s%s", self.address, f" and {self._tcp_address}" if token else ""
            )

    def _bind(self, gid: int | None, token: str, tls: tuple[bytes, bytes] | None) -> None:
        local = self._new_server([_ErrorInterceptor()])
        try:
            local.add_insecure_port(f"unix:{self._socket}")
        except RuntimeError as exc:
            raise ConfigError(f"cannot bind the socket {self._socket}: {exc}") from exc
        info = os.lstat(self._socket)
        self._socket_ino = info.st_ino
        os.chmod(self._socket, 0o660 if gid is not None else 0o600)
        if gid is not None:
            os.chown(self._socket, -1, gid)
        if token:
            remote = self._new_server([_TokenInterceptor(token), _ErrorInterceptor()])
            listen = self._options.listen
            try:
                if tls is not None:
                    port = remote.add_secure_port(listen, grpc.ssl_server_credentials([tls]))
                else:
                    port = remote.add_insecure_port(listen)
            except RuntimeError as exc:
                raise ConfigError(f"cannot listen on {listen} (is the port in use?)") from exc
            self._tcp_address = f"{listen.rpartition(':')[0]}:{port}"
        for server in self._servers:
            server.start()

    def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        health_servicer = self._health
        if health_servicer is not None:
            health_servicer.set("", status)
            health_servicer.set(SERVICE_NAME, status)

    def stop(self, grace: float = 5.0) -> None:
        """Let in-flight RPCs finish (up to ``grace`` seconds), stop, remove the socket."""
        with self._lock:
            self._shutdown(grace)

    def _shutdown(self, grace: float) -> None:
        if self._health is not None:
            self._health.enter_graceful_shutdown()
        self._stopping.set()
        events = [server.stop(grace) for server in self._servers]
        for event in events:
            event.wait()
        self._servers.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._health = None
        self._remove_socket()

    def _remove_socket(self) -> None:
        if self._socket_ino is None:
            return
        try:
            # Only the socket this server bound: a successor may already own the path.
            if os.lstat(self._socket).st_ino == self._socket_ino:
                self._socket.unlink()
        except FileNotFoundError:
            pass
        self._socket_ino = None
