// The details panel of a selected node: built with textContent only.
import { el, clear, humanSize, localTime } from "./dom.js";

function row(term, ...value) {
  return [el("dt", null, term), el("dd", null, ...value)];
}

function copyable(text) {
  return [el("code", { class: "digest" }, text), " ", el("button", { type: "button", class: "copy", "data-copy": text }, "copy")];
}

function link(href, text) {
  return el("a", { href }, text);
}

function query(name, value) {
  return `${name}=${encodeURIComponent(value)}`;
}

export function captureNote(node) {
  if (!node.capture || Object.keys(node.capture).length === 0) return null;
  return Object.entries(node.capture).map(([key, value]) => `${key}: ${Array.isArray(value) ? value.join("; ") : value}`).join(", ");
}

export function showDetails(panel, node, graph) {
  clear(panel);
  if (!node) {
    panel.append(el("p", { class: "hint" }, "Select a node in the drawing or in the list to see its details."));
    return;
  }
  const items = [];
  if (node.kind === "version") {
    panel.append(el("h2", null, node.role === "code" ? "Code input" : node.root_role === "model" ? "Model version" : "Data version"));
    items.push(
      row("path", el("span", { class: "path" }, node.path)),
      row("digest", ...copyable(node.digest)),
      row("size", humanSize(node.size)),
      row("version", `${node.version_id}, seen ${node.seen}${node.external ? " (outside every root)" : ""}`),
      row("held", `${localTime(node.valid_from)} \u2192 ${node.valid_until ? localTime(node.valid_until) : "now"}`),
    );
    const copies = graph.edges.filter((e) => e.kind === "same_digest" && (e.source === node.id || e.target === node.id));
    if (copies.length) items.push(row("copies", `${copies.length} other path(s) hold the same bytes`));
    panel.append(el("dl", null, ...items.flat()));
    panel.append(el("p", { class: "links" },
      link(`/trace?${query("version", node.version_id)}`, "trace"), " \u00b7 ",
      link(`/impact?${query("version", node.version_id)}`, "impact"), " \u00b7 ",
      link(`/path?${query("path", node.path)}`, "history of this path")));
  } else {
    panel.append(el("h2", null, "Run"));
    const note = captureNote(node);
    items.push(
      row("name", node.name),
      row("run id", ...copyable(node.run_id)),
      row("status", `${node.status}${node.exit_code === null || node.exit_code === undefined ? "" : ` (exit ${node.exit_code})`}`),
      row("command", el("code", null, node.command)),
      row("started", localTime(node.started_at)),
      row("ended", localTime(node.ended_at)),
    );
    if (node.commit) items.push(row("code", `${node.commit.slice(0, 12)}${node.branch ? ` (${node.branch})` : ""}${node.dirty ? " dirty" : ""}`));
    if (note) items.push(row("capture", el("span", { class: node.partial ? "partial" : null }, note)));
    for (const warning of node.warnings || []) items.push(row("warning", warning));
    const reads = graph.edges.filter((e) => e.source === node.id && e.kind === "read");
    const changed = reads.filter((e) => e.changed_during_run).length;
    items.push(row("inputs", `${reads.length} in this graph${changed ? `, ${changed} changed during the run` : ""}`));
    panel.append(el("dl", null, ...items.flat()));
    panel.append(el("p", { class: "links" },
      link(`/run/${encodeURIComponent(node.run_id)}`, "open the run page"), " \u00b7 ",
      link(`/trace?${query("run", node.run_id)}`, "trace this run"), " \u00b7 ",
      link(`/impact?${query("run", node.run_id)}`, "impact")));
  }
}
