"""The lineage walk against an independent oracle: random run/version graphs written into a real
SQLite store, walked by ``Store.lineage``, compared with a plain breadth-first walk in Python.

The oracle states what a walk means. Nodes are digests and runs: a start version's digest is at
depth 0, a start run at depth 1. Upstream, a digest at depth k < max_depth leads to every run
that wrote a version with that digest (depth k + 1), and a run leads to the digest of every
version it read (same depth); downstream, read and wrote swap. The graph holds every run
reached; every edge between a run and a digest reached (also one the walk did not cross, into
a digest at the depth limit); the versions at the ends of those edges and the start versions;
and a ``same_digest`` edge from each version written to each other version with its bytes
(written too or not: two runs that made the same bytes are bridged both ways).
``truncated`` says that runs the walk did not reach lie beyond the depth limit.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lineage_core.models import Access, AccessMode, Direction, Graph, RunStart, RunStatus, StartNode

from lineaged.store import Store

DIGESTS = [f"{i:02x}" * 32 for i in range(1, 9)]  # few distinct contents: copies happen
PATHS = [f"/elsewhere/f{i}" for i in range(10)]


@dataclass(frozen=True)
class World:
    """A graph as written: version id -> (path, digest); (run, version id, kind) edges."""

    versions: dict[int, tuple[str, str]]
    runs: list[str]  # run ids, in the order they were made
    edges: set[tuple[str, int, str]]  # (run id, version id, "read" | "wrote")


@st.composite
def plans(
    draw: st.DrawFn,
) -> tuple[list[tuple[str, str]], list[tuple[list[int], list[int]]]]:
    """A plan: versions (path, digest), then runs reading and writing some of them."""
    versions = draw(
        st.lists(
            st.tuples(st.sampled_from(PATHS), st.sampled_from(DIGESTS)), min_size=1, max_size=14
        )
    )
    count = len(versions)
    runs = draw(
        st.lists(
            st.tuples(
                st.lists(st.integers(0, count - 1), max_size=4, unique=True),
                st.lists(st.integers(0, count - 1), max_size=3, unique=True),
            ),
            min_size=1,
            max_size=8,
        )
    )
    return versions, runs


Plan = tuple[list[tuple[str, str]], list[tuple[list[int], list[int]]]]


def build(store: Store, plan: Plan) -> World:
    """Write the plan into the store: external versions, then runs with their edges."""
    versions, runs = plan
    version_ids: list[int] = []
    made: dict[int, tuple[str, str]] = {}
    store.begin()
    for index, (path, digest) in enumerate(versions):
        # Distinct times: a new digest for a path is a new version (the earlier one closes);
        # the same digest again is the same version.
        version_id = store.record_external(path, digest, 1, index + 1, 1_000 + index)
        version_ids.append(version_id)
        made[version_id] = (path, digest)
    run_ids: list[str] = []
    edges: set[tuple[str, int, str]] = set()
    for reads, writes in runs:
        run_id = store.begin_run(RunStart(name="stage", started_at=10_000))
        run_ids.append(run_id)
        for kind, picked in (("read", reads), ("wrote", writes)):
            for index in picked:
                version_id = version_ids[index]
                path = made[version_id][0]
                access = Access(
                    path=path,
                    mode=AccessMode.READ if kind == "read" else AccessMode.WRITE,
                    first_at=10_000,
                    last_at=10_000,
                )
                store.link(run_id, version_id, kind, access)
                edges.add((run_id, version_id, kind))
        store.end_run(run_id, exit_code=0, status=RunStatus.SUCCEEDED, ended_at=20_000, warnings=())
    store.commit()
    return World(made, run_ids, edges)


@dataclass(frozen=True)
class Expected:
    runs: set[str]
    versions: set[int]
    edges: set[tuple[str, str, str]]  # (source node, target node, kind)
    truncated: bool


def oracle(
    world: World,
    start_versions: list[int],
    start_runs: list[str],
    direction: Direction,
    max_depth: int,
) -> Expected:
    """The walk, breadth first over an in-memory copy of the graph."""
    ways = (
        [Direction.UPSTREAM, Direction.DOWNSTREAM] if direction is Direction.BOTH else [direction]
    )
    runs: set[str] = set(start_runs)
    versions: set[int] = set(start_versions)
    crossed: set[tuple[str, int, str]] = set()
    truncated = False
    digest_of = {vid: digest for vid, (_, digest) in world.versions.items()}
    for way in ways:
        to_run, from_run = ("wrote", "read") if way is Direction.UPSTREAM else ("read", "wrote")
        depth_of_digest: dict[str, int] = {}
        depth_of_run: dict[str, int] = {}
        queue: deque[tuple[str, object, int]] = deque()
        for vid in start_versions:
            queue.append(("d", digest_of[vid], 0))
        for run in start_runs:
            queue.append(("r", run, 1))
        while queue:  # a 0-1 breadth-first walk: minimum depths
            kind, node, depth = queue.popleft()
            seen = depth_of_digest if kind == "d" else depth_of_run
            if node in seen and seen[node] <= depth:  # type: ignore[operator]
                continue
            seen[node] = depth  # type: ignore[index]
            if kind == "r":
                for run, vid, edge_kind in world.edges:
                    if run == node and edge_kind == from_run:
                        queue.appendleft(("d", digest_of[vid], depth))
            elif depth < max_depth:
                for run, vid, edge_kind in world.edges:
                    if edge_kind == to_run and digest_of[vid] == node:
                        queue.append(("r", run, depth + 1))
        # The edges between the nodes reached: crossed ones, and at the depth limit, those
        # from a reached run into a digest the walk did not go beyond.
        for run, vid, edge_kind in world.edges:
            if run in depth_of_run and digest_of[vid] in depth_of_digest:
                crossed.add((run, vid, edge_kind))
        frontier = {d for d, depth in depth_of_digest.items() if depth >= max_depth}
        if any(
            k == to_run and digest_of[v] in frontier and r not in depth_of_run
            for r, v, k in world.edges
        ):
            truncated = True
        runs |= set(depth_of_run)
    versions |= {vid for _, vid, _ in crossed}
    edges = {(f"run:{r}", f"version:{v}", k) for r, v, k in crossed}
    written = {vid for _, vid, kind in crossed if kind == "wrote"}
    for source in versions & written:
        for target in versions - {source}:
            if digest_of[target] == digest_of[source]:
                edges.add((f"version:{source}", f"version:{target}", "same_digest"))
    return Expected(runs, versions, edges, truncated)


def observed(graph: Graph) -> Expected:
    return Expected(
        {r.run_id for r in graph.runs},
        {v.id for v in graph.versions},
        {(e.source, e.target, e.kind) for e in graph.edges},
        graph.truncated,
    )


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    plan=plans(),
    start=st.integers(0, 1000),
    from_run=st.booleans(),
    direction=st.sampled_from(list(Direction)),
    max_depth=st.integers(1, 4),
)
def test_walk_matches_the_oracle(
    tmp_path_factory: pytest.TempPathFactory,
    plan: Plan,
    start: int,
    from_run: bool,
    direction: Direction,
    max_depth: int,
) -> None:
    store = Store.open(tmp_path_factory.mktemp("walk") / "lineaged.db")
    try:
        world = build(store, plan)
        if from_run:
            run = world.runs[start % len(world.runs)]
            node, start_versions, start_runs = StartNode(run_id=run), [], [run]
        else:
            vid = sorted(world.versions)[start % len(world.versions)]
            node, start_versions, start_runs = StartNode(version_id=vid), [vid], []
        graph = store.lineage(node, direction, max_depth=max_depth, max_nodes=1000)
        assert observed(graph) == oracle(world, start_versions, start_runs, direction, max_depth)
        ids = [f"version:{v.id}" for v in graph.versions] + [f"run:{r.run_id}" for r in graph.runs]
        assert {e.source for e in graph.edges} | {e.target for e in graph.edges} <= set(ids)
        assert list(graph.versions) == sorted(graph.versions, key=lambda v: v.id)
    finally:
        store.close()


def test_max_nodes_keeps_the_nearest_and_says_so(tmp_path: Path) -> None:
    """A chain of 6 runs, capped at 5 nodes: the nodes nearest the start, truncated."""
    store = Store.open(tmp_path / "lineaged.db")
    try:
        versions = [(f"/elsewhere/s{i}", DIGESTS[i % len(DIGESTS)]) for i in range(7)]
        plan: Plan = (versions, [([i], [i + 1]) for i in range(6)])
        world = build(store, plan)
        model = max(world.versions)
        graph = store.lineage(
            StartNode(version_id=model), Direction.UPSTREAM, max_depth=100, max_nodes=5
        )
        assert graph.truncated
        # The start digest, then run 6, digest 5, run 5, digest 4: the nearest five nodes.
        assert {r.run_id for r in graph.runs} == set(world.runs[-2:])
        full = store.lineage(
            StartNode(version_id=model), Direction.UPSTREAM, max_depth=100, max_nodes=1000
        )
        assert not full.truncated and {r.run_id for r in full.runs} == set(world.runs)
    finally:
        store.close()
