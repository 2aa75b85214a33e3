"""The gRPC API: lineage trace latency and unary calls/s of a real daemon on a big store.

A synthetic store is built straight into SQLite (schema from ``Store.open``): 5,000 chains of 50
runs, run k reading version k-1 of its chain plus one version each of a shared code file and a
shared config file, and writing version k: 4 edges per run, 1,000,000 edges. The real daemon
(``python -m lineaged``) then serves it on a Unix socket.

Measured in the same run:
- upstream trace of a chain's deepest version through ``lineage_client.Client``, 200 calls
  rotating over 200 chains, against the floor: the same walk (digest bridges included) as one
  recursive CTE on a direct sqlite3 connection to the same file, with the page cache the
  daemon's readers have. Interleaved call by call with
  them, to show where the time goes: the same byte-for-byte answer from a do-nothing servicer
  (RPC plus the client's decoding, nothing behind it), and the steps without any RPC, in
  process (``Store.lineage``; ``graph_to_pb`` and serializing; parsing and
  ``graph_from_pb``);
- GetStatus calls/s (median of alternating rounds) from 8 client *processes* (separate processes:
  client threads in one process would measure the client's GIL), against the same load on a
  do-nothing grpcio servicer (same generated service, empty response, 16 worker threads like
  the daemon) in its own process on its own Unix socket, and on a daemon with an empty store.
  All use the raw stub, so the client-side work is the same and the ratio is the server's.

Targets the checks print (docs/performance.md): trace p99 of a 50-run chain over the socket
under 15 ms on the 1M-edge store; GetStatus calls/s at least 0.8x the trivial servicer's. The
ratio to the direct query is printed for information (its 3x target is retired).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.common import median, print_table, work_dir

CHAINS = int(os.environ.get("BENCH_API_CHAINS", "5000"))
DEPTH = 50  # runs per chain
SHARED = 100  # versions of the shared code file, and of the shared config file
TRACES = int(os.environ.get("BENCH_API_TRACES", "200"))
CLIENTS = 8
SECONDS = float(os.environ.get("BENCH_API_SECONDS", "3"))
# GetStatus rounds, alternating servers: one round's rate swings by 15% with the VM's spells.
ROUNDS = int(os.environ.get("BENCH_API_ROUNDS", "6"))
WORKERS = 16  # the daemon's RPC thread pool (ServerOptions.workers)
MAX_DEPTH = 4 * DEPTH  # the chain is 2 * DEPTH hops (version -> run -> version ...)
MAX_NODES = 1000
FIRST_VERSION = 2 * SHARED + 1  # chain versions follow the shared ones

# The floor: the walker's traversal (Store.lineage, upstream) as one statement returning every
# node's row. From a version, every run that wrote a version with the same digest; from a run,
# every version it read. UNION is the visited set (each node once, as the walker's seen sets);
# no depth cap is needed: the whole chain is well within MAX_DEPTH.
FLOOR_SQL = """
WITH RECURSIVE walk(kind, id) AS (
    SELECT 'v', ?
    UNION
    SELECT 'r', e.run_id
      FROM walk w
      JOIN versions src ON w.kind = 'v' AND src.id = w.id
      JOIN versions same ON same.digest = src.digest
      JOIN edges e ON e.version_id = same.id AND e.kind = 'wrote'
    UNION
    SELECT 'v', e.version_id
      FROM walk w
      JOIN edges e ON w.kind = 'r' AND e.run_id = w.id AND e.kind = 'read'
)
SELECT w.kind, w.id, a.path, v.digest, v.size, v.mtime_ns, v.valid_from, v.valid_until,
       r.run_id, r.name, r.argv, r.params, r.started_at, r.ended_at, r.status
  FROM walk w
  LEFT JOIN versions v ON w.kind = 'v' AND v.id = w.id
  LEFT JOIN artifacts a ON a.id = v.artifact_id
  LEFT JOIN runs r ON w.kind = 'r' AND r.id = w.id
"""

# A do-nothing servicer of the same generated service: GetStatus answers an empty message and
# GetLineage the bytes of a real lineaged answer, read once at start (the "canned" trace: what
# the RPC and the client's decoding cost with no query and no encoding behind them).
TRIVIAL_SERVER = """
import signal, sys
from concurrent.futures import ThreadPoolExecutor
import grpc
from lineage_core._proto.lineage.v1 import lineage_pb2 as pb, lineage_pb2_grpc as pb_grpc

with open(sys.argv[3], "rb") as f:
    CANNED = pb.GetLineageResponse.FromString(f.read())

class Trivial(pb_grpc.LineageServiceServicer):
    def GetStatus(self, request, context):
        return pb.GetStatusResponse()

    def GetLineage(self, request, context):
        return CANNED

server = grpc.server(ThreadPoolExecutor(max_workers=int(sys.argv[2])))
pb_grpc.add_LineageServiceServicer_to_server(Trivial(), server)
server.add_insecure_port("unix:" + sys.argv[1])
server.start()
signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
print("ready", flush=True)
server.wait_for_termination()
"""

# One client process: connect and warm up, say "ready", wait for the start line on stdin, then
# call GetStatus back to back for the given seconds and print "calls elapsed".
STATUS_CLIENT = """
import sys, time
import grpc
from lineage_core._proto.lineage.v1 import lineage_pb2 as pb, lineage_pb2_grpc as pb_grpc

channel = grpc.insecure_channel("unix:" + sys.argv[1])
stub = pb_grpc.LineageServiceStub(channel)
request = pb.GetStatusRequest()
for _ in range(3):
    stub.GetStatus(request, timeout=30)
print("ready", flush=True)
sys.stdin.readline()
seconds = float(sys.argv[2])
calls = 0
started = time.perf_counter()
end = started + seconds
while time.perf_counter() < end:
    stub.GetStatus(request, timeout=30)
    calls += 1
print(calls, time.perf_counter() - started, flush=True)
channel.close()
"""


# --- the synthetic store --------------------------------------------------------------------


def build_store(db_path: Path, prefix: str) -> dict[str, int]:
    """Create the schema with ``Store.open``, then bulk-load the chains in key order."""
    from lineaged.store import Store

    Store.open(db_path).close()
    rng = random.Random(1)
    now = time.time_ns()
    chain_versions = CHAINS * (DEPTH + 1)
    total_versions = 2 * SHARED + chain_versions
    # Sorted random digests, handed out in version id order: the digest index is filled in
    # key order too, and every digest is distinct (no digest bridges in this shape).
    digests = sorted({rng.randbytes(32) for _ in range(total_versions + 16)})[:total_versions]
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")  # a scratch file: a crash just means rebuild
        conn.execute("PRAGMA cache_size=-262144")
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO roots(id, path, role, added_at) VALUES (1, ?, 'model', ?)",
            (prefix, now),
        )
        artifacts = [(1, f"{prefix}/code/train.py", 1), (2, f"{prefix}/config/params.yaml", 1)]
        artifacts += [
            (3 + c * (DEPTH + 1) + k, f"{prefix}/c{c:05d}/stage{k:02d}.bin", 1)
            for c in range(CHAINS)
            for k in range(DEPTH + 1)
        ]
        conn.executemany("INSERT INTO artifacts(id, path, root_id) VALUES (?,?,?)", artifacts)
        del artifacts
        start = now - 10**15  # the history begins well in the past
        versions: list[tuple[object, ...]] = []
        for artifact in (1, 2):  # shared files: SHARED successive versions each
            for i in range(SHARED):
                vid = (artifact - 1) * SHARED + i + 1
                valid_from = start + i * 10**9
                until = valid_from + 10**9 if i < SHARED - 1 else None
                closed_by = "modified" if until is not None else None
                versions.append(
                    (vid, artifact, digests[vid - 1], 2048, valid_from, valid_from, until,
                     "modified", closed_by)
                )  # fmt: skip
        for c in range(CHAINS):
            for k in range(DEPTH + 1):
                vid = FIRST_VERSION + c * (DEPTH + 1) + k
                valid_from = start + 10**12 + vid * 10**6
                versions.append(
                    (vid, 3 + c * (DEPTH + 1) + k, digests[vid - 1], 1 << 20, valid_from,
                     valid_from, None, "created", None)
                )  # fmt: skip
        conn.executemany(
            "INSERT INTO versions(id, artifact_id, digest, size, mtime_ns, valid_from, "
            "valid_until, seen, closed_by) VALUES (?,?,?,?,?,?,?,?,?)",
            versions,
        )
        del versions, digests
        base_ms = start // 1_000_000
        runs: list[tuple[object, ...]] = []
        edges: list[tuple[object, ...]] = []
        argv_of = json.dumps(["python", "stage.py", "--epochs", "3"])
        for c in range(CHAINS):
            code = 1 + c % SHARED
            config = SHARED + 1 + (c // SHARED) % SHARED
            params = json.dumps({"chain": str(c), "lr": "0.01", "seed": str(c % 7)}, sort_keys=True)
            for k in range(1, DEPTH + 1):
                rid = c * DEPTH + k
                started = start + 10**12 + rid * 10**6
                runs.append(
                    (rid, f"{base_ms + rid:012x}{rng.getrandbits(80):020x}", f"stage{k:02d}",
                     argv_of, "/srv/project", "bench-host", "bench", 1000 + k, started,
                     started + 500_000, "succeeded", 0, params, "", "[]")
                )  # fmt: skip
                previous = FIRST_VERSION + c * (DEPTH + 1) + k - 1
                # In the order of the unique (run_id, kind, version_id) index.
                edges.append((rid, code, "read", "code", started))
                edges.append((rid, config, "read", "data", started))
                edges.append((rid, previous, "read", "data", started))
                edges.append((rid, previous + 1, "wrote", "data", started))
        conn.executemany(
            "INSERT INTO runs(id, run_id, name, argv, cwd, host, user, pid, started_at, "
            "ended_at, status, exit_code, params, parent_run_id, warnings) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            runs,
        )
        conn.executemany(
            "INSERT INTO edges(run_id, version_id, kind, how, role, first_at, last_at, "
            "changed_during_run) VALUES (?, ?, ?, 'traced', ?, ?, ?, 0)",
            ((r, v, kind, role, at, at) for r, v, kind, role, at in edges),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        counts = {
            table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in ("artifacts", "versions", "runs", "edges")
        }
    finally:
        conn.close()
    return counts


def deepest_version(chain: int) -> int:
    """The version id the last run of ``chain`` wrote (its model)."""
    return FIRST_VERSION + chain * (DEPTH + 1) + DEPTH


# --- processes ------------------------------------------------------------------------------


@contextmanager
def daemon(
    state: Path, watched: Path, socket: Path, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """The real daemon on ``state``, SERVING on ``socket``; SIGTERM (then SIGKILL) after."""
    argv = [
        sys.executable, "-m", "lineaged", "--state-dir", str(state), "--socket", str(socket),
        "--watch", f"{watched}:data", "--scan-interval", "0", "--log-level", "warning",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_serving(proc, socket, log, timeout=120.0)
        yield proc
    except BaseException:
        stop(proc)
        # The log dies with the work directory: show why the daemon failed while it exists.
        print(f"--- daemon log ---\n{log.read_text(errors='replace')[-8000:]}", file=sys.stderr)
        raise
    finally:
        stop(proc)


def wait_serving(proc: subprocess.Popen[bytes], socket: Path, log: Path, timeout: float) -> None:
    """Return once grpc.health.v1 says SERVING; raise if the daemon exits or the time is up."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"lineaged exited {proc.returncode}:\n{log.read_text()}")
        if socket.exists():
            with grpc.insecure_channel(f"unix:{socket}") as channel:
                try:
                    answer = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=2
                    )
                except grpc.RpcError:
                    answer = None
            if answer is not None and answer.status == health_pb2.HealthCheckResponse.SERVING:
                return
        time.sleep(0.05)
    raise RuntimeError(f"lineaged did not become SERVING in {timeout} s:\n{log.read_text()}")


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """SIGTERM, and SIGKILL when the process has not gone after 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def trivial_server(socket: Path, canned: Path) -> Iterator[None]:
    """A do-nothing grpcio servicer in its own process (``canned``: its GetLineage answer)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", TRIVIAL_SERVER, str(socket), str(WORKERS), str(canned)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the trivial server did not start (exit {proc.wait()})")
        yield
    finally:
        stop(proc)


def status_calls_per_second(socket: Path) -> float:
    """GetStatus calls/s summed over ``CLIENTS`` client processes calling back to back."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STATUS_CLIENT, str(socket), str(SECONDS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(CLIENTS)
    ]
    try:
        for proc in procs:  # every client connected and warm before any is timed
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a status client failed (exit {proc.wait()})")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        rate = 0.0
        for proc in procs:
            out, _ = proc.communicate(timeout=SECONDS + 60)
            calls, elapsed = out.split()
            rate += int(calls) / float(elapsed)
        return rate
    finally:
        for proc in procs:
            stop(proc)


# --- the measurements -----------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (p99 of 200 samples is the 198th smallest)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


@contextmanager
def client_tracer(socket: Path, timings: list[float]) -> Iterator[Callable[[int], None]]:
    """Trace a chain's deepest version through ``Client``, appending the wall seconds."""
    from lineage_client import Client

    with Client(socket=socket) as client:

        def trace(chain: int) -> None:
            started = time.perf_counter()
            graph = client.trace(
                f"version:{deepest_version(chain)}", max_depth=MAX_DEPTH, max_nodes=MAX_NODES
            )
            timings.append(time.perf_counter() - started)
            if len(graph.runs) != DEPTH or graph.truncated:
                raise AssertionError(
                    f"trace of chain {chain} on {socket.name}: {len(graph.runs)} runs"
                    f" (want {DEPTH}), truncated={graph.truncated}"
                )

        yield trace


@contextmanager
def floor_tracer(db_path: Path, timings: list[float]) -> Iterator[Callable[[int], None]]:
    """Run ``FLOOR_SQL`` on a direct read-only connection, appending the wall seconds."""
    from lineaged.store import CACHE_KIB

    direct = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    # The page cache the daemon's readers have: the floor is the same query on equal terms.
    direct.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    try:

        def floor(chain: int) -> None:
            started = time.perf_counter()
            rows = direct.execute(FLOOR_SQL, (deepest_version(chain),)).fetchall()
            timings.append(time.perf_counter() - started)
            runs = sum(1 for row in rows if row[0] == "r")
            if runs != DEPTH:
                raise AssertionError(f"floor of chain {chain}: {runs} runs (want {DEPTH})")

        yield floor
    finally:
        direct.close()


@contextmanager
def in_process_tracer(
    db_path: Path, steps: dict[str, list[float]]
) -> Iterator[Callable[[int], None]]:
    """The steps of a trace without the RPC, timed apart: the daemon's walk and encoding, the
    client's decoding (where the time over the socket goes)."""
    from lineage_core import wire
    from lineage_core._proto.lineage.v1 import lineage_pb2 as pb
    from lineage_core.models import Direction, StartNode

    from lineaged.store import Store

    store = Store.open_readonly(db_path)
    try:

        def trace(chain: int) -> None:
            started = time.perf_counter()
            graph = store.lineage(  # what the daemon's GetLineage walks and encodes
                StartNode(version_id=deepest_version(chain)),
                Direction.UPSTREAM,
                max_depth=MAX_DEPTH,
                max_nodes=MAX_NODES,
            )
            walked = time.perf_counter()
            data = pb.GetLineageResponse(graph=wire.graph_to_pb(graph)).SerializeToString()
            encoded = time.perf_counter()
            wire.graph_from_pb(pb.GetLineageResponse.FromString(data).graph)
            decoded = time.perf_counter()
            steps["walk"].append(walked - started)
            steps["encode"].append(encoded - walked)
            steps["decode"].append(decoded - encoded)

        yield trace
    finally:
        store.close()


def save_answer(socket: Path, chain: int, dest: Path) -> int:
    """Write lineaged's raw GetLineage answer for ``chain`` to ``dest``; returns its size."""
    import grpc
    from lineage_core._proto.lineage.v1 import lineage_pb2 as pb
    from lineage_core._proto.lineage.v1 import lineage_pb2_grpc as pb_grpc

    request = pb.GetLineageRequest(
        start=pb.StartNode(version_id=deepest_version(chain)),
        direction=pb.DIRECTION_UPSTREAM,
        max_depth=MAX_DEPTH,
        max_nodes=MAX_NODES,
    )
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        answer = pb_grpc.LineageServiceStub(channel).GetLineage(request, timeout=30)
    data = answer.SerializeToString()
    dest.write_bytes(data)
    return len(data)


def main() -> None:
    """Build the store, start the daemon, measure, print the table; everything cleaned up."""
    with work_dir("api") as work:
        state, empty_state, watched = work / "state", work / "empty-state", work / "empty"
        for folder in (state, empty_state, watched):
            folder.mkdir()
        db_path = state / "lineaged.db"
        edges = CHAINS * DEPTH * 4
        print(
            f"building a store of {CHAINS} chains x {DEPTH} runs ({edges:,} edges) ...", flush=True
        )
        started = time.perf_counter()
        counts = build_store(db_path, str(work / "synthetic"))
        build_seconds = time.perf_counter() - started
        print(
            f"built in {build_seconds:.1f} s: {counts['edges']:,} edges, {counts['runs']:,} runs,"
            f" {counts['versions']:,} versions, {db_path.stat().st_size / 1e6:.0f} MB",
            flush=True,
        )
        # Rotate over many chains so not every call finds its pages hot in SQLite's cache.
        picked = random.Random(2).sample(range(CHAINS), min(TRACES, CHAINS))
        chains = (picked * (TRACES // len(picked) + 1))[:TRACES]
        warm_up = [CHAINS - 1 - c for c in range(10)]  # not timed: channels, caches
        canned = work / "answer.bin"
        timings: dict[str, list[float]] = {
            name: [] for name in ("socket", "floor", "canned", "walk", "encode", "decode")
        }
        # Unix socket paths are limited to 107 bytes: the sockets live in a short /tmp folder.
        sockets = Path(tempfile.mkdtemp(prefix="lg-bench-", dir="/tmp"))
        try:
            socket, trivial = sockets / "run" / "lineaged.sock", sockets / "trivial.sock"
            with ExitStack() as stack:
                started = time.perf_counter()
                stack.enter_context(daemon(state, watched, socket, work / "daemon.log"))
                ready_seconds = time.perf_counter() - started
                answer_bytes = save_answer(socket, chains[0], canned)
                stack.enter_context(trivial_server(trivial, canned))
                # Interleaved call by call: machine noise spreads over every contender.
                tracers = [
                    stack.enter_context(client_tracer(socket, timings["socket"])),
                    stack.enter_context(floor_tracer(db_path, timings["floor"])),
                    stack.enter_context(client_tracer(trivial, timings["canned"])),
                    stack.enter_context(in_process_tracer(db_path, timings)),
                ]
                print(f"tracing {len(chains)} chains ...", flush=True)
                for chain in warm_up:
                    for tracer in tracers:
                        tracer(chain)
                for values in timings.values():
                    values.clear()
                for chain in chains:
                    for tracer in tracers:
                        tracer(chain)
                print(f"GetStatus from {CLIENTS} client processes, {ROUNDS} rounds ...", flush=True)
                # Alternating rounds, medians: a slow spell of the machine hits both servers.
                rates: dict[Path, list[float]] = {socket: [], trivial: []}
                for round_number in range(ROUNDS):
                    order = [socket, trivial] if round_number % 2 == 0 else [trivial, socket]
                    for target in order:
                        rates[target].append(status_calls_per_second(target))
                lineaged_rate, trivial_rate = median(rates[socket]), median(rates[trivial])
            with daemon(empty_state, watched, sockets / "empty.sock", work / "empty.log"):
                empty_rate = status_calls_per_second(sockets / "empty.sock")
        finally:
            shutil.rmtree(sockets, ignore_errors=True)

    def ms(name: str, fraction: float) -> float:
        return percentile(timings[name], fraction) * 1000.0

    trace_p50, trace_p99 = ms("socket", 0.5), ms("socket", 0.99)
    floor_p50, floor_p99 = ms("floor", 0.5), ms("floor", 0.99)
    calls = len(timings["socket"])
    print()
    print_table(
        ["measurement", "value", "unit"],
        [
            ["store build (SQLite bulk load)", build_seconds, "s"],
            ["daemon start to SERVING", ready_seconds, "s"],
            [f"trace over socket p50 ({calls} calls)", trace_p50, "ms"],
            [f"trace over socket p99 ({calls} calls)", trace_p99, "ms"],
            ["floor: one recursive CTE, direct p50", floor_p50, "ms"],
            ["floor: one recursive CTE, direct p99", floor_p99, "ms"],
            ["in process: Store.lineage p50", ms("walk", 0.5), "ms"],
            ["in process: graph_to_pb + serialize p50", ms("encode", 0.5), "ms"],
            ["in process: parse + graph_from_pb p50", ms("decode", 0.5), "ms"],
            [f"same answer ({answer_bytes} B), trivial servicer p50", ms("canned", 0.5), "ms"],
            [f"same answer ({answer_bytes} B), trivial servicer p99", ms("canned", 0.99), "ms"],
            [f"GetStatus, lineaged ({CLIENTS} client processes)", lineaged_rate, "calls/s"],
            ["GetStatus, lineaged on an empty store", empty_rate, "calls/s"],
            [f"GetStatus, trivial servicer ({CLIENTS} client processes)", trivial_rate, "calls/s"],
        ],
    )
    print()
    checks: list[list[object]] = [
        ["trace p99 (ms)", trace_p99, "< 15", "PASS" if trace_p99 < 15 else "MISS"],
        ["trace p99 / floor p99", trace_p99 / floor_p99, "(info)", ""],
        ["trace p50 / floor p50", trace_p50 / floor_p50, "(info)", ""],
        [
            "GetStatus calls/s / trivial servicer",
            lineaged_rate / trivial_rate,
            ">= 0.8",
            "PASS" if lineaged_rate >= 0.8 * trivial_rate else "MISS",
        ],
        ["GetStatus (empty store) / trivial servicer", empty_rate / trivial_rate, "(info)", ""],
    ]
    print_table(["check", "measured", "target", ""], checks)


if __name__ == "__main__":
    main()
