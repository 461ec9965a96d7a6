// Bundles the phone client with esbuild into one folder that `stepbatch serve` serves:
// index.html at /, the rest under /app/. Usage: node build.mjs OUTDIR
import { copyFile, mkdir, rm } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
const outdir = path.resolve(process.argv[2] ?? path.join(here, "dist"));

await rm(outdir, { recursive: true, force: true });
await mkdir(outdir, { recursive: true });
await esbuild.build({
  entryPoints: { app: path.join(here, "src", "main.js") },
  bundle: true,
  minify: true,
  sourcemap: true,
  format: "esm",
  target: "es2022",
  outdir,
  // Leaflet's stylesheet names its control images; they become files beside the bundle, since
  // the page's Content-Security-Policy admits images from its own origin only.
  loader: { ".png": "file", ".svg": "file" },
  assetNames: "[name]-[hash]",
  legalComments: "linked",
  logLevel: "warning",
});
for (const name of ["index.html", "icon.svg", "manifest.webmanifest"]) {
  await copyFile(path.join(here, "src", name), path.join(outdir, name));
}
console.log(`stepbatch: phone client built into ${outdir}`);
