"""The lineage graph walk: one recursive query from the start over run/version edges (copies
bridged through equal digests), then the nodes it reached loaded in one statement.

``lineage`` is what ``Store.lineage`` answers; ``verify`` and
``upstream_digests`` (what retention keeps) are answered by walks too.
"""

from __future__ import annotations

import json
import operator
import sqlite3
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from lineage_core.models import (
    AccessHow,
    AccessRole,
    Direction,
    Edge,
    EdgeKind,
    Graph,
    Run,
    SourceFile,
    StartNode,
    VerifyItem,
    VerifyState,
    Version,
    run_node_id,
    version_node_id,
)

from lineaged.store.rows import ACCESS_HOWS as _ACCESS_HOWS
from lineaged.store.rows import ACCESS_ROLES as _ACCESS_ROLES
from lineaged.store.rows import CHANGE_KINDS as _CHANGE_KINDS
from lineaged.store.rows import EDGE_KINDS as _EDGE_KINDS
from lineaged.store.rows import RUN_COLUMNS as _RUN_COLUMNS
from lineaged.store.rows import chunks as _chunks
from lineaged.store.rows import decode_runs as _decode_runs

if TYPE_CHECKING:
    from lineaged.store.store import Store


def lineage(
    store: Store, start: StartNode, direction: Direction, *, max_depth: int, max_nodes: int
) -> Graph:
    """Walk run/version edges from ``start``; versions with equal digests are bridged.

    ``max_depth`` counts run levels: upstream of a model, depth 1 is the run that wrote
    it and the versions that run read; depth 2 the runs that wrote those, and so on.
    """
    start_versions, start_runs = store.start_versions(start)
    ways = (
        (Direction.UPSTREAM, Direction.DOWNSTREAM) if direction is Direction.BOTH else (direction,)
    )
    with store.reading() as conn:
        walk = _Walk(store, conn, start_versions, start_runs)
        for way in ways:
            walk.walk(way, max_depth=max_depth, max_nodes=max_nodes)
        return walk.graph()


def verify(store: Store, start: StartNode, *, max_nodes: int = 10_000) -> list[VerifyItem]:
    """Every input on the upstream closure of ``start`` and what its path holds now."""
    graph = lineage(store, start, Direction.UPSTREAM, max_depth=1000, max_nodes=max_nodes)
    by_id = {version_node_id(v.id): v for v in graph.versions}
    runs = {run_node_id(r.run_id): r for r in graph.runs}
    items: dict[tuple[str, str], VerifyItem] = {}
    for edge in graph.edges:
        if edge.kind is not EdgeKind.READ:
            continue
        version = by_id.get(edge.target)
        run = runs.get(edge.source)
        if version is None or run is None:
            continue
        key = (version.path, version.digest)
        if key in items:
            continue
        if version.external:
            state, current_digest = VerifyState.UNKNOWN, ""
        else:
            now = store.current_version(version.path)
            if now is None:
                state, current_digest = VerifyState.MISSING, ""
            elif now.digest == version.digest:
                state, current_digest = VerifyState.MATCH, now.digest
            else:
                state, current_digest = VerifyState.CHANGED, now.digest
        items[key] = VerifyItem(
            path=version.path,
            recorded_digest=version.digest,
            state=state,
            current_digest=current_digest,
            version_id=version.id,
            run_id=run.run_id,
            changed_during_run=edge.changed_during_run,
        )
    return sorted(items.values(), key=lambda i: (i.path, i.version_id))


def upstream_digests(conn: sqlite3.Connection, version_ids: Sequence[int]) -> set[bytes]:
    """The digests of these versions and of everything upstream of them (the lineage
    walk, copies bridged by digest), with no depth or node limit."""
    if not version_ids:
        return set()
    rows = conn.execute(
        _WALK_SQL,
        {
            "versions": json.dumps(list(version_ids)),
            "runs": "[]",
            "to_run": EdgeKind.WROTE,
            "from_run": EdgeKind.READ,
            "max_depth": 1_000_000,
            "row_cap": 2**62,
        },
    ).fetchall()
    return {bytes(row[1]) for row in rows if row[0] == "d"}


# One recursive query walks the graph and returns the edges it crosses. Nodes are digests ('d')
# and runs ('r'): going through digests is what bridges copies (same bytes, another path). Each
# row carries the edge it was reached by, so the edges need no second pass; a node reached by
# several edges has a row for each (UNION drops repeated rows, so each is expanded once per
# distinct row). Depth counts run levels; the LIMIT bounds the work.
_WALK_SQL = """
WITH RECURSIVE walk(kind, node, depth, edge) AS (
    SELECT 'd', v.digest, 0, NULL FROM versions v
     WHERE v.id IN (SELECT value FROM json_each(:versions))
    UNION
    SELECT 'r', value, 1, NULL FROM json_each(:runs)
    UNION
    SELECT 'r', e.run_id, w.depth + 1, e.id
      FROM walk w JOIN versions same ON w.kind = 'd' AND same.digest = w.node
      JOIN edges e ON e.version_id = same.id AND e.kind = :to_run
     WHERE w.depth < :max_depth
    UNION
    SELECT 'd', v.digest, w.depth, e.id
      FROM walk w JOIN edges e ON w.kind = 'r' AND e.run_id = w.node AND e.kind = :from_run
      JOIN versions v ON v.id = e.version_id
    LIMIT :row_cap
)
SELECT w.kind, w.node, w.depth, e.run_id, e.version_id, e.kind, e.how, e.role,
       e.changed_during_run
  FROM walk w LEFT JOIN edges e ON e.id = w.edge
"""

# The rows of a walk's nodes in one statement: runs (kind 'r') and versions ('v', digests as
# hex: SQLite makes the strings), each padded to the width of the other.
_NODES_SQL = f"""
SELECT 'r', {_RUN_COLUMNS} FROM runs r LEFT JOIN envs e ON e.id = r.env_id
 WHERE r.id IN (SELECT value FROM json_each(:runs))
UNION ALL
SELECT 'v', v.id, a.path, lower(hex(v.digest)), v.size, v.mtime_ns, v.valid_from,
       v.valid_until, v.seen, v.closed_by, a.root_id IS NULL,
       v.checksum, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
  FROM versions v JOIN artifacts a ON a.id = v.artifact_id
 WHERE v.id IN (SELECT value FROM json_each(:versions))
"""


class _EdgeRow(NamedTuple):
    """An edge as the walk keeps it (a row of ``edges``)."""

    run_id: int  # the run's row id
    version_id: int
    kind: str
    how: str | None
    role: str | None
    changed_during_run: int | None

    @property
    def key(self) -> tuple[int, int, str]:
        """What makes the edge one: run, version and kind."""
        return (self.run_id, self.version_id, self.kind)


class _Walk:
    """One or two walks from the same start, then the graph: nodes loaded in one statement."""

    def __init__(
        self,
        store: Store,
        conn: sqlite3.Connection,
        start_versions: Sequence[Version],
        start_runs: Sequence[Run],
    ) -> None:
        self.store = store
        self.conn = conn
        self.start_versions = list(start_versions)
        self.start_runs = list(start_runs)
        self.truncated = False
        # (run row id, version id, kind) -> the edge; each walk adds the edges it keeps.
        self.edges: dict[tuple[int, int, str], _EdgeRow] = {}
        # Kept edges that are only known to be on the walk once their versions' digests are
        # (a walk cut by max_nodes): (edge, the digests that walk kept).
        self.pending: list[tuple[_EdgeRow, set[bytes]]] = []
        self.run_ids: set[int] = {run.id for run in start_runs}
        self.upstream_runs: set[int] = set()  # runs whose every read edge was crossed

    def walk(self, direction: Direction, *, max_depth: int, max_nodes: int) -> None:
        upstream = direction is Direction.UPSTREAM
        to_run, from_run = (
            (EdgeKind.WROTE, EdgeKind.READ) if upstream else (EdgeKind.READ, EdgeKind.WROTE)
        )
        row_cap = max_nodes * 8 + 64
        rows = self.conn.execute(
            _WALK_SQL,
            {
                "versions": json.dumps([v.id for v in self.start_versions]),
                "runs": json.dumps([r.id for r in self.start_runs]),
                "to_run": to_run,
                "from_run": from_run,
                "max_depth": max_depth,
                "row_cap": row_cap,
            },
        ).fetchall()
        cut = len(rows) >= row_cap
        depths: dict[tuple[str, Any], int] = {}
        for kind, node, depth, *_ in rows:
            known = depths.get((kind, node))
            if known is None or depth < known:
                depths[(kind, node)] = depth
        if len(depths) > max_nodes:
            cut = True
            nearest = sorted(depths, key=depths.__getitem__)[:max_nodes]  # nearest first
            depths = {key: depths[key] for key in nearest}
        runs = {node for kind, node in depths if kind == "r"}
        digests = {node for kind, node in depths if kind == "d"}
        # Each row ends with the edge it crossed, when it crossed one into a kept run.
        crossed = [_EdgeRow(*edge) for _, _, _, *edge in rows if edge[0] in runs]
        if cut:
            self.truncated = True
            # A crossed edge whose version's digest was cut away is off the walk: decided once
            # the versions are loaded.
            self.pending += [(edge, digests) for edge in crossed]
        else:
            for edge in crossed:
                self.edges[edge.key] = edge
        frontier = [
            node for (kind, node), depth in depths.items() if kind == "d" and depth >= max_depth
        ]
        if frontier:
            self._frontier(frontier, to_run, runs)
        self.run_ids |= runs
        if upstream and not cut:
            self.upstream_runs |= runs

    def _frontier(self, digests: list[bytes], to_run: EdgeKind, runs: set[int]) -> None:
        """Digests at the depth limit: edges from runs on the walk into them belong to the
        graph; an edge from any other run means the walk stopped with more beyond."""
        for chunk in _chunks(digests, 500):
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(
                "SELECT e.run_id, e.version_id, e.kind, e.how, e.role, e.changed_during_run "
                f"FROM versions v JOIN edges e ON e.version_id = v.id AND e.kind = ? "
                f"WHERE v.digest IN ({marks})",
                [to_run, *chunk],
            ):
                edge = _EdgeRow(*row)
                if edge.run_id in runs:
                    self.edges[edge.key] = edge
                else:
                    self.truncated = True

    def graph(self) -> Graph:
        version_ids = {edge.version_id for edge in self.edges.values()}
        version_ids |= {edge.version_id for edge, _ in self.pending}
        versions: dict[int, Version] = {v.id: v for v in self.start_versions}
        start_ids = set(versions)
        run_rows: list[Sequence[Any]] = []
        kinds = _CHANGE_KINDS
        for row in self.conn.execute(
            _NODES_SQL,
            {
                "runs": json.dumps(sorted(self.run_ids)),
                "versions": json.dumps(sorted(version_ids - start_ids)),
            },
        ):
            node, *columns = row
            if node == "r":
                run_rows.append(columns)
                continue
            (vid, path, digest, size, mtime_ns, valid_from, valid_until, seen, closed, external,
             checksum, *_) = columns  # fmt: skip
            self.store.verify_row(
                vid, path, bytes.fromhex(digest), size, mtime_ns, valid_from, checksum
            )
            versions[vid] = Version(
                id=vid,
                path=path,
                digest=digest,
                size=size,
                mtime_ns=mtime_ns,
                valid_from=valid_from,
                valid_until=valid_until,
                seen=kinds[seen],
                closed_by=kinds[closed] if closed else None,
                external=bool(external),
            )
        for edge, digests in self.pending:
            version = versions.get(edge.version_id)
            if version is not None and bytes.fromhex(version.digest) in digests:
                self.edges[edge.key] = edge
        kept_ids = {edge.version_id for edge in self.edges.values()} | start_ids
        versions = {vid: versions[vid] for vid in sorted(kept_ids) if vid in versions}
        runs = _decode_runs(run_rows, self._sources(versions))
        runs.sort(key=_ROW_ID)
        run_nodes = {run.id: run_node_id(run.run_id) for run in runs}
        edges = [
            Edge(
                source=run_nodes[run_id],
                target=version_node_id(version_id),
                kind=_EDGE_KINDS[kind],
                how=_ACCESS_HOWS[how],
                role=_ACCESS_ROLES[role],
                changed_during_run=bool(changed),
            )
            for run_id, version_id, kind, how, role, changed in self.edges.values()
            if run_id in run_nodes
        ]
        edges += _bridges(versions, self.edges)
        edges.sort(key=_EDGE_ORDER)
        return Graph(
            versions=tuple(versions.values()),
            runs=tuple(runs),
            edges=tuple(edges),
            truncated=self.truncated,
            start=tuple(
                [version_node_id(v.id) for v in self.start_versions]
                + [run_node_id(r.run_id) for r in self.start_runs]
            ),
        )

    def _sources(self, versions: Mapping[int, Version]) -> dict[int, tuple[SourceFile, ...]]:
        """Each run's code inputs (``CodeState.sources``), by run row id."""
        found: dict[int, list[SourceFile]] = {}
        # An upstream walk crossed every read edge of its runs: their sources are among the
        # kept edges. Other runs' are looked up.
        for run_id, version_id, kind, _, role, _ in self.edges.values():
            if role == AccessRole.CODE and kind == EdgeKind.READ and run_id in self.upstream_runs:
                version = versions[version_id]
                found.setdefault(run_id, []).append(SourceFile(version.path, version.digest))
        others = sorted(self.run_ids - self.upstream_runs)
        if others:
            for (
                run_id,
                vid,
                path,
                digest,
                size,
                mtime_ns,
                valid_from,
                checksum,
            ) in self.conn.execute(
                "SELECT e.run_id, v.id, a.path, v.digest, v.size, v.mtime_ns, v.valid_from, "
                "v.checksum FROM edges e "
                "JOIN versions v ON v.id = e.version_id JOIN artifacts a ON a.id = v.artifact_id "
                "WHERE e.run_id IN (SELECT value FROM json_each(?)) AND e.kind = 'read' "
                "AND e.role = 'code'",
                (json.dumps(others),),
            ):
                self.store.verify_row(vid, path, digest, size, mtime_ns, valid_from, checksum)
                found.setdefault(run_id, []).append(SourceFile(path, digest.hex()))
        return {
            run_id: tuple(sorted(files, key=lambda s: s.path)) for run_id, files in found.items()
        }


_ROW_ID = operator.attrgetter("id")  # a run's row id
_EDGE_ORDER = operator.attrgetter("source", "target", "kind")


def _bridges(
    versions: Mapping[int, Version], kept: Mapping[tuple[int, int, str], object]
) -> list[Edge]:
    """``same_digest`` edges from a version a run wrote to every other version with its bytes,
    written by another run or not (``versions`` in id order: the caps keep the oldest).

    A copy is shown as a copy: the run that wrote X is credited for a version with X's bytes
    only through this edge ("same bytes as X, written by R"), never as its writer; two runs
    that wrote the same bytes are bridged both ways, so every answer (text trace, JSON,
    verify) shows both, each as what it is."""
    written = {version_id for (_, version_id, kind) in kept if kind == EdgeKind.WROTE}
    by_digest: dict[str, list[int]] = {}
    for version in versions.values():
        by_digest.setdefault(version.digest, []).append(version.id)
    bridges: list[Edge] = []
    for group in by_digest.values():
        if len(group) < 2:
            continue
        sources = [v for v in group if v in written][:20]
        for source in sources:
            for target in group[:50]:
                if target != source:
                    bridges.append(
                        Edge(
                            source=version_node_id(source),
                            target=version_node_id(target),
                            kind=EdgeKind.SAME_DIGEST,
                            how=AccessHow.DIGEST,
                        )
                    )
    return bridges
