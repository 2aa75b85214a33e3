"""What each page of ``lineage ui`` shows, as plain JSON-able dicts built from the client.

The same dict feeds the page's HTML (``_pages``), its JSON endpoint (``/api/...``) and, for
graphs, the drawing (embedded in the page as a JSON block). Nothing here talks HTTP.
"""

from __future__ import annotations

import collections
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any
from urllib.parse import urlencode

from lineage_core import limits
from lineage_core.errors import InvalidArgument, NotFound
from lineage_core.models import (
    Direction,
    Graph,
    Run,
    StartNode,
    VerifyState,
    Version,
    run_node_id,
    version_node_id,
)

from lineage_client import render
from lineage_client.client import Client

__all__ = [
    "DEFAULT_DEPTH",
    "DEFAULT_NODES",
    "GraphQuery",
    "graph_query",
    "graph_view",
    "home_view",
    "path_view",
    "run_view",
    "search_view",
]

DEFAULT_DEPTH = limits.DEFAULT_MAX_DEPTH
DEFAULT_NODES = limits.DEFAULT_MAX_NODES
HISTORY_LIMIT = 500  # versions on one /path page; the JSON says when there are more
RECENT_RUNS = 20
_HEX = re.compile(r"[0-9a-fA-F]{8,64}")
_START_KEYS = ("path", "digest", "run", "version")


@dataclass(frozen=True, slots=True)
class GraphQuery:
    """Where a graph page starts and its caps, read from the query string."""

    key: str  # one of _START_KEYS
    value: str
    max_depth: int
    max_nodes: int

    def link(self, page: str, *, max_depth: int | None = None, max_nodes: int | None = None) -> str:
        """The page's deep link, with other caps when given."""
        depth = self.max_depth if max_depth is None else max_depth
        nodes = self.max_nodes if max_nodes is None else max_nodes
        params = {self.key: self.value}
        if depth != DEFAULT_DEPTH:
            params["max_depth"] = str(depth)
        if nodes != DEFAULT_NODES:
            params["max_nodes"] = str(nodes)
        return f"/{page}?{urlencode(params)}"

    def cli_target(self) -> str:
        """How ``lineage trace`` spells this start."""
        if self.key == "version":
            return f"version:{self.value}"
        return self.value


def _cap(params: Mapping[str, str], name: str, default: int, limit: int) -> int:
    text = params.get(name, "")
    if not text:
        return default
    if not text.isdigit() or not 1 <= int(text) <= limit:
        raise InvalidArgument(f"{name} must be a whole number from 1 to {limit}, not {text!r}")
    return int(text)


def graph_query(params: Mapping[str, str]) -> GraphQuery:
    """The start and caps of ``/trace`` and ``/impact``: exactly one of path, digest, run or
    version (``path`` may be ``PATH@TIME``), and optional ``max_depth``/``max_nodes``."""
    given = [key for key in _START_KEYS if params.get(key)]
    if len(given) != 1:
        raise InvalidArgument(
            "name exactly one start: ?path=PATH (or PATH@TIME), ?digest=HEX, ?run=RUN_ID"
            " or ?version=N"
        )
    key = given[0]
    value = params[key].strip()
    if "\x00" in value:
        raise InvalidArgument(f"{key} holds a NUL byte")
    if key == "digest" and not _HEX.fullmatch(value):
        raise InvalidArgument(f"digest must be 8 to 64 hex characters, not {value!r}")
    if key == "version" and not value.isdigit():
        raise InvalidArgument(f"version must be a version number, not {value!r}")
    return GraphQuery(
        key=key,
        value=value.lower() if key == "digest" else value,
        max_depth=_cap(params, "max_depth", DEFAULT_DEPTH, limits.MAX_DEPTH),
        max_nodes=_cap(params, "max_nodes", DEFAULT_NODES, limits.MAX_NODES),
    )


def _capture(run: Run) -> dict[str, Any]:
    """How completely ``lineage run`` saw the run's file accesses ({} when not known)."""
    capture = run.capture
    if capture is None:
        return {}
    found: dict[str, Any] = {"state": "complete" if capture.complete else "partial"}
    if capture.method:
        found["method"] = capture.method
    if capture.reasons:
        found["reasons"] = list(capture.reasons)
    return found


def _partial(capture: Mapping[str, Any]) -> bool:
    return capture.get("state") == "partial"


def _version_node(version: Version) -> dict[str, Any]:
    return {
        "id": version_node_id(version.id),
        "kind": "version",
        "version_id": version.id,
        "path": version.path,
        "digest": version.digest,
        "size": version.size,
        "valid_from": render.rfc3339(version.valid_from),
        "valid_until": render.rfc3339(version.valid_until),
        "seen": str(version.seen),
        "closed_by": str(version.closed_by) if version.closed_by else None,
        "external": version.external,
        "role": "data",
        "copy": False,
        "start": False,
    }


def _run_node(run: Run) -> dict[str, Any]:
    capture = _capture(run)
    code = run.code
    return {
        "id": run_node_id(run.run_id),
        "kind": "run",
        "run_id": run.run_id,
        "name": run.name,
        "status": str(run.status),
        "exit_code": run.exit_code,
        "command": shlex.join(run.argv),
        "cwd": run.cwd,
        "started_at": render.rfc3339(run.started_at),
        "ended_at": render.rfc3339(run.ended_at),
        "commit": code.commit if code else "",
        "branch": code.branch if code else "",
        "dirty": code.dirty if code else False,
        "capture": capture,
        "partial": _partial(capture),
        "warnings": list(run.warnings),
        "start": False,
    }


def _edge(edge: Any) -> dict[str, Any]:
    return {
        "source": edge.source,
        "target": edge.target,
        "kind": str(edge.kind),
        "how": str(edge.how),
        "role": str(edge.role),
        "changed_during_run": edge.changed_during_run,
    }


def _ordered(graph: Graph, nodes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Nodes breadth-first from the start: the order of the text list beside the drawing."""
    neighbours: dict[str, list[str]] = {}
    for edge in graph.edges:
        neighbours.setdefault(edge.source, []).append(edge.target)
        neighbours.setdefault(edge.target, []).append(edge.source)
    order: list[str] = []
    seen: set[str] = set()
    for first in [*graph.start, *nodes]:
        if first in seen or first not in nodes:
            continue
        seen.add(first)
        queue = collections.deque([first])
        while queue:
            node = queue.popleft()
            order.append(node)
            for other in neighbours.get(node, ()):
                if other not in seen and other in nodes:
                    seen.add(other)
                    queue.append(other)
    return [nodes[node] for node in order]


def graph_json(graph: Graph) -> dict[str, Any]:
    """Nodes (versions and runs, marked: start, code input, copy, partial) and edges."""
    nodes: dict[str, dict[str, Any]] = {}
    for version in graph.versions:
        nodes[version_node_id(version.id)] = _version_node(version)
    for run in graph.runs:
        nodes[run_node_id(run.run_id)] = _run_node(run)
    for edge in graph.edges:
        if edge.kind == "read" and edge.role == "code" and edge.target in nodes:
            nodes[edge.target]["role"] = "code"
        if edge.kind == "same_digest" and edge.target in nodes:
            nodes[edge.target]["copy"] = True
    for node in graph.start:
        if node in nodes:
            nodes[node]["start"] = True
    return {
        "nodes": _ordered(graph, nodes),
        "edges": [_edge(edge) for edge in graph.edges],
        "truncated": graph.truncated,
    }


def graph_view(client: Client, direction: Direction, query: GraphQuery) -> dict[str, Any]:
    """``/trace`` (upstream) or ``/impact`` (downstream) of one start."""
    page = "trace" if direction is Direction.UPSTREAM else "impact"
    if query.key == "run":
        target = f"run:{client.get_run(query.value).run_id}"  # a unique prefix is enough
    elif query.key == "digest":
        target = f"digest:{query.value}"
    elif query.key == "version":
        target = f"version:{query.value}"
    else:
        target = query.value
    graph = client.lineage(target, direction, max_depth=query.max_depth, max_nodes=query.max_nodes)
    value = graph_json(graph)
    nodes = value["nodes"]
    roots = sorted(client.roots(), key=lambda root: len(root.path), reverse=True)
    for node in nodes:
        if node["kind"] == "version":
            node["root_role"] = next(
                (
                    str(root.role)
                    for root in roots
                    if node["path"].startswith(root.path.rstrip("/") + "/")
                ),
                None,
            )
    reached = [node for node in nodes if not node["start"]]
    value.update(
        page=page,
        direction=str(direction),
        start={query.key: query.value},
        max_depth=query.max_depth,
        max_nodes=query.max_nodes,
        counts={
            "runs": sum(node["kind"] == "run" for node in reached),
            "versions": sum(node["kind"] == "version" for node in reached),
            "models": sum(node.get("root_role") == "model" for node in reached),
            "code": sum(node.get("role") == "code" for node in nodes),
            "copies": sum(bool(node.get("copy")) for node in nodes),
            "partial_runs": sum(bool(node.get("partial")) for node in nodes),
            "changed_during_run": sum(edge["changed_during_run"] for edge in value["edges"]),
        },
        link=query.link(page),
        expand=(
            query.link(
                page,
                max_depth=min(limits.MAX_DEPTH, query.max_depth * 4),
                max_nodes=min(limits.MAX_NODES, query.max_nodes * 4),
            )
            if graph.truncated
            and (query.max_depth < limits.MAX_DEPTH or query.max_nodes < limits.MAX_NODES)
            else None
        ),
        cli=shlex.join(
            [
                "lineage",
                page,
                query.cli_target(),
                *(["--depth", str(query.max_depth)] if query.max_depth != DEFAULT_DEPTH else []),
                *(
                    ["--max-nodes", str(query.max_nodes)]
                    if query.max_nodes != DEFAULT_NODES
                    else []
                ),
            ]
        ),
    )
    return value


def run_view(client: Client, run_id: str) -> dict[str, Any]:
    """``/run/RUN_ID``: the run, its direct inputs and outputs, and what each input holds now."""
    run = client.get_run(run_id)
    graph = client.lineage(StartNode(run_id=run.run_id), Direction.BOTH, max_depth=1)
    detail = render.run_detail_json(run, graph)
    items = client.verify(StartNode(run_id=run.run_id))
    verify = render.verify_json(run.run_id, items)
    states = {(i.path, i.recorded_digest): str(i.state) for i in items if i.run_id == run.run_id}
    for item in detail["inputs"]:
        item["verify"] = states.get((item["path"], item["digest"]), str(VerifyState.UNKNOWN))
    capture = _capture(run)
    diff = run.code.diff.decode("utf-8", "replace") if run.code and run.code.diff else ""
    detail.update(
        capture=capture,
        partial=_partial(capture),
        diff=diff,
        verify=verify,
        cli=f"lineage show {shlex.quote(run.run_id)} --diff",
    )
    return detail


def path_view(client: Client, path: str, *, limit: int = HISTORY_LIMIT) -> dict[str, Any]:
    """``/path``: every version of one path, newest first (at most ``limit``)."""
    if not path.strip() or "\x00" in path:
        raise InvalidArgument("give a path: /path?path=PATH")
    absolute = os.path.realpath(os.path.expanduser(path))
    versions = list(
        islice(client.iter_history(absolute, page_size=min(limit + 1, 1000)), limit + 1)
    )
    if not versions:
        raise NotFound(f"no versions recorded for {absolute}")
    return {
        "path": absolute,
        "versions": [render.version_json(v) for v in versions[:limit]],
        "more": len(versions) > limit,
        "cli": shlex.join(["lineage", "log", absolute, "--all"]),
    }


def home_view(client: Client) -> dict[str, Any]:
    """``/``: the daemon's status and the most recent runs."""
    status = client.status()
    runs = list(client.iter_runs(limit=RECENT_RUNS))
    return {
        "status": render.status_json(status),
        "runs": [
            {
                "run_id": run.run_id,
                "name": run.name,
                "status": str(run.status),
                "exit_code": run.exit_code,
                "started_at": render.rfc3339(run.started_at),
                "ended_at": render.rfc3339(run.ended_at),
                "command": shlex.join(run.argv),
                "partial": _partial(_capture(run)),
            }
            for run in runs
        ],
    }


def search_view(client: Client, text: str) -> dict[str, Any]:
    """Where a search for a path, a digest (prefix) or a run id (prefix) leads."""
    query = text.strip()
    if not query:
        raise InvalidArgument("type a path, a digest prefix (8+ hex) or a run id")
    last: NotFound | None = None
    for node in client.resolve(query):
        try:
            if node.run_id:
                run = client.get_run(node.run_id)
                return {"kind": "run", "url": f"/run/{run.run_id}"}
            if node.digest:
                client.find_digest(node.digest, page_size=1)
                return {"kind": "digest", "url": "/trace?" + urlencode({"digest": node.digest})}
            if node.version_id:
                client.get_version(node.version_id)
                return {"kind": "version", "url": f"/trace?version={node.version_id}"}
            if node.at is None:
                client.history(node.path, page_size=1)
            return {"kind": "path", "url": "/trace?" + urlencode({"path": query})}
        except NotFound as exc:
            last = exc
    raise NotFound(
        f"nothing recorded matches {query!r}" + (f" ({last.message})" if last is not None else "")
    )
