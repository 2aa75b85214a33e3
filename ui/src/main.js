// Entry point of the bundle: every page loads it; pages with a graph carry their data as a
// JSON block (<script type="application/json" id="lineage-data">), never as code.
import { GraphView } from "./graph.js";
import { showDetails } from "./details.js";
import { el, wireCopyButtons } from "./dom.js";
import { watchStatus } from "./status.js";

function readData() {
  const block = document.getElementById("lineage-data");
  return block ? JSON.parse(block.textContent) : null;
}

function startGraph(data) {
  const container = document.getElementById("graph");
  const panel = document.getElementById("details");
  if (!container || !panel || !data || !data.nodes) return;
  const list = document.getElementById("node-list");
  const view = new GraphView(container, data, (node) => {
    showDetails(panel, node, data);
    if (list) {
      for (const item of list.querySelectorAll("li.current")) item.classList.remove("current");
      const item = node && list.querySelector(`li[data-node="${CSS.escape(node.id)}"]`);
      if (item) item.classList.add("current");
    }
    // The address names the selected node, so a copied link opens with it selected.
    const here = location.pathname + location.search;
    history.replaceState(null, "", node ? `${here}#${encodeURIComponent(node.id)}` : here);
  });
  const draw = () => {
    view.render();
    const wanted = decodeURIComponent(location.hash.slice(1));
    if (wanted && view.byId.has(wanted)) {
      view.select(wanted);
      view.center(wanted);
    }
    const root = document.documentElement;
    root.dataset.layoutMs = view.layoutMs.toFixed(1);
    root.dataset.drawMs = view.drawMs.toFixed(1);
    root.dataset.nodes = String(data.nodes.length);
  };
  showDetails(panel, null, data);
  document.getElementById("zoom-in")?.addEventListener("click", () => view.svg && view.zoom(1.25));
  document.getElementById("zoom-out")?.addEventListener("click", () => view.svg && view.zoom(0.8));
  document.getElementById("zoom-fit")?.addEventListener("click", () => view.svg && view.fit());
  if (list) {
    list.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-select]");
      if (!button) return;
      const id = button.getAttribute("data-select");
      if (!view.svg) {
        showDetails(panel, view.byId.get(id), data);
        return;
      }
      view.select(id);
      view.center(id);
      container.scrollIntoView({ block: "nearest" });
    });
  }
  // A graph past the limit would hold the page for seconds while dagre lays it out: the
  // text list is there at once, and the drawing waits to be asked for.
  const limit = Number(container.getAttribute("data-draw-limit") || "0");
  if (limit && data.nodes.length > limit) {
    const button = el("button", { type: "button", id: "draw-anyway" }, "Draw it");
    const note = el("p", { class: "hint", id: "draw-note" },
      `This graph has ${data.nodes.length} nodes: laying it out takes several seconds. `, button,
      " — or read the list of every node below.");
    container.append(note);
    button.addEventListener("click", () => {
      note.remove();
      draw();
    });
    return;
  }
  draw();
}

function start() {
  performance.mark("lineage:start");
  wireCopyButtons(document.body);
  startGraph(readData());
  watchStatus();
  performance.mark("lineage:interactive");
  document.documentElement.dataset.ready = "true";
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
