"""The HTML of ``lineage ui``'s pages, from the dicts of ``_views``.

Every value from the store reaches the HTML through ``esc`` (``html.escape``): file names may
hold markup. Pages carry no inline script or style (the Content-Security-Policy forbids them);
a graph page embeds its data as a JSON block that ``app.js`` reads with ``JSON.parse``.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from lineage_client import render
from lineage_client.ui._assets import asset_url

__all__ = [
    "DRAW_LIMIT",
    "error_page",
    "graph_page",
    "home_page",
    "path_page",
    "run_page",
]


DRAW_LIMIT = 4000  # nodes drawn at once; a bigger graph is drawn when asked (about 1 s a 1,000)


def esc(value: object) -> str:
    """``value`` as HTML text or attribute content."""
    return html.escape(str(value), quote=True)


def _time(text: str | None) -> str:
    """An RFC 3339 time from a view as ``YYYY-MM-DD HH:MM:SS`` local, in a <time> element."""
    if not text:
        return "-"
    moment = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    shown = moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return f'<time datetime="{esc(text)}">{esc(shown)}</time>'


def _copy(text: str, css: str = "digest") -> str:
    """Text in <code> with a copy button after it."""
    return (
        f'<code class="{css}">{esc(text)}</code> '
        f'<button type="button" class="copy" data-copy="{esc(text)}">copy</button>'
    )


def _count(number: int, one: str, many: str = "") -> str:
    return f"{number} {one if number == 1 else (many or one + 's')}"


def _exit(code: int | None) -> str:
    return "" if code is None else f" (exit {code})"


def _link(page: str, **params: object) -> str:
    return f"/{page}?{urlencode({key: str(value) for key, value in params.items()})}"


def _run_link(run_id: str) -> str:
    return "/run/" + quote(run_id, safe="")


def _data_block(data: Mapping[str, Any]) -> str:
    """``data`` as a JSON block that cannot end the script element or open markup."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(raw, escaped)
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return f'<script type="application/json" id="lineage-data">{text}</script>'


def layout(title: str, body: str, *, data: Mapping[str, Any] | None = None, query: str = "") -> str:
    """A whole page: header with the search box, the body, the data block and the bundle."""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{esc(title)} \u00b7 lineage</title>
<link rel="stylesheet" href="{esc(asset_url("style.css"))}">
<script src="{esc(asset_url("app.js"))}" defer></script>
</head>
<body>
<header class="top">
<a class="brand" href="/">lineage</a>
<form action="/search" method="get" role="search">
<label for="q" class="hint">Find</label>
<input type="search" id="q" name="q" value="{esc(query)}" placeholder="a path, a digest prefix or a run id" autocomplete="off">
<button type="submit">Go</button>
</form>
</header>
<main>
{body}
</main>
{_data_block(data) if data is not None else ""}
</body>
</html>
"""


def _cli(command: str) -> str:
    return f'<p class="cli">In a terminal: {_copy(command, "command")}</p>'


# --- graphs ------------------------------------------------------------------------------


def _version_item(node: Mapping[str, Any]) -> str:
    if node["role"] == "code":
        kind = "code"
    elif node["copy"]:
        kind = "copy"
    else:
        kind = "model" if node.get("root_role") == "model" else "data"
    until = "now" if node["valid_until"] is None else _time(node["valid_until"])
    marks = " <strong>(start)</strong>" if node["start"] else ""
    marks += " (outside every root)" if node["external"] else ""
    return (
        f'<span class="kind">{kind}</span> '
        f'<a class="path" href="{esc(_link("path", path=node["path"]))}">{esc(node["path"])}</a>{marks}'
        f" \u2014 {_copy(node['digest'])} {esc(render.human_size(node['size']))},"
        f" version {node['version_id']}, {_time(node['valid_from'])} \u2192 {until}"
    )


def _run_item(node: Mapping[str, Any]) -> str:
    exit_text = "" if node["exit_code"] is None else f" (exit {node['exit_code']})"
    partial = ' <span class="partial">partial capture</span>' if node["partial"] else ""
    marks = " <strong>(start)</strong>" if node["start"] else ""
    return (
        f'<span class="kind">run</span> <a href="{esc(_run_link(node["run_id"]))}">'
        f"{esc(node['name'] or '(unnamed)')}</a>{marks} {esc(node['status'])}{exit_text}{partial}"
        f" \u2014 {_copy(node['run_id'], 'runid')} <code>{esc(node['command'])}</code>"
    )


def _node_list(view: Mapping[str, Any]) -> str:
    nodes = {node["id"]: node for node in view["nodes"]}
    io: dict[str, list[str]] = {}
    for edge in view["edges"]:
        if edge["kind"] in ("read", "wrote") and edge["target"] in nodes:
            version = nodes[edge["target"]]
            note = (
                ' <span class="changed-note">changed during the run</span>'
                if edge["changed_during_run"]
                else ""
            )
            verb = "read" if edge["kind"] == "read" else "wrote"
            io.setdefault(edge["source"], []).append(
                f"<li>{verb} {esc(version['path'])} <code>{esc(version['digest'][:12])}</code>"
                f" ({esc(edge['how'])}, {esc(edge['role'])}){note}</li>"
            )
        elif edge["kind"] == "same_digest" and edge["source"] in nodes:
            io.setdefault(edge["target"], []).append(
                f"<li>a copy of {esc(nodes[edge['source']]['path'])} (same bytes)</li>"
            )
    items = []
    for node in view["nodes"]:
        text = _version_item(node) if node["kind"] == "version" else _run_item(node)
        nested = io.get(node["id"])
        sub = f"<ul>{''.join(sorted(nested))}</ul>" if nested else ""
        items.append(
            f'<li data-node="{esc(node["id"])}">{text} '
            f'<button type="button" class="select" data-select="{esc(node["id"])}">show in drawing</button>'
            f"{sub}</li>"
        )
    return f'<ol id="node-list" class="nodes">{"".join(items)}</ol>'


_LEGEND = """<ul class="legend" aria-label="legend">
<li><span class="swatch data"></span>data version</li>
<li><span class="swatch model"></span>model version</li>
<li><span class="swatch code"></span>code input</li>
<li><span class="swatch run"></span>run</li>
<li><span class="swatch copy"></span>copy (same bytes)</li>
<li><span class="swatch changed"></span>changed during its run / partial run</li>
<li><span class="swatch ghost"></span>input drawn again per reader</li>
</ul>"""


def graph_page(view: Mapping[str, Any]) -> str:
    """``/trace`` and ``/impact``."""
    start_key, start_value = next(iter(view["start"].items()))
    label = f"{start_key} {start_value}" if start_key != "path" else start_value
    counts = view["counts"]
    if view["page"] == "trace":
        title = f"Trace of {label}"
        summary = (
            f"Upstream: {_count(counts['runs'], 'run')} and {_count(counts['versions'], 'version')} made it"
            f" ({_count(counts['code'], 'code input')}, {_count(counts['copies'], 'copy', 'copies')})."
        )
    else:
        title = f"Impact of {label}"
        summary = (
            f"Downstream: reached {_count(counts['runs'], 'run')} and"
            f" {_count(counts['versions'], 'version')}"
            f" ({_count(counts['models'], 'of them', 'of them')} under model roots)."
        )
    if counts["changed_during_run"]:
        changed = counts["changed_during_run"]
        summary += f" {_count(changed, 'input')} changed while {'its run' if changed == 1 else 'their runs'} used {'it' if changed == 1 else 'them'}."
    if counts["partial_runs"]:
        partial = counts["partial_runs"]
        summary += (
            f" {_count(partial, 'run')} {'has' if partial == 1 else 'have'} a partial capture."
        )
    notice = ""
    if view["truncated"]:
        more = (
            f' <a id="expand" href="{esc(view["expand"])}">Show more (four times the caps)</a>'
            if view["expand"]
            else " The caps are at their maximum."
        )
        notice = (
            f'<p class="notice" role="status">Truncated: the walk stopped at its caps'
            f" (depth {view['max_depth']}, {view['max_nodes']} nodes).{more}</p>"
        )
    other = "impact" if view["page"] == "trace" else "trace"
    other_link = _link(other, **view["start"])
    body = f"""<h1>{esc(title)}</h1>
{_cli(view["cli"])}
<p class="summary" id="summary">{esc(summary)} <a href="{esc(other_link)}">{other}</a> \u00b7 <a href="{esc(view["link"])}">link to this view</a></p>
{notice}
{_LEGEND}
<div class="layout">
<div class="canvas">
<div class="toolbar"><button type="button" id="zoom-in" aria-label="zoom in">+</button><button type="button" id="zoom-out" aria-label="zoom out">\u2212</button><button type="button" id="zoom-fit">fit</button></div>
<div id="graph" data-draw-limit="{DRAW_LIMIT}"><noscript><p class="hint">The drawing needs JavaScript; every node is listed below.</p></noscript></div>
</div>
<aside id="details" class="details" aria-live="polite"><p class="hint">Select a node in the drawing or in the list to see its details.</p></aside>
</div>
<h2 id="as-text">Every node as text ({len(view["nodes"])})</h2>
{_node_list(view)}"""
    return layout(title, body, data=view)


# --- one run -----------------------------------------------------------------------------


def _rows(pairs: Iterable[tuple[str, str]]) -> str:
    return "".join(f"<dt>{esc(term)}</dt><dd>{value}</dd>" for term, value in pairs)


def _diff(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if line.startswith(("+++", "---", "diff --git")):
            css = "file"
        elif line.startswith("+"):
            css = "add"
        elif line.startswith("-"):
            css = "del"
        elif line.startswith("@@"):
            css = "hunk"
        else:
            css = ""
        lines.append(f'<span class="{css}">{esc(line)}</span>' if css else esc(line) + "\n")
    return f'<pre class="diff" id="diff">{"".join(lines)}</pre>'


def _io_table(items: Sequence[Mapping[str, Any]], *, inputs: bool) -> str:
    if not items:
        return '<p class="hint">none recorded</p>'
    rows = []
    for item in sorted(items, key=lambda i: i["path"]):
        state = item.get("verify", "")
        state_cell = f'<td class="state-{esc(state)}">{esc(state.upper())}</td>' if inputs else ""
        changed = (
            ' <span class="changed-note">changed during the run</span>'
            if item["changed_during_run"]
            else ""
        )
        rows.append(
            f"<tr>{state_cell}"
            f'<td><a href="{esc(_link("path", path=item["path"]))}">{esc(item["path"])}</a>{changed}</td>'
            f'<td><a href="{esc(_link("trace", version=item["version_id"]))}">{item["version_id"]}</a></td>'
            f"<td>{_copy(item['digest'])}</td><td>{esc(render.human_size(item['size']))}</td>"
            f"<td>{esc(item['how'])}, {esc(item['role'])}</td></tr>"
        )
    head = "<th>now</th>" if inputs else ""
    return (
        f'<table class="io" id="{"inputs" if inputs else "outputs"}"><thead><tr>{head}'
        "<th>path</th><th>version</th><th>digest</th><th>size</th><th>how</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def run_page(view: Mapping[str, Any]) -> str:
    """``/run/RUN_ID``."""
    run = view["run"]
    code = run["code"]
    env = run["env"]
    exit_text = "" if run["exit_code"] is None else f" (exit {run['exit_code']})"
    facts = [
        ("run id", _copy(run["run_id"], "runid")),
        ("status", esc(run["status"] + exit_text)),
        ("command", f"<code>{esc(' '.join(run['argv']))}</code>"),
        ("cwd", esc(run["cwd"])),
        ("by", esc(f"{run['user']}@{run['host']} pid {run['pid']}")),
        ("started", _time(run["started_at"])),
        ("ended", _time(run["ended_at"])),
    ]
    if run["parent_run_id"]:
        parent = run["parent_run_id"]
        facts.append(("parent", f'<a href="{esc(_run_link(parent))}">{esc(parent)}</a>'))
    if view["capture"]:
        text = ", ".join(
            f"{key}: {'; '.join(value) if isinstance(value, list) else value}"
            for key, value in view["capture"].items()
        )
        css = ' class="partial"' if view["partial"] else ""
        facts.append(("capture", f"<span{css}>{esc(text)}</span>"))
    facts.extend(("warning", esc(warning)) for warning in run["warnings"])
    params = "".join(
        f"<tr><td><code>{esc(key)}</code></td><td><code>{esc(value)}</code></td></tr>"
        for key, value in sorted(run["params"].items())
    )
    if code is None:
        code_html = '<p class="hint">not recorded</p>'
    else:
        git = [
            (
                "commit",
                _copy(code["commit"], "commit") if code["commit"] else "not a git work tree",
            ),
            ("branch", esc(code["branch"] or "(detached)")),
            ("remote", esc(code["remote"] or "-")),
            ("dirty", "yes" if code["dirty"] else "no"),
        ]
        if code["dirty"]:
            truncated = " (truncated)" if code["diff_truncated"] else ""
            git.append(
                (
                    "diff",
                    f"{esc(render.human_size(code['diff_size']))}{truncated},"
                    f" digest {_copy(code['diff_digest'])}",
                )
            )
        if code["untracked"]:
            git.append(("untracked", esc(", ".join(code["untracked"]))))
        sources = "".join(
            f"<tr><td>{esc(s['path'])}</td><td>{_copy(s['digest'])}</td></tr>"
            for s in code["sources"]
        )
        code_html = f"<dl>{_rows(git)}</dl>" + (
            f"<h3>Source files it ran ({len(code['sources'])})</h3><table><tbody>{sources}</tbody></table>"
            if sources
            else ""
        )
        if view["diff"]:
            code_html += f"<h3>The diff it ran with</h3>{_diff(view['diff'])}"
    if env is None:
        env_html = '<p class="hint">not recorded</p>'
    else:
        env_rows = [
            ("python", esc(f"{env['implementation']} {env['python_version']}")),
            ("platform", esc(env["platform"])),
            ("packages", f"{len(env['packages'])}, digest {_copy(env['packages_digest'])}"),
        ]
        env_rows.extend(
            (f"${name}", esc(value)) for name, value in sorted(env["variables"].items())
        )
        packages = "".join(f"<li>{esc(p)}</li>" for p in env["packages"])
        env_html = f'<dl>{_rows(env_rows)}</dl><ul class="packages">{packages}</ul>'
    verify_rows = "".join(
        f'<tr><td class="state-{esc(i["state"])}">{esc(i["state"].upper())}</td>'
        f"<td>{esc(i['path'])}</td><td><code>{esc(i['recorded_digest'][:12])}</code></td>"
        f"<td><code>{esc((i['current_digest'] or '')[:12] if i['state'] == 'changed' else '')}</code></td></tr>"
        for i in view["verify"]["items"]
    )
    verdict = (
        "every upstream input still holds its recorded bytes"
        if view["verify"]["ok"]
        else "some upstream inputs changed or are missing"
    )
    name = run["name"] or "(unnamed)"
    body = f"""<h1>Run {esc(name)}</h1>
{_cli(view["cli"])}
<p class="summary"><a href="{esc(_link("trace", run=run["run_id"]))}">trace</a> \u00b7 <a href="{esc(_link("impact", run=run["run_id"]))}">impact</a></p>
<dl id="run-facts">{_rows(facts)}</dl>
<h2>Parameters</h2>
{f"<table><tbody>{params}</tbody></table>" if params else '<p class="hint">none</p>'}
<h2>Inputs ({len(view["inputs"])})</h2>
{_io_table(view["inputs"], inputs=True)}
<h2>Outputs ({len(view["outputs"])})</h2>
{_io_table(view["outputs"], inputs=False)}
<h2>Verify: upstream inputs now</h2>
<p class="summary">{esc(verdict)}</p>
<table id="verify"><thead><tr><th>state</th><th>path</th><th>recorded</th><th>now</th></tr></thead><tbody>{verify_rows}</tbody></table>
<h2>Code</h2>
{code_html}
<h2>Environment</h2>
{env_html}"""
    return layout(f"Run {name}", body)


# --- one path ----------------------------------------------------------------------------


def path_page(view: Mapping[str, Any]) -> str:
    """``/path``: the version history as a timeline, newest first."""
    items = []
    for version in view["versions"]:
        current = version["valid_until"] is None
        ended = "now" if current else _time(version["valid_until"])
        closed = f", ended by {esc(version['closed_by'])}" if version["closed_by"] else ""
        css = "current" if current else ("gone" if version["closed_by"] == "deleted" else "")
        items.append(
            f'<li class="{css}" data-version="{version["version_id"]}">'
            f"<strong>{_time(version['valid_from'])} \u2192 {ended}</strong>"
            f" \u2014 version {version['version_id']}, {esc(render.human_size(version['size']))},"
            f" seen {esc(version['seen'])}{closed}<br>{_copy(version['digest'])}"
            f' <a href="{esc(_link("trace", version=version["version_id"]))}">trace</a>'
            f' \u00b7 <a href="{esc(_link("impact", version=version["version_id"]))}">impact</a>'
            f' \u00b7 <a href="{esc(_link("trace", digest=version["digest"]))}">every copy</a></li>'
        )
    more = (
        f'<p class="notice">Only the newest {len(items)} versions are shown; '
        f"<code>{esc(view['cli'])}</code> lists them all.</p>"
        if view["more"]
        else ""
    )
    body = f"""<h1>History of {esc(view["path"])}</h1>
{_cli(view["cli"])}
<p class="summary">{len(items)} versions, newest first.</p>
{more}
<ol class="timeline" id="timeline">{"".join(items)}</ol>"""
    return layout(f"History of {view['path']}", body)


# --- home --------------------------------------------------------------------------------


def home_page(view: Mapping[str, Any]) -> str:
    """``/``: search, daemon status, recent runs."""
    status = view["status"]
    scan = status["scan"]
    if scan["running"]:
        scan_text = f"running: {scan['files_seen']} files seen, {scan['files_hashed']} hashed"
    elif scan["initial_done"]:
        scan_text = f"idle, {scan['scans_completed']} scans completed"
    else:
        scan_text = "initial scan not done yet"
    roots = "".join(
        f"<tr><td>{esc(root['role'])}</td><td>{esc(root['path'])}</td>"
        f"<td>{esc(root['health'])}{' (polling)' if root['polling'] else ''}</td></tr>"
        for root in status["roots"]
    )
    degraded = "".join(f'<p class="notice">{esc(reason)}</p>' for reason in status["degraded"])
    counts = status["counts"]
    runs = "".join(
        f'<tr><td><a href="{esc(_run_link(run["run_id"]))}"><code>{esc(run["run_id"][:12])}</code></a></td>'
        f"<td>{esc(run['name'])}</td>"
        f"<td>{esc(run['status'])}{_exit(run['exit_code'])}"
        f"{' <span class=partial>partial</span>' if run['partial'] else ''}</td>"
        f"<td>{_time(run['started_at'])}</td><td><code>{esc(run['command'][:100])}</code></td></tr>"
        for run in view["runs"]
    )
    body = f"""<h1>lineage</h1>
<p class="summary">Search above by path (<code>data/train.csv</code>, or <code>PATH@2h</code> for what it held two hours ago), by digest prefix, or by run id.</p>
<div class="grid2">
<section id="status" data-scan-running="{"true" if scan["running"] else "false"}">
<h2>Daemon</h2>
<dl>
<dt>version</dt><dd>lineaged {esc(status["version"])}, pid {status["pid"]}, {"serving" if status["serving"] else "starting (initial scan)"}</dd>
<dt>socket</dt><dd><code>{esc(status["socket"])}</code></dd>
<dt>scan</dt><dd id="scan-state">{esc(scan_text)}</dd>
<dt>backlog</dt><dd id="queue-depth">{status["queue_depth"]}</dd>
<dt>store</dt><dd>{counts["artifacts"]} files, <span id="count-versions">{counts["versions"]}</span> versions, <span id="count-runs">{counts["runs"]}</span> runs, {counts["edges"]} edges</dd>
</dl>
{degraded}
<table id="roots"><thead><tr><th>role</th><th>root</th><th>health</th></tr></thead><tbody>{roots}</tbody></table>
</section>
<section>
<h2>Recent runs</h2>
{f'<table id="runs"><thead><tr><th>run</th><th>name</th><th>status</th><th>started</th><th>command</th></tr></thead><tbody>{runs}</tbody></table>' if runs else '<p class="hint">no runs recorded yet</p>'}
</section>
</div>"""
    return layout("lineage", body)


def error_page(status: int, title: str, message: str) -> str:
    """A page for an error: the HTTP status, the error class and its message."""
    body = (
        f'<h1>{status} {esc(title)}</h1><p class="error" role="alert">{esc(message)}</p>'
        '<p><a href="/">home</a></p>'
    )
    return layout(f"{status} {title}", body)
