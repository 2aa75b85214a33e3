// Lay out a lineage graph with dagre (left to right: data flows from inputs through runs to
// outputs) and draw it as SVG, with pan (drag, arrow keys) and zoom (wheel, + / - / 0 keys).
import dagre from "@dagrejs/dagre";
import { svg, clear, basename, shortDigest, truncate, humanSize } from "./dom.js";

const VERSION_SIZE = { width: 210, height: 46 };
const RUN_SIZE = { width: 190, height: 46 };
// network-simplex ranks best but costs most: above this many drawn nodes the tight-tree
// ranker keeps a 2,000-node graph well inside its time budget.
const SIMPLEX_LIMIT = 120;

// An edge in the direction data flows: input version -> run -> output version -> copy.
export function flow(edge) {
  return edge.kind === "read" ? [edge.target, edge.source] : [edge.source, edge.target];
}

// What is drawn: every node once, except an input that nothing in the graph made (a raw
// file, a script) read by several runs: it is drawn again beside each further reader, as a
// "ghost" that stands for the same node. One code file read by every run of a 50-run chain
// would otherwise pull 50 edges across up to 100 ranks, which costs dagre seconds (a dummy
// node per rank crossed) and draws a fan of long lines.
export function drawable(graph) {
  const made = new Set();
  const readers = new Map();
  for (const edge of graph.edges) {
    const [from, to] = flow(edge);
    made.add(to);
    if (!readers.has(from)) readers.set(from, []);
    readers.get(from).push(to);
  }
  const nodes = graph.nodes.map((node) => ({ id: node.id, node, ghost: false }));
  const edges = [];
  const ghosts = new Map();
  for (const node of graph.nodes) {
    const outs = readers.get(node.id) || [];
    if (node.kind !== "version" || node.start || made.has(node.id) || outs.length < 2) continue;
    outs.slice(1).forEach((reader, index) => {
      const id = `${node.id}~${index + 1}`;
      nodes.push({ id, node, ghost: true });
      ghosts.set(`${node.id}>${reader}`, id);
    });
  }
  for (const edge of graph.edges) {
    const [from, to] = flow(edge);
    edges.push({ from: ghosts.get(`${from}>${to}`) || from, to, edge, fromNode: from });
  }
  return { nodes, edges, ghosts: ghosts.size };
}

export function layout(graph) {
  const drawn = drawable(graph);
  const g = new dagre.graphlib.Graph({ multigraph: false });
  g.setGraph({
    rankdir: "LR", nodesep: 14, ranksep: 60, edgesep: 8, marginx: 24, marginy: 24,
    ranker: drawn.nodes.length > SIMPLEX_LIMIT ? "tight-tree" : "network-simplex",
    // Ghosts sit beside their reader; balanced alignment would step a chain down by half a
    // node at each run. Aligning up-left keeps it straight.
    align: drawn.ghosts ? "UL" : undefined,
  });
  g.setDefaultEdgeLabel(() => ({}));
  for (const item of drawn.nodes) {
    g.setNode(item.id, { ...(item.node.kind === "run" ? RUN_SIZE : VERSION_SIZE) });
  }
  for (const item of drawn.edges) {
    if (g.hasNode(item.from) && g.hasNode(item.to) && item.from !== item.to) g.setEdge(item.from, item.to);
  }
  dagre.layout(g);
  return { g, drawn };
}

function nodeClasses(node) {
  const classes = ["node", node.kind];
  if (node.kind === "version") {
    if (node.role === "code") classes.push("code");
    else if (node.root_role === "model") classes.push("model");
    if (node.copy) classes.push("copy");
    if (node.external) classes.push("external");
  } else {
    classes.push(`status-${node.status}`);
    if (node.partial) classes.push("partial");
  }
  if (node.start) classes.push("start");
  return classes.join(" ");
}

function nodeLabel(node) {
  if (node.kind === "version") {
    return [truncate(basename(node.path), 25), `${shortDigest(node.digest)}  ${humanSize(node.size)}`];
  }
  const second = `${node.status} \u00b7 ${node.run_id.slice(0, 12)}`;
  return [truncate(node.name || "(unnamed)", 22), node.partial ? `${second} \u00b7 partial` : second];
}

function nodeTitle(node) {
  if (node.kind === "version") return `${node.path}\n${node.digest}`;
  return `run ${node.run_id} ${node.name}\n${node.command}${node.partial ? "\ncapture: partial" : ""}`;
}

export class GraphView {
  constructor(container, graph, onSelect) {
    this.container = container;
    this.graph = graph;
    this.onSelect = onSelect;
    this.byId = new Map(graph.nodes.map((node) => [node.id, node]));
    this.elements = new Map();
    this.view = { x: 0, y: 0, k: 1 };
    this.selected = null;
  }

  render() {
    const started = performance.now();
    const { g, drawn } = layout(this.graph);
    this.layoutMs = performance.now() - started;
    const drawStarted = performance.now();
    const size = g.graph();
    this.width = size.width || 1;
    this.height = size.height || 1;
    clear(this.container);
    const defs = svg("defs", null,
      svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" },
        svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" })));
    this.viewport = svg("g", { class: "viewport" });
    const edgeLayer = svg("g", { class: "edges" });
    const nodeLayer = svg("g", { class: "nodes" });
    const edgeFragment = document.createDocumentFragment();
    for (const { from, to, edge, fromNode } of drawn.edges) {
      const laid = g.edge(from, to);
      if (!laid) continue;
      const d = laid.points.map((p, i) => `${i ? "L" : "M"}${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(" ");
      const classes = ["edge", edge.kind === "same_digest" ? "same-digest" : edge.kind];
      if (edge.changed_during_run) classes.push("changed");
      if (edge.role === "code") classes.push("code");
      const path = svg("path", { d, class: classes.join(" "), "marker-end": "url(#arrow)", "data-from": fromNode, "data-to": to });
      if (edge.changed_during_run) path.append(svg("title", null, "this input changed while the run was using it"));
      else if (edge.kind === "same_digest") path.append(svg("title", null, "a copy: the same bytes at another path"));
      edgeFragment.append(path);
    }
    edgeLayer.append(edgeFragment);
    const nodeFragment = document.createDocumentFragment();
    for (const { id, node, ghost } of drawn.nodes) {
      const laid = g.node(id);
      const [first, second] = nodeLabel(node);
      const w = laid.width;
      const h = laid.height;
      const radius = node.kind === "run" ? 22 : 4;
      const item = svg("g", {
        class: nodeClasses(node) + (ghost ? " ghost" : ""),
        transform: `translate(${laid.x.toFixed(1)},${laid.y.toFixed(1)})`,
        "data-node": node.id,
      },
      svg("title", null, ghost ? `${nodeTitle(node)}\n(drawn again beside each run that read it)` : nodeTitle(node)),
      svg("rect", { x: -w / 2, y: -h / 2, width: w, height: h, rx: radius, ry: radius }),
      svg("text", { class: "label", x: 0, y: -4, "text-anchor": "middle" }, first),
      svg("text", { class: "sub", x: 0, y: 13, "text-anchor": "middle" }, second));
      if (node.kind === "run" && node.partial) {
        item.append(svg("text", { class: "badge", x: w / 2 - 12, y: -h / 2 + 12, "text-anchor": "middle" }, "!"));
      }
      if (!this.elements.has(node.id)) this.elements.set(node.id, []);
      if (ghost) this.elements.get(node.id).push(item);
      else this.elements.get(node.id).unshift(item);
      nodeFragment.append(item);
    }
    nodeLayer.append(nodeFragment);
    this.viewport.append(edgeLayer, nodeLayer);
    this.svg = svg("svg", {
      class: "graph", role: "img", tabindex: "0",
      "aria-label": `Lineage drawing of ${this.graph.nodes.length} nodes; every node is listed as text below.`,
    }, defs, this.viewport);
    this.container.append(this.svg);
    this.wire();
    this.fit();
    this.drawMs = performance.now() - drawStarted;
  }

  apply() {
    const { x, y, k } = this.view;
    this.viewport.setAttribute("transform", `translate(${x.toFixed(1)},${y.toFixed(1)}) scale(${k.toFixed(4)})`);
  }

  fit() {
    const box = this.svg.getBoundingClientRect();
    const width = box.width || 800;
    const height = box.height || 500;
    const k = Math.max(0.05, Math.min(1.2, width / this.width, height / this.height));
    this.view = { k, x: (width - this.width * k) / 2, y: (height - this.height * k) / 2 };
    this.apply();
  }

  zoom(factor, cx, cy) {
    const box = this.svg.getBoundingClientRect();
    const px = cx === undefined ? box.width / 2 : cx;
    const py = cy === undefined ? box.height / 2 : cy;
    const k = Math.max(0.03, Math.min(6, this.view.k * factor));
    const ratio = k / this.view.k;
    this.view = { k, x: px - (px - this.view.x) * ratio, y: py - (py - this.view.y) * ratio };
    this.apply();
  }

  pan(dx, dy) {
    this.view.x += dx;
    this.view.y += dy;
    this.apply();
  }

  center(id) {
    const item = (this.elements.get(id) || [])[0];
    if (!item) return;
    const match = /translate\(([-\d.]+),([-\d.]+)\)/.exec(item.getAttribute("transform"));
    const box = this.svg.getBoundingClientRect();
    const k = Math.max(this.view.k, 0.6);
    this.view = { k, x: box.width / 2 - Number(match[1]) * k, y: box.height / 2 - Number(match[2]) * k };
    this.apply();
  }

  select(id) {
    if (this.selected) {
      for (const previous of this.elements.get(this.selected) || []) previous.classList.remove("selected");
      for (const path of this.viewport.querySelectorAll("path.edge.lit")) path.classList.remove("lit");
    }
    this.selected = this.byId.has(id) ? id : null;
    const items = this.selected ? this.elements.get(this.selected) || [] : [];
    if (items.length) {
      for (const item of items) item.classList.add("selected");
      for (const path of this.viewport.querySelectorAll("path.edge")) {
        if (path.getAttribute("data-from") === id || path.getAttribute("data-to") === id) path.classList.add("lit");
      }
    }
    this.onSelect(this.selected ? this.byId.get(this.selected) : null);
  }

  wire() {
    const target = this.svg;
    let drag = null;
    target.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      drag = { x: event.clientX, y: event.clientY, moved: false, id: event.pointerId };
    });
    target.addEventListener("pointermove", (event) => {
      if (!drag) return;
      const dx = event.clientX - drag.x;
      const dy = event.clientY - drag.y;
      if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 4) return;
      if (!drag.moved) {
        drag.moved = true;
        target.setPointerCapture(drag.id);
        target.classList.add("dragging");
      }
      drag.x = event.clientX;
      drag.y = event.clientY;
      this.pan(dx, dy);
    });
    const end = (event) => {
      if (!drag) return;
      const moved = drag.moved;
      if (moved && target.hasPointerCapture(drag.id)) target.releasePointerCapture(drag.id);
      target.classList.remove("dragging");
      drag = null;
      if (!moved && event.type === "pointerup") {
        const node = event.target.closest && event.target.closest("g.node");
        if (node) this.select(node.getAttribute("data-node"));
      }
    };
    target.addEventListener("pointerup", end);
    target.addEventListener("pointercancel", end);
    target.addEventListener("wheel", (event) => {
      event.preventDefault();
      const box = target.getBoundingClientRect();
      this.zoom(Math.exp(-event.deltaY * 0.0015), event.clientX - box.left, event.clientY - box.top);
    }, { passive: false });
    target.addEventListener("keydown", (event) => {
      const step = 60;
      const keys = {
        "+": () => this.zoom(1.25), "=": () => this.zoom(1.25), "-": () => this.zoom(0.8), "0": () => this.fit(),
        ArrowLeft: () => this.pan(step, 0), ArrowRight: () => this.pan(-step, 0),
        ArrowUp: () => this.pan(0, step), ArrowDown: () => this.pan(0, -step),
      };
      const action = keys[event.key];
      if (action) {
        event.preventDefault();
        action();
      }
    });
  }
}
