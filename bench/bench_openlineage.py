"""Recording runs with OpenLineage on, off, and pointed at a dead endpoint.

The daemon queues each run's events in its store and sends them from a thread of its own, so
the rate at which clients record runs must not depend on the lineage server. For each of three
daemons — OpenLineage off; HTTP to a local endpoint (another process, answering 201); HTTP to
a port nobody listens on — one client records ``RUNS`` runs (BeginRun, one read and one write,
EndRun), and the runs per second are compared with the daemon that has OpenLineage off. The
configurations take turns, ``ROUNDS`` times, each with a fresh daemon; the best round counts.

Targets (issue 16): on / off >= 0.9, dead endpoint / off >= 0.9. Sending waits for a pause in
recording (at most ``max_delay_seconds``, 10 by default); a fourth daemon sends at once
(``max_delay_seconds = 0``) to show what delivery costs while runs are recorded, which is what
a sustained stream of runs longer than the delay pays. Also printed: how long the "on"
daemons took after the last run to have sent everything.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

from bench.bench_api import stop, wait_serving
from bench.common import print_table, verdict, work_dir

RUNS = 1000
ROUNDS = 5
TARGET = 0.9

_SERVER = textwrap.dedent(
    """
    import http.server, sys

    count = 0

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            global count
            self.rfile.read(int(self.headers["Content-Length"]))
            count += 1
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self):
            body = str(count).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    """
)


@contextlib.contextmanager
def lineage_server() -> Iterator[str]:
    """A local OpenLineage endpoint in its own process; yields its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def received(url: str) -> int:
    """How many events the endpoint got."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as answer:
        return int(answer.read())


def dead_url() -> str:
    """A local URL nobody listens on (connections are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def config(path: Path, url: str | None, max_delay: float | None = None) -> Path:
    """A lineaged TOML config: OpenLineage over HTTP to ``url``, or off."""
    lines = ["[openlineage]", "enabled = false"]
    if url is not None:
        lines = [
            "[openlineage]",
            *([f"max_delay_seconds = {max_delay}"] if max_delay is not None else []),
            "[openlineage.transport]",
            'type = "http"',
            f'url = "{url}"',
            "retry = { total = 0 }",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def record_runs(sock: Path, data: Path, count: int) -> float:
    """Record ``count`` runs (one read, one write each); returns runs per second."""
    from lineage_client import Client
    from lineage_core.models import Access, AccessMode, RunStart, RunStatus

    source = data / "input.csv"
    with Client(socket=sock) as client:
        started = time.perf_counter()
        for i in range(count):
            run = client.begin_run(RunStart(name="bench", argv=("python", "step.py", str(i))))
            now = time.time_ns()
            client.record_accesses(
                run.run_id,
                [
                    Access(str(source), AccessMode.READ, now, now, how="declared"),
                    Access(str(data / f"out-{i % 10}.csv"), AccessMode.WRITE, now, now),
                ],
            )
            client.end_run(run.run_id, status=RunStatus.SUCCEEDED, exit_code=0)
        return count / (time.perf_counter() - started)


def backlog(sock: Path) -> int:
    """The daemon's OpenLineage backlog."""
    from lineage_client import Client

    with Client(socket=sock) as client:
        return client.status().openlineage_backlog


@contextlib.contextmanager
def daemon(state: Path, sock: Path, log: Path, extra: tuple[str, ...]) -> Iterator[None]:
    """A real daemon on ``state`` with ``extra`` flags, SERVING on ``sock``; stopped after."""
    argv = [
        sys.executable, "-m", "lineaged", "--state-dir", str(state), "--socket", str(sock),
        "--scan-interval", "0", "--log-level", "warning", *extra,
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_serving(proc, sock, log, timeout=120.0)
        yield
    finally:
        stop(proc)


def one_round(
    base: Path, name: str, url: str | None, max_delay: float | None = None
) -> tuple[float, float | None]:
    """Runs/s of a fresh daemon, and the seconds it took after the last run to send all."""
    state, sock = base / f"state-{name}", base / f"s-{name}" / "lineaged.sock"
    data = base / "data"
    data.mkdir(exist_ok=True)
    (data / "input.csv").write_text("a,b\n1,2\n")
    toml = config(base / f"{name}.toml", url, max_delay)
    extra = ("--config", str(toml), "--watch", f"{data}:data")
    with daemon(state, sock, base / f"{name}.log", extra=extra):
        rate = record_runs(sock, data, RUNS)
        drained: float | None = None
        if name.startswith("on"):
            ended = time.perf_counter()
            deadline = ended + 300
            while backlog(sock) and time.perf_counter() < deadline:
                time.sleep(0.05)
            drained = time.perf_counter() - ended
    return rate, drained


def main() -> None:
    """Print runs/s off, on and dead, and the ratios against off."""
    best: dict[str, float] = {}
    every: dict[str, list[float]] = {}
    drain: list[float] = []
    with work_dir("openlineage") as base, lineage_server() as url:
        before = received(url)
        configs = [
            ("off", None, None),
            ("on", url, None),
            ("dead", dead_url(), None),
            ("on-at-once", url, 0.0),
        ]
        for round_number in range(ROUNDS):
            # Each round starts with another configuration: none always goes first.
            shift = round_number % len(configs)
            for name, target, max_delay in configs[shift:] + configs[:shift]:
                rate, drained = one_round(base, name, target, max_delay)
                best[name] = max(best.get(name, 0.0), rate)
                every.setdefault(name, []).append(rate)
                if drained is not None:
                    drain.append(drained)
        events = received(url) - before
    off = best["off"]
    rows = [
        ("off", best["off"], 1.0, ""),
        (
            "on (HTTP, local endpoint)",
            best["on"],
            best["on"] / off,
            verdict(best["on"] / off, TARGET),
        ),
        ("dead endpoint", best["dead"], best["dead"] / off, verdict(best["dead"] / off, TARGET)),
        ("on, max_delay_seconds = 0", best["on-at-once"], best["on-at-once"] / off, "(cost)"),
    ]
    print(f"{RUNS} runs per round, best of {ROUNDS} rounds; target >= {TARGET}x of off")
    print_table(["OpenLineage", "runs/s", "x off", "verdict"], rows)
    for name, rates in every.items():
        print(f"  {name}: " + ", ".join(f"{rate:.0f}" for rate in rates) + " runs/s")
    print(
        f"endpoint received {events} events ({4 * RUNS * ROUNDS} expected); backlog sent "
        f"{', '.join(f'{d:.1f}' for d in drain)} s after the last run"
    )
