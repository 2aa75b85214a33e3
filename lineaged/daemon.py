"""The ``lineaged`` command: process lifecycle, flags, the state lock, signals, sd_notify.

lineaged [--watch PATH[:ROLE]]... [--state-dir DIR] [--config FILE] [--once] ...
lineaged check [--state-dir DIR]
lineaged backup DEST [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import logging
import os
import select
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

from lineage_core.errors import AlreadyRunning, ConfigError, LineageError, StoreError
from lineage_core.models import ScanState
from lineage_core.redact import KEY_FILE

from lineaged import __version__
from lineaged.config import Config, load_config
from lineaged.engine import Engine
from lineaged.privacy import PRIVATE_UMASK, secure_state_dir
from lineaged.sdnotify import Notifier
from lineaged.store import DB_NAME, Store

__all__ = ["StateLock", "build_parser", "main"]

log = logging.getLogger("lineaged")

STOP_GRACE_SECONDS = 5.0
LOCK_NAME = "lineaged.lock"


def build_parser() -> argparse.ArgumentParser:
    """The daemon's flags (every one can also come from the TOML config)."""
    parser = argparse.ArgumentParser(
        prog="lineaged",
        description="Watch data and model directories, version every file with BLAKE3, "
        "and serve lineage over gRPC.",
        epilog="Other commands: 'lineaged check' (integrity) and 'lineaged backup DEST'.",
    )
    parser.add_argument("--version", action="version", version=f"lineaged {__version__}")
    parser.add_argument(
        "--watch",
        action="append",
        metavar="PATH[:ROLE]",
        help="a directory to watch; ROLE is data, model, code or other (repeatable)",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML configuration (flags win)")
    parser.add_argument("--state-dir", metavar="DIR", help="where the SQLite store lives")
    parser.add_argument("--socket", metavar="PATH", help="the Unix socket to serve on")
    parser.add_argument("--socket-group", metavar="GROUP", help="group allowed to connect")
    parser.add_argument("--listen", metavar="HOST:PORT", help="also serve TCP (needs --token-file)")
    parser.add_argument("--token-file", metavar="FILE", help="bearer token required on TCP")
    parser.add_argument("--tls-cert", metavar="FILE", help="TLS certificate for TCP")
    parser.add_argument("--tls-key", metavar="FILE", help="TLS private key for TCP")
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="default: info"
    )
    parser.add_argument(
        "--settle-ms",
        type=int,
        metavar="MS",
        help="quiet time before indexing a change (default 200)",
    )
    parser.add_argument(
        "--scan-interval",
        type=float,
        metavar="SECONDS",
        help="between reconcile scans (default 600; 0 = never)",
    )
    parser.add_argument("--max-concurrent-rpcs", type=int, metavar="N", help="default 64")
    parser.add_argument("--max-message-bytes", type=int, metavar="N", help="default 4 MiB")
    parser.add_argument(
        "--once", action="store_true", help="index the roots once, print a summary, exit"
    )
    return parser


def _tool_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"lineaged {command}")
    if command == "backup":
        parser.add_argument("dest", help="the new file to write the copy to")
    parser.add_argument("--state-dir", metavar="DIR")
    parser.add_argument("--config", metavar="FILE")
    return parser


class StateLock:
    """An exclusive ``flock`` on the state directory: one daemon per store."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd = -1

    def acquire(self) -> None:
        """Take the lock or raise AlreadyRunning naming the holder's pid."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open the state lock {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                os.close(fd)
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(
                f"lineaged is already running (pid {holder}) on state directory {self.path.parent}"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:  # a full disk: the lock is ours, the pid note is not written
            os.close(fd)
            raise StoreError(f"cannot write the state lock {self.path}: {exc.strerror}") from None
        self._fd = fd

    def release(self) -> None:
        """Drop the lock."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # grpc and watchdog are chatty at debug; keep their warnings.
    for name in ("watchdog", "grpc"):
        logging.getLogger(name).setLevel(max(logging.getLogger().level, logging.INFO))


def _prepare_state_dir(state_dir: Path) -> None:
    # Private whatever it was: the store is every path, digest and command line of the host.
    secure_state_dir(state_dir, DB_NAME, (LOCK_NAME, KEY_FILE))
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"state directory {state_dir} is not writable")


class _Signals:
    """Signal handlers only note what arrived; the main thread acts on it.

    The handlers take no lock. They used to set ``threading.Event``s, which deadlocks when the
    signal is handled while the main thread holds that event's lock (entering
    ``Event.wait``, say): a SIGTERM sent just after a watchdog ping then left the daemon
    hanging for good, and the notify test caught it twice in ten suites. Now the handlers
    set flags, and ``signal.set_wakeup_fd`` has the interpreter write each signal to a pipe
    the moment it arrives (in C), which :meth:`wait` watches.
    """

    def __init__(self) -> None:
        self.stop = False
        self._reloads = 0  # incremented by the handler only; the main thread only reads
        self._reloads_seen = 0
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def install(self) -> None:
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop = True

    def _on_reload(self, signum: int, frame: FrameType | None) -> None:
        self._reloads += 1

    def take_reload(self) -> bool:
        """Whether a SIGHUP arrived since the last call (several count as one)."""
        reloads = self._reloads
        if reloads == self._reloads_seen:
            return False
        self._reloads_seen = reloads
        return True

    def wait(self, timeout: float) -> None:
        """Return after ``timeout`` seconds, or as soon as a signal arrives."""
        if self.stop or self._reloads != self._reloads_seen:
            return
        with contextlib.suppress(InterruptedError):
            select.select([self._read], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 512):
                pass


def _describe(config: Config) -> str:
    roots = ", ".join(f"{r.path} ({r.role.value})" for r in config.roots) or "nothing"
    return f"state in {config.state_dir}, socket {config.socket}; watching {roots}"


@contextlib.contextmanager
def _opened_store(config: Config) -> Iterator[Store]:
    store = Store.open(config.state_dir / DB_NAME)
    try:
        yield store
    finally:
        store.close()


def _serve(args: argparse.Namespace, config: Config) -> int:
    # Deferred (e): grpc and protobuf cost a `lineaged --once` (index and exit, the rescan
    # figure of bench/bench_scan.py) 0.15 s it has no use for; tests/test_daemon.py holds this.
    from lineaged.server import RpcServer, ServerOptions

    notifier = Notifier()
    signals = _Signals()
    signals.install()
    with contextlib.ExitStack() as stack:
        stack.enter_context(StateLock(config.state_dir))
        store = stack.enter_context(_opened_store(config))
        engine = Engine(config, store)
        log.info("lineaged %s: %s", __version__, _describe(config))
        engine.start()
        stack.callback(engine.stop)
        server = RpcServer(
            engine,
            ServerOptions(
                socket_path=str(config.socket),
                socket_group=config.socket_group,
                listen=config.listen,
                token_file=config.token_file,
                tls_cert=config.tls_cert,
                tls_key=config.tls_key,
                max_message_bytes=config.max_message_bytes,
                max_concurrent_rpcs=config.max_concurrent_rpcs,
            ),
        )
        server.start()
        stack.callback(server.stop, STOP_GRACE_SECONDS)
        log.info("serving on %s", server.address)

        def progress(scan: ScanState) -> None:
            notifier.status(f"scanning: {scan.files_seen} files, {scan.files_hashed} hashed")

        engine.add_progress_listener(progress)
        notifier.ready(status="serving; initial scan running")
        interval = notifier.watchdog_interval()
        was_serving = False
        while not signals.stop:
            signals.wait(interval if interval else 1.0)
            if interval:
                notifier.watchdog()
            if engine.serving and not was_serving:
                was_serving = True
                notifier.status("serving; initial scan done")
            if not signals.stop and signals.take_reload():
                notifier.reloading()
                try:
                    engine.reload(load_config(args))
                except LineageError as exc:
                    log.error("reload refused, keeping the running configuration: %s", exc)
                notifier.ready(status="serving; configuration reloaded")
        log.info("stopping: finishing in-flight calls and draining the queue")
        notifier.stopping()
    log.info("stopped cleanly")
    return 0


def _run_once(config: Config) -> int:
    with StateLock(config.state_dir), _opened_store(config) as store:
        log.info("lineaged %s --once: %s", __version__, _describe(config))
        stats = Engine(config, store).run_once()
    print(f"indexed {stats.summary()}")
    return 0


def _check(config: Config) -> int:
    path = config.state_dir / DB_NAME
    if not path.exists():
        raise ConfigError(f"no store at {path}")
    store = Store.open_readonly(path)
    try:
        problems = store.integrity_problems()
        if problems:
            for problem in problems:
                print(f"problem: {problem}")
            print(f"{path}: {len(problems)} problems")
            return 1
        counts = store.counts()
    finally:
        store.close()
    print(
        f"{path}: ok (integrity_check ok, no foreign key violations; {counts.versions} versions, "
        f"{counts.runs} runs, {counts.edges} edges)"
    )
    return 0


def _backup(config: Config, dest: str) -> int:
    path = config.state_dir / DB_NAME
    if not path.exists():
        raise ConfigError(f"no store at {path}")
    store = Store.open_readonly(path)
    try:
        store.backup(Path(dest))
    finally:
        store.close()
    print(f"backed up {path} to {dest}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lineaged`` console script."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    # Everything the daemon creates (store, WAL, markers, key, backups) is its user's only.
    os.umask(PRIVATE_UMASK)
    try:
        if arguments and arguments[0] in ("check", "backup"):
            command = arguments[0]
            args = _tool_parser(command).parse_args(arguments[1:])
            _setup_logging("warning")
            config = load_config(args)
            return _check(config) if command == "check" else _backup(config, args.dest)
        args = build_parser().parse_args(arguments)
        config = load_config(args)
        _setup_logging(config.log_level)
        if not config.roots:
            raise ConfigError("nothing to watch: give --watch PATH[:ROLE] or [[roots]] in --config")
        _prepare_state_dir(config.state_dir)
        for root in config.roots:
            if not os.path.isdir(root.path):
                log.warning(
                    "root %s does not exist (yet); it will be watched when it appears", root.path
                )
        if config.once:
            return _run_once(config)
        return _serve(args, config)
    except LineageError as exc:
        print(f"lineaged: error: {_one_line(exc.message)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # a full disk, a directory that cannot be read, ...
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"lineaged: error: {_one_line(exc.strerror or str(exc))}{where}", file=sys.stderr)
        return 1
    except Exception as exc:
        # Never a traceback on stderr: one line, and the traceback for whoever asks (debug).
        log.debug("lineaged failed", exc_info=True)
        print(f"lineaged: error: {_one_line(f'{type(exc).__name__}: {exc}')}", file=sys.stderr)
        return 1


def _one_line(message: str) -> str:
    return " ".join(message.split()) or "failed"
