// The home page's daemon status: refreshed from /api/status every 2 s while a scan runs.
const PERIOD_MS = 2000;

function put(id, text) {
  const node = document.getElementById(id);
  if (node) node.textContent = text;
}

export function watchStatus() {
  const panel = document.getElementById("status");
  if (!panel || panel.getAttribute("data-scan-running") !== "true") return;
  const tick = () => {
    fetch("/api/status", { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then((response) => (response.ok ? response.json() : Promise.reject(new Error(String(response.status)))))
      .then((status) => {
        const scan = status.scan;
        put("scan-state", scan.running ? `running: ${scan.files_seen} files seen, ${scan.files_hashed} hashed` : "idle");
        put("queue-depth", String(status.queue_depth));
        put("count-versions", String(status.counts.versions));
        put("count-runs", String(status.counts.runs));
        if (scan.running) setTimeout(tick, PERIOD_MS);
      })
      .catch(() => put("scan-state", "the daemon did not answer; reload to try again"));
  };
  setTimeout(tick, PERIOD_MS);
}
