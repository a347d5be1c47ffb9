// Turns TypeScript or JavaScript parties into components of the `party` world.
//
//   node build.mjs <wit dir> <party> <entry file> <component> [<party> <entry> <component>]...
//
// For each party: esbuild bundles the entry (types stripped, npm packages
// resolved from the node_modules above it) behind this folder's runtime/,
// which gives PartyKit's API over wit/party.wit. The bundle's hash names a
// cached component in `cache/` beside <component>, so an unchanged party is
// not componentized again; componentize-js embeds the bundle in
// SpiderMonkey. <component> is rewritten only when it changes. Progress goes
// to stderr; stdout gets one JSON line per party: {"party", "changed",
// "cached"} or {"party", "error"}.

import { createHash } from "node:crypto";
import { tmpdir } from "node:os";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const toolchain = JSON.parse(readFileSync(join(here, "package.json"), "utf8")).dependencies;

const [witDir, ...parties] = process.argv.slice(2);
if (!witDir || parties.length === 0 || parties.length % 3 !== 0) {
  console.error("usage: node build.mjs <wit dir> <party> <entry> <component> ...");
  process.exit(2);
}

function progress(party, step) {
  console.error(`${party}: ${step}`);
}

/** The bundle: runtime globals first, then the party, behind the handlers export. */
async function bundle(entry) {
  const wrapper = [
    `import "./globals.js";`,
    `import Server from ${JSON.stringify(entry)};`,
    `import { handlers as makeHandlers } from "./party.js";`,
    `export const handlers = makeHandlers(Server);`,
  ].join("\n");
  const result = await esbuild.build({
    stdin: { contents: wrapper, resolveDir: join(here, "runtime"), sourcefile: "partyhost-entry.js", loader: "js" },
    bundle: true,
    format: "esm",
    platform: "browser",
    conditions: ["worker", "browser"],
    target: "es2022",
    external: ["partyhost:*"],
    // Paths in messages relative to the project, not to this folder.
    absWorkingDir: process.env.PARTYHOST_PROJECT_DIR || process.cwd(),
    write: false,
    logLevel: "silent",
    legalComments: "none",
  });
  for (const warning of await esbuild.formatMessages(result.warnings, { kind: "warning" })) {
    console.error(warning.trimEnd());
  }
  return result.outputFiles[0].text;
}

function hashOf(code) {
  const hash = createHash("sha256");
  hash.update(JSON.stringify(toolchain));
  // This script too: it holds the componentize options.
  hash.update(readFileSync(fileURLToPath(import.meta.url)));
  hash.update(readFileSync(join(witDir, "party.wit")));
  hash.update(code);
  return hash.digest("hex").slice(0, 16);
}

/** Writes `bytes` to `path` through a rename, so no reader sees half a file. */
function writeWhole(path, bytes) {
  const partial = `${path}.${process.pid}.partial`;
  writeFileSync(partial, bytes);
  renameSync(partial, path);
}

/** Components cached per party: saves in `partyhost dev` add one each. */
const KEEP = 4;

function prune(cacheDir, name) {
  // Exactly this party's: `chat-` would also match `chat-room-...`.
  const own = new RegExp(`^${name}-[0-9a-f]{16}\\.wasm$`); // party names are a-z, 0-9, - and _
  const mine = readdirSync(cacheDir)
    .filter((file) => own.test(file))
    .map((file) => ({ path: join(cacheDir, file), mtime: statSync(join(cacheDir, file)).mtimeMs }))
    .sort((a, b) => b.mtime - a.mtime);
  for (const { path } of mine.slice(KEEP)) rmSync(path, { force: true });
}

async function build(name, entry, component) {
  progress(name, "bundling");
  const code = await bundle(entry);
  const cacheDir = join(dirname(component), "cache");
  const cachedPath = join(cacheDir, `${name}-${hashOf(code)}.wasm`);
  const cached = existsSync(cachedPath);
  // Its modification time is its last use, for `prune`.
  if (cached) utimesSync(cachedPath, new Date(), new Date());
  else {
    progress(name, "componentizing (SpiderMonkey; takes several seconds)");
    const { componentize } = await import("@bytecodealliance/componentize-js");
    mkdirSync(cacheDir, { recursive: true });
    // Named after the party: the name shows in stack traces.
    const folder = mkdtempSync(join(tmpdir(), "partyhost-build-"));
    const source = join(folder, `${name}.js`);
    writeFileSync(source, code);
    try {
      const { component: bytes } = await componentize({
        sourcePath: source,
        witPath: witDir,
        worldName: "party",
        // No wasi:http: rooms reach each other through the WIT's `outbound`.
        disableFeatures: ["http", "fetch-event"],
      });
      writeWhole(cachedPath, bytes);
    } finally {
      rmSync(folder, { recursive: true, force: true });
    }
  }
  prune(cacheDir, name);
  const bytes = readFileSync(cachedPath);
  const changed = !existsSync(component) || !bytes.equals(readFileSync(component));
  if (changed) writeWhole(component, bytes);
  return { party: name, changed, cached };
}

/** One esbuild error: where, what, and its notes (e.g. why an import failed). */
function describeError(e) {
  const at = e.location ? `${e.location.file}:${e.location.line}:${e.location.column}: ` : "";
  const notes = (e.notes ?? []).map((note) => `\n  ${note.text}`).join("");
  const builtin = /^Could not resolve "node:/.test(e.text) ? "\n  partyhost parties get web APIs, not Node.js built-ins" : "";
  return `${at}${e.text}${notes}${builtin}`;
}

let failed = false;
for (let i = 0; i < parties.length; i += 3) {
  const [name, entry, component] = parties.slice(i, i + 3);
  try {
    console.log(JSON.stringify(await build(name, resolve(entry), resolve(component))));
  } catch (error) {
    failed = true;
    const message = error?.errors?.length
      ? error.errors.map(describeError).join("\n")
      : String(error?.message ?? error);
    console.log(JSON.stringify({ party: name, error: message }));
  }
}
process.exit(failed ? 1 : 0);
