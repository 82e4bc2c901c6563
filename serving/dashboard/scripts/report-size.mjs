// After `vite build`: the gzipped size of every chunk the first page (Chat, at /) loads: the entry
// script with its static imports and CSS, plus the Chat page's lazy chunk and its imports (from
// Vite's manifest). Their JS must stay <= 300 KB gzipped, and must not contain the charts
// (recharts) or the 3D view (three), which belong in lazy chunks: the script fails otherwise.
import { readFileSync, readdirSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { join } from "node:path";

const dist = new URL("../dist/", import.meta.url).pathname;
const LIMIT_KB = 300;
const FIRST_PAGE = "src/pages/chat/index.tsx";
const manifest = JSON.parse(readFileSync(join(dist, ".vite/manifest.json"), "utf8"));

const files = new Set();
function walk(key) {
  const chunk = manifest[key];
  if (!chunk || files.has(chunk.file)) return;
  files.add(chunk.file);
  for (const css of chunk.css ?? []) files.add(css);
  for (const imp of chunk.imports ?? []) walk(imp);
}
walk("index.html");
walk(FIRST_PAGE);

const gz = (file) => gzipSync(readFileSync(join(dist, file))).length / 1024;
let totalJs = 0;
console.log("first page (/) chunks, gzipped:");
for (const file of files) {
  const kb = gz(file);
  if (file.endsWith(".js")) totalJs += kb;
  console.log(`  ${file.padEnd(48)} ${kb.toFixed(1).padStart(7)} KB`);
}
const lazy = readdirSync(join(dist, "assets")).filter((f) => f.endsWith(".js") && !files.has(`assets/${f}`));
const lazyKb = lazy.reduce((sum, f) => sum + gz(`assets/${f}`), 0);
console.log(`other lazy chunks: ${lazy.length} (${lazyKb.toFixed(1)} KB gzipped in all)`);
console.log(`initial JS for the first page: ${totalJs.toFixed(1)} KB gzipped (limit ${LIMIT_KB} KB)`);
// Markers that survive minification: three's renderer class name and recharts' wrapper class.
const heavy = [...files].filter((f) => f.endsWith(".js") && /WebGLRenderer|recharts-wrapper/.test(readFileSync(join(dist, f), "utf8")));
if (totalJs > LIMIT_KB || heavy.length) {
  console.error(`error: the first page loads too much JavaScript${heavy.length ? ` (charts or 3D in ${heavy.join(", ")})` : ""}`);
  process.exit(1);
}
