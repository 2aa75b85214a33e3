"""What the ``lineage`` CLI prints: human tables and trees, stable ``--json`` objects, dot, mermaid.

The ``*_json`` functions define the documented ``--json`` keys (docs/json.md); change
them only together with docs/json.md. Times in JSON are RFC 3339 UTC strings (microseconds), or
null; digests are full 64-hex strings.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lineage_core.models import (
    Capture,
    CodeState,
    Direction,
    Edge,
    EnvState,
    GcReport,
    Graph,
    PinReport,
    Run,
    Status,
    VerifyItem,
    VerifyState,
    Version,
    run_node_id,
    version_node_id,
)

from lineage_client._terminal import escape

if TYPE_CHECKING:
    from lineage_client.reproduce import Checkout, Reproduction, Restored

__all__ = [
    "checkout_json",
    "checkout_text",
    "dumps",
    "gc_json",
    "gc_text",
    "graph_dot",
    "graph_json",
    "graph_mermaid",
    "graph_tree",
    "pin_json",
    "pin_text",
    "reproduction_json",
    "reproduction_text",
    "restored_json",
    "restored_text",
    "rfc3339",
    "run_detail_json",
    "run_detail_text",
    "run_json",
    "runs_table",
    "short",
    "status_json",
    "status_text",
    "verify_json",
    "verify_text",
    "version_json",
    "versions_table",
]

SHORT_DIGEST = 12


# --- small formatters --------------------------------------------------------------------


def rfc3339(ns: int | None) -> str | None:
    """RFC 3339 UTC with microseconds (``2024-05-01T14:02:03.123456Z``), or None."""
    if ns is None:
        return None
    seconds, rest = divmod(ns, 1_000_000_000)
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
        seconds=seconds, microseconds=rest // 1000
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def local(ns: int | None) -> str:
    """A local time for people: ``2024-05-01 16:02:03``; ``-`` for none."""
    if not ns:
        return "-"
    return dt.datetime.fromtimestamp(ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def short(digest: str, full: bool = False) -> str:
    """The first 12 hex characters of a digest (all 64 with ``full``)."""
    return digest if full or not digest else digest[:SHORT_DIGEST]


def human_size(size: int) -> str:
    """Bytes in binary units: ``1.5 MiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - the loop always returns


def duration(seconds: float) -> str:
    """``3d 04h``, ``2h 05m``, ``42s``."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def table(header: Sequence[str] | None, rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    rows = [*([list(header)] if header else []), *(list(row) for row in rows)]
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row))
        for row in rows
    )


def dumps(value: Any) -> str:
    """The JSON text the CLI prints (indented, keys in definition order)."""
    return json.dumps(value, indent=2)


# --- JSON objects ------------------------------------------------------------------------


def version_json(version: Version) -> dict[str, Any]:
    """A version in listings (``log``, ``where``)."""
    return {
        "id": version_node_id(version.id),
        "version_id": version.id,
        "path": version.path,
        "digest": version.digest,
        "size": version.size,
        "mtime": rfc3339(version.mtime_ns),
        "valid_from": rfc3339(version.valid_from),
        "valid_until": rfc3339(version.valid_until),
        "seen": str(version.seen),
        "closed_by": str(version.closed_by) if version.closed_by else None,
        "external": version.external,
    }


def code_json(code: CodeState | None, *, detail: bool = False) -> dict[str, Any] | None:
    """A run's code state; ``detail`` adds the diff's size, truncation and untracked files."""
    if code is None:
        return None
    value: dict[str, Any] = {
        "commit": code.commit,
        "branch": code.branch,
        "remote": code.remote,
        "dirty": code.dirty,
        "diff_digest": code.diff_digest,
        "sources": [{"path": s.path, "digest": s.digest} for s in code.sources],
    }
    if detail:
        value["diff_size"] = code.diff_size
        value["diff_truncated"] = code.diff_truncated
        value["untracked"] = list(code.untracked)
    return value


def env_json(env: EnvState | None) -> dict[str, Any] | None:
    """A run's environment fingerprint."""
    if env is None:
        return None
    return {
        "python_version": env.python_version,
        "implementation": env.implementation,
        "platform": env.platform,
        "packages_digest": env.packages_digest,
        "packages": list(env.packages),
        "variables": dict(env.variables),
    }


def capture_json(capture: Capture | None) -> dict[str, Any] | None:
    """How completely a run was captured (None: not known, e.g. a declared run)."""
    if capture is None:
        return None
    return {
        "state": "complete" if capture.complete else "partial",
        "complete": capture.complete,
        "reasons": list(capture.reasons),
        "method": capture.method,
    }


def capture_word(capture: Capture | None) -> str:
    """``complete``, ``partial`` or ``-`` (not known)."""
    if capture is None:
        return "-"
    return "complete" if capture.complete else "partial"


def run_json(run: Run) -> dict[str, Any]:
    """A run in ``runs`` and ``show``."""
    return {
        "id": run_node_id(run.run_id),
        "run_id": run.run_id,
        "name": run.name,
        "status": str(run.status),
        "exit_code": run.exit_code,
        "argv": list(run.argv),
        "cwd": run.cwd,
        "host": run.host,
        "user": run.user,
        "pid": run.pid,
        "started_at": rfc3339(run.started_at),
        "ended_at": rfc3339(run.ended_at),
        "params": dict(run.params),
        "parent_run_id": run.parent_run_id or None,
        "warnings": list(run.warnings),
        "code": code_json(run.code, detail=True),
        "env": env_json(run.env),
        "capture": capture_json(run.capture),
    }


def _version_node(version: Version) -> dict[str, Any]:
    return {
        "id": version_node_id(version.id),
        "kind": "version",
        "path": version.path,
        "digest": version.digest,
        "size": version.size,
        "valid_from": rfc3339(version.valid_from),
        "valid_until": rfc3339(version.valid_until),
    }


def _run_node(run: Run) -> dict[str, Any]:
    return {
        "id": run_node_id(run.run_id),
        "kind": "run",
        "run_id": run.run_id,
        "name": run.name,
        "argv": list(run.argv),
        "cwd": run.cwd,
        "started_at": rfc3339(run.started_at),
        "ended_at": rfc3339(run.ended_at),
        "exit_code": run.exit_code,
        "status": str(run.status),
        "code": code_json(run.code),
        "env": env_json(run.env),
        "capture": capture_json(run.capture),
    }


def _edge(edge: Edge) -> dict[str, Any]:
    value: dict[str, Any] = {
        "source": edge.source,
        "target": edge.target,
        "kind": str(edge.kind),
    }
    if edge.kind == "read":
        value["changed_during_run"] = edge.changed_during_run
    return value


def graph_json(graph: Graph) -> dict[str, Any]:
    """``trace``/``impact --json``: exactly ``nodes``, ``edges`` and ``truncated``."""
    nodes = [_version_node(v) for v in graph.versions] + [_run_node(r) for r in graph.runs]
    return {"nodes": nodes, "edges": [_edge(e) for e in graph.edges], "truncated": graph.truncated}


def status_json(status: Status, *, now: int | None = None) -> dict[str, Any]:
    """``status --json``."""
    current = time.time_ns() if now is None else now
    scan = status.scan
    return {
        "version": status.version,
        "pid": status.pid,
        "started_at": rfc3339(status.started_at),
        "uptime_seconds": max(0, (current - status.started_at) // 1_000_000_000),
        "serving": status.serving,
        "state_dir": status.state_dir,
        "socket": status.socket,
        "roots": [
            {
                "path": root.path,
                "role": str(root.role),
                "health": root.health,
                "polling": root.polling,
                "ignore": list(root.ignore),
            }
            for root in status.roots
        ],
        "counts": {
            "roots": status.counts.roots,
            "artifacts": status.counts.artifacts,
            "versions": status.counts.versions,
            "runs": status.counts.runs,
            "edges": status.counts.edges,
        },
        "scan": {
            "running": scan.running,
            "initial_done": scan.initial_done,
            "files_seen": scan.files_seen,
            "files_hashed": scan.files_hashed,
            "bytes_hashed": scan.bytes_hashed,
            "started_at": rfc3339(scan.started_at or None),
            "finished_at": rfc3339(scan.finished_at or None),
            "scans_completed": scan.scans_completed,
        },
        "queue_depth": status.queue_depth,
        "degraded": list(status.degraded),
        "openlineage": {
            "transport": status.openlineage or None,
            "backlog": status.openlineage_backlog,
            "last_error": status.openlineage_error or None,
        },
    }


def verify_json(
    target: str, items: Sequence[VerifyItem], *, target_gone: str = ""
) -> dict[str, Any]:
    """``verify --json``: ``ok`` is false when an input changed or is missing, or when the
    target itself no longer exists (``target_exists``)."""
    return {
        "target": target,
        "target_exists": not target_gone,
        "ok": not target_gone
        and all(i.state not in (VerifyState.CHANGED, VerifyState.MISSING) for i in items),
        "items": [
            {
                "path": i.path,
                "state": str(i.state),
                "recorded_digest": i.recorded_digest,
                "current_digest": i.current_digest or None,
                "version_id": i.version_id or None,
                "run_id": i.run_id or None,
                "changed_during_run": i.changed_during_run,
            }
            for i in items
        ],
    }


def _split_io(
    run_id: str, graph: Graph
) -> tuple[list[tuple[Version, Edge]], list[tuple[Version, Edge]]]:
    versions = {version_node_id(v.id): v for v in graph.versions}
    node = run_node_id(run_id)
    inputs: list[tuple[Version, Edge]] = []
    outputs: list[tuple[Version, Edge]] = []
    for edge in graph.edges:
        version = versions.get(edge.target)
        if edge.source != node or version is None:
            continue
        (inputs if edge.kind == "read" else outputs).append((version, edge))
    return inputs, outputs


def run_detail_json(run: Run, graph: Graph, children: Sequence[Run] = ()) -> dict[str, Any]:
    """``show --json``: the run plus its direct inputs and outputs and its nested runs."""
    inputs, outputs = _split_io(run.run_id, graph)

    def io(pairs: list[tuple[Version, Edge]]) -> list[dict[str, Any]]:
        return [
            {
                **version_json(version),
                "how": str(edge.how),
                "role": str(edge.role),
                "changed_during_run": edge.changed_during_run,
            }
            for version, edge in pairs
        ]

    return {
        "run": run_json(run),
        "inputs": io(inputs),
        "outputs": io(outputs),
        "children": [
            {"run_id": c.run_id, "name": c.name, "status": str(c.status)} for c in children
        ],
    }


# --- human text --------------------------------------------------------------------------


def _openlineage_lines(status: Status) -> list[str]:
    if not status.openlineage:
        return []
    line = f"openlineage  {status.openlineage}, {status.openlineage_backlog} events waiting"
    error = f"openlineage  last error: {status.openlineage_error}"
    return [line, error] if status.openlineage_error else [line]


def status_text(status: Status, *, now: int | None = None) -> str:
    """``lineage status``."""
    current = time.time_ns() if now is None else now
    scan = status.scan
    if scan.running:
        scan_line = f"running: {scan.files_seen} files seen, {scan.files_hashed} hashed"
    elif scan.initial_done:
        scan_line = (
            f"idle, {scan.scans_completed} completed, last finished {local(scan.finished_at)}"
        )
    else:
        scan_line = "initial scan not done yet"
    counts = status.counts
    lines = [
        f"lineaged {status.version}  pid {status.pid}  up"
        f" {duration((current - status.started_at) / 1e9)}"
        f"  {'serving' if status.serving else 'starting (initial scan)'}",
        f"state   {escape(status.state_dir)}",
        f"socket  {escape(status.socket)}",
        f"store   {counts.artifacts} files, {counts.versions} versions, {counts.runs} runs,"
        f" {counts.edges} edges",
        f"scan    {scan_line} ({human_size(scan.bytes_hashed)} hashed)",
        f"queue   {status.queue_depth}",
        *_openlineage_lines(status),
        "roots",
    ]
    rows = [
        (
            "  " + str(root.role),
            escape(root.path),
            escape(root.health) + (" (polling)" if root.polling else ""),
        )
        for root in status.roots
    ]
    lines.append(table(None, rows) if rows else "  (none)")
    lines.extend(f"degraded: {escape(reason)}" for reason in status.degraded)
    return "\n".join(lines)


def versions_table(
    versions: Sequence[Version], *, full: bool = False, with_path: bool = False
) -> str:
    """``lineage log`` / ``lineage where``."""
    header = [
        "VERSION",
        *(["PATH"] if with_path else []),
        "FROM",
        "UNTIL",
        "SIZE",
        "DIGEST",
        "SEEN",
    ]
    rows = [
        [
            str(v.id),
            *([escape(v.path)] if with_path else []),
            local(v.valid_from),
            local(v.valid_until) if v.valid_until is not None else "now",
            human_size(v.size),
            short(v.digest, full),
            str(v.seen) + (f"/{v.closed_by}" if v.closed_by else ""),
        ]
        for v in versions
    ]
    return table(header, rows)


def _short_id(run_id: str, full: bool) -> str:
    return run_id if full else run_id[:SHORT_DIGEST]


def runs_table(runs: Sequence[Run], *, full: bool = False) -> str:
    """``lineage runs``."""
    rows = [
        [
            _short_id(r.run_id, full),
            escape(r.name),
            str(r.status) + ("" if r.exit_code is None else f" ({r.exit_code})"),
            local(r.started_at),
            duration((r.ended_at - r.started_at) / 1e9) if r.ended_at else "-",
            capture_word(r.capture),
            escape(shlex.join(r.argv))[:60],
        ]
        for r in runs
    ]
    return table(["RUN", "NAME", "STATUS", "STARTED", "TOOK", "CAPTURE", "COMMAND"], rows)


def _code_line(code: CodeState | None, full: bool) -> str:
    if code is None:
        return "code    unknown"
    if not code.commit:
        git = "not a git work tree"
    else:
        git = f"{code.commit if full else code.commit[:12]}"
        git += f" ({escape(code.branch)})" if code.branch else " (detached)"
        if code.dirty:
            git += f" dirty, diff {short(code.diff_digest, full)}"
    return f"code    {git}, {len(code.sources)} source files"


def _env_line(env: EnvState | None, full: bool) -> str:
    if env is None:
        return "env     unknown"
    return (
        f"env     {escape(env.implementation)} {escape(env.python_version)}"
        f" on {escape(env.platform)},"
        f" {len(env.packages)} packages {short(env.packages_digest, full)}"
    )


def _capture_lines(capture: Capture | None) -> list[str]:
    if capture is None:
        return ["capture unknown (not traced by lineage run)"]
    method = f" ({capture.method})" if capture.method else ""
    if capture.complete:
        return [f"capture complete{method}"]
    return [f"capture partial{method}", *(f"  - {escape(reason)}" for reason in capture.reasons)]


def run_detail_text(
    run: Run,
    graph: Graph,
    *,
    full: bool = False,
    diff: bool = False,
    children: Sequence[Run] = (),
) -> str:
    """``lineage show RUN``."""
    lines = [
        f"run     {run.run_id}  {escape(run.name)}",
        f"status  {run.status}" + ("" if run.exit_code is None else f" (exit {run.exit_code})"),
        f"started {local(run.started_at)}  ended {local(run.ended_at)}",
        f"command {escape(shlex.join(run.argv))}",
        f"cwd     {escape(run.cwd)}",
        f"by      {escape(run.user)}@{escape(run.host)} pid {run.pid}",
        _code_line(run.code, full),
        _env_line(run.env, full),
        *_capture_lines(run.capture),
    ]
    if run.parent_run_id:
        lines.append(f"parent  {escape(run.parent_run_id)}")
    lines.extend(
        f"params  {escape(key)}={escape(value)}" for key, value in sorted(run.params.items())
    )
    lines.extend(f"warning {escape(warning)}" for warning in run.warnings)
    inputs, outputs = _split_io(run.run_id, graph)
    for title, pairs in (("inputs", inputs), ("outputs", outputs)):
        lines.append(f"{title} ({len(pairs)})")
        for version, edge in sorted(pairs, key=lambda pair: pair[0].path):
            note = " (changed during the run)" if edge.changed_during_run else ""
            lines.append(
                f"  {short(version.digest, full)}  {escape(version.path)}  [{edge.how}]{note}"
            )
    if children:
        # Nested runs (lineage run inside lineage run): their I/O is theirs, not this run's.
        lines.append(f"children ({len(children)})")
        lines.extend(
            f"  run {_short_id(c.run_id, full)} {escape(c.name)!r} {c.status}"
            + ("" if c.exit_code is None else f" exit {c.exit_code}")
            for c in sorted(children, key=lambda c: (c.started_at, c.run_id))
        )
    if diff and run.code is not None and run.code.diff:
        text = run.code.diff.decode("utf-8", "replace").rstrip("\n")
        lines.extend(["diff", *(escape(line) for line in text.split("\n"))])
    return "\n".join(lines)


def verify_text(items: Sequence[VerifyItem], *, full: bool = False, target_gone: str = "") -> str:
    """``lineage verify``: one line per input, then a summary (``target_gone``: the path of
    a target that no longer exists, said first and last)."""
    if target_gone:
        gone = f"the target {target_gone} no longer exists"
        body = verify_text(items, full=full).rsplit("\n", 1)[0] if items else ""
        heading = f"{gone}; the inputs of its last recorded version:"
        return "\n".join(
            [heading, body, gone] if body else [gone + " (no recorded inputs upstream)"]
        )
    if not items:
        return "no recorded inputs upstream"
    rows = [
        [
            str(i.state).upper(),
            escape(i.path),
            short(i.recorded_digest, full),
            short(i.current_digest, full) if i.state is VerifyState.CHANGED else "",
        ]
        for i in items
    ]
    bad = sum(i.state in (VerifyState.CHANGED, VerifyState.MISSING) for i in items)
    summary = "all inputs match" if not bad else f"{bad} of {len(items)} inputs changed or missing"
    return table(["STATE", "PATH", "RECORDED", "NOW"], rows) + "\n" + summary


# --- graphs ------------------------------------------------------------------------------


def _version_label(version: Version, full: bool) -> str:
    until = "" if version.valid_until is None else f" until {local(version.valid_until)}"
    return (
        f"{escape(version.path)}  {short(version.digest, full)}  {human_size(version.size)}"
        f"  [version {version.id}, {local(version.valid_from)}{until}]"
    )


def _run_label(run: Run, full: bool) -> str:
    exit_text = "" if run.exit_code is None else f" exit {run.exit_code}"
    commit = (
        f"  @{run.code.commit[:12]}{'+dirty' if run.code.dirty else ''}"
        if run.code and run.code.commit
        else ""
    )
    partial = "  [capture partial]" if run.capture is not None and not run.capture.complete else ""
    return (
        f"run {_short_id(run.run_id, full)} {escape(repr(run.name))} {run.status}{exit_text}"
        f"{partial}  {local(run.started_at)}{commit}  $ {escape(shlex.join(run.argv))[:80]}"
    )


def graph_tree(graph: Graph, direction: Direction, *, full: bool = False) -> str:
    """An indented tree from the start node(s): upstream, downstream, or both one after the other."""
    if direction is Direction.BOTH:
        return "\n".join(
            [
                "upstream:",
                graph_tree(graph, Direction.UPSTREAM, full=full),
                "downstream:",
                graph_tree(graph, Direction.DOWNSTREAM, full=full),
            ]
        )
    versions = {version_node_id(v.id): v for v in graph.versions}
    runs = {run_node_id(r.run_id): r for r in graph.runs}
    # Upstream: a version's children are the runs that wrote it, a run's the versions it read.
    version_edge, run_edge = (
        ("wrote", "read") if direction is Direction.UPSTREAM else ("read", "wrote")
    )
    children: dict[str, list[tuple[str, Edge]]] = {}
    upstream = direction is Direction.UPSTREAM
    for edge in graph.edges:
        if edge.kind == version_edge:
            children.setdefault(edge.target, []).append((edge.source, edge))
        if edge.kind == run_edge:
            children.setdefault(edge.source, []).append((edge.target, edge))
        if edge.kind == "same_digest":
            # Upstream, a version's bytes came from the written version they equal; downstream,
            # a written version's bytes live on in its copies. Never shown as written by its run.
            if upstream:
                children.setdefault(edge.target, []).append((edge.source, edge))
            else:
                children.setdefault(edge.source, []).append((edge.target, edge))
    starts = [node for node in graph.start if node in versions or node in runs]
    if not starts:
        reached = {child for kids in children.values() for child, _ in kids}
        starts = [node for node in (*versions, *runs) if node not in reached]
    if direction is Direction.UPSTREAM:
        verbs = {"version": "written by", "run": "read"}
    else:
        verbs = {"version": "read by", "run": "wrote"}
    lines: list[str] = []
    seen: set[str] = set()

    def label(node: str) -> str:
        if node in versions:
            return _version_label(versions[node], full)
        if node in runs:
            return _run_label(runs[node], full)
        return node

    def walk(node: str, prefix: str) -> None:
        kids = sorted(children.get(node, []), key=lambda kid: label(kid[0]))
        # A copy already on the tree adds nothing (copies are bridged both ways).
        kids = [kid for kid in kids if not (kid[1].kind == "same_digest" and kid[0] in seen)]
        for index, (child, edge) in enumerate(kids):
            last = index == len(kids) - 1
            verb = verbs["version" if node in versions else "run"]
            if edge.kind == "same_digest":
                verb = "same bytes as" if upstream else "same bytes at"
            note = " (changed during the run)" if edge.changed_during_run else ""
            repeat = " (see above)" if child in seen else ""
            lines.append(f"{prefix}{'└─ ' if last else '├─ '}{verb} {label(child)}{note}{repeat}")
            if child not in seen:
                seen.add(child)
                walk(child, prefix + ("   " if last else "│  "))

    for start in starts:
        seen.add(start)
        lines.append(label(start))
        walk(start, "")
    if not lines:
        lines.append("(no lineage)")
    if graph.truncated:
        lines.append("(truncated: raise --depth or --max-nodes to see more)")
    return "\n".join(lines)


def _nodes(graph: Graph, full: bool) -> list[tuple[str, str, str]]:
    """(node id, kind, label) for every node."""
    return [
        (version_node_id(v.id), "version", f"{escape(v.path)}\n{short(v.digest, full)}")
        for v in graph.versions
    ] + [
        (
            run_node_id(r.run_id),
            "run",
            f"{escape(r.name)} ({r.status})\nrun {_short_id(r.run_id, full)}",
        )
        for r in graph.runs
    ]


def _flow(edge: Edge) -> tuple[str, str]:
    """Draw edges the way data flows: input version -> run -> output version."""
    return (edge.target, edge.source) if edge.kind == "read" else (edge.source, edge.target)


def graph_dot(graph: Graph, *, full: bool = False) -> str:
    """Graphviz dot; data flows left to right."""
    lines = ["digraph lineage {", "  rankdir=LR;"]
    for node, kind, text in _nodes(graph, full):
        shape = "box" if kind == "version" else "ellipse"
        lines.append(f"  {json.dumps(node)} [shape={shape}, label={json.dumps(text)}];")
    for edge in graph.edges:
        source, target = _flow(edge)
        style = ", color=red" if edge.changed_during_run else ""
        lines.append(
            f"  {json.dumps(source)} -> {json.dumps(target)} [label={json.dumps(edge.kind)}{style}];"
        )
    lines.append("}")
    return "\n".join(lines)


def graph_mermaid(graph: Graph, *, full: bool = False) -> str:
    """A mermaid flowchart; data flows left to right."""
    ids: Mapping[str, str] = {node: f"n{i}" for i, (node, _, _) in enumerate(_nodes(graph, full))}
    lines = ["flowchart LR"]
    for node, kind, text in _nodes(graph, full):
        escaped = text.replace('"', "#quot;").replace("\n", "<br/>")
        lines.append(
            f'  {ids[node]}["{escaped}"]' if kind == "version" else f'  {ids[node]}(["{escaped}"])'
        )
    for edge in graph.edges:
        source, target = _flow(edge)
        if source in ids and target in ids:
            lines.append(f"  {ids[source]} -->|{edge.kind}| {ids[target]}")
    return "\n".join(lines)


# --- content store: pin, gc, restore, checkout, reproduce (docs/reproduce.md) --------------


def pin_json(report: PinReport) -> dict[str, Any]:
    """``lineage pin --json``."""
    return {
        "pinned": [version_json(v) for v in report.pinned],
        "upstream_versions": report.upstream_versions,
        "upstream_kept": report.upstream_kept,
    }


def pin_text(report: PinReport, *, full: bool = False) -> str:
    """``lineage pin``."""
    lines = [f"pinned {v.path} @ {short(v.digest, full)}" for v in report.pinned]
    lines.append(
        f"{report.upstream_versions} versions upstream (pins included), "
        f"{report.upstream_kept} of them with their bytes kept"
    )
    return "\n".join(lines)


def gc_json(report: GcReport) -> dict[str, Any]:
    """``lineage gc --json``."""
    return {
        "dry_run": report.dry_run,
        "freed_objects": report.freed_objects,
        "freed_bytes": report.freed_bytes,
        "kept_objects": report.kept_objects,
        "kept_bytes": report.kept_bytes,
        "protected_objects": report.protected_objects,
        "freed": list(report.freed),
    }


def gc_text(report: GcReport) -> str:
    """``lineage gc``."""
    verb = "would free" if report.dry_run else "freed"
    return (
        f"{verb} {report.freed_objects} objects ({human_size(report.freed_bytes)}); "
        f"kept {report.kept_objects} ({human_size(report.kept_bytes)}), "
        f"{report.protected_objects} of them upstream of a pin"
    )


def restored_json(restored: Restored) -> dict[str, Any]:
    """``lineage restore --json``."""
    return {
        "path": restored.path,
        "version": version_json(restored.version),
        "bytes": restored.size,
        "unchanged": restored.unchanged,
    }


def restored_text(restored: Restored, *, full: bool = False) -> str:
    """``lineage restore``."""
    version = restored.version
    what = (
        f"version {version.id} of {version.path} ({short(version.digest, full)}, "
        f"{human_size(version.size)}, from {local(version.valid_from)})"
    )
    if restored.unchanged:
        return f"{restored.path} already holds {what}; nothing written"
    return f"restored {what} to {restored.path}"


def checkout_json(done: Checkout) -> dict[str, Any]:
    """``lineage checkout --json``."""
    return {
        "run_id": done.run.run_id,
        "directory": done.directory,
        "workdir": done.workdir,
        "code": done.code,
        "files": [{"path": path, "digest": digest} for path, digest in done.files],
        "outside": list(done.outside),
        "missing": [{"path": m.path, "reason": m.reason} for m in done.missing],
    }


def checkout_text(done: Checkout) -> str:
    """``lineage checkout``."""
    lines = [
        f"checked out run {done.run.run_id} in {done.directory}",
        f"  code: {done.code or 'not materialised'}",
        f"  inputs restored: {len(done.files)}",
        f"  inputs outside the run's tree, unchanged, used in place: {len(done.outside)}",
        f"  run it from: {done.workdir}",
    ]
    if done.missing:
        lines.append("could not materialise:")
        lines += [f"  {m.path}: {m.reason}" for m in done.missing]
    return "\n".join(lines)


def reproduction_json(result: Reproduction) -> dict[str, Any]:
    """``lineage reproduce --json``."""
    return {
        "verdict": result.verdict,
        "run_id": result.run_id,
        "new_run_id": result.new_run_id or None,
        "directory": result.directory,
        "exit_code": result.exit_code,
        "original_exit_code": result.original_exit_code,
        "outputs": [
            {
                "path": c.path,
                "old_digest": c.old_digest,
                "new_digest": c.new_digest or None,
                "identical": c.identical,
            }
            for c in result.outputs
        ],
        "environment": result.environment,
        "missing": [{"path": m.path, "reason": m.reason} for m in result.missing],
    }


def reproduction_text(result: Reproduction, *, full: bool = False) -> str:
    """``lineage reproduce``."""
    lines = [f"{result.verdict}: run {_short_id(result.run_id, full)}"]
    if result.new_run_id:
        lines[0] += f" re-ran as {_short_id(result.new_run_id, full)} in {result.directory}"
    if result.verdict == "cannot":
        lines.append("missing:")
        lines += [f"  {m.path}: {m.reason}" for m in result.missing]
        return "\n".join(lines)
    if result.exit_code != result.original_exit_code:
        lines.append(f"exit status: {result.original_exit_code} -> {result.exit_code}")
    for c in result.outputs:
        mark = "=" if c.identical else "!"
        new = short(c.new_digest, full) if c.new_digest else "(not written)"
        lines.append(f"  {mark} {c.path}: {short(c.old_digest, full)} -> {new}")
    for aspect, change in result.environment.items():
        lines.append(f"  environment {aspect}: {json.dumps(change, sort_keys=True)}")
    return "\n".join(lines)
