// Reproducible bundle of src/ into one file (make ui / make ui-check): fixed options, no
// timestamps, no source map, the pinned esbuild and dagre of package-lock.json. Beside it,
// THIRD-PARTY-LICENSES.txt carries the license of every npm package the bundle contains.
import { build } from "esbuild";
import { readFileSync, writeFileSync, existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const outdir = path.resolve(process.argv[2] || path.join(here, "..", "clients", "lineage_client", "ui", "static"));

const result = await build({
  absWorkingDir: here,
  entryPoints: ["src/main.js"],
  bundle: true,
  format: "iife",
  platform: "browser",
  target: ["es2020"],
  minify: true,
  legalComments: "none",
  charset: "ascii",
  sourcemap: false,
  metafile: true,
  logLevel: "warning",
  outfile: path.join(outdir, "app.js"),
});

const packages = new Set();
for (const input of Object.keys(result.metafile.inputs)) {
  const match = /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(input);
  if (match) packages.add(match[1]);
}
// A package's prebuilt dist may embed its own dependencies (dagre's embeds graphlib).
for (const name of [...packages]) {
  const manifest = JSON.parse(readFileSync(path.join(here, "node_modules", name, "package.json"), "utf8"));
  for (const dependency of Object.keys(manifest.dependencies || {})) packages.add(dependency);
}
const sections = [...packages].sort().map((name) => {
  const folder = path.join(here, "node_modules", name);
  const manifest = JSON.parse(readFileSync(path.join(folder, "package.json"), "utf8"));
  const file = ["LICENSE", "LICENSE.md", "LICENSE.txt"].map((f) => path.join(folder, f)).find(existsSync);
  const text = file ? readFileSync(file, "utf8").trim() : `license: ${manifest.license}`;
  return `${manifest.name} ${manifest.version} (${manifest.license})\n\n${text}\n`;
});
writeFileSync(
  path.join(outdir, "THIRD-PARTY-LICENSES.txt"),
  "npm packages bundled into app.js (see ui/package-lock.json)\n\n" + sections.join("\n" + "-".repeat(72) + "\n\n"),
);
