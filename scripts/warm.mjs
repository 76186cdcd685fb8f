// Warms a list of pages on a running fragcache worker (local or deployed).
//
//   FRAGCACHE_ADMIN_TOKEN=… npm run warm -- [--concurrency N] <base URL> <file of paths>
//
// The file holds one page path per line (`/`, `/news?page=2`); blank lines
// and lines starting with `#` are ignored. Each page is warmed by the
// worker's admin operation `POST /_fragcache/warm?path=…`, which loads it
// exactly as a visitor's request would and answers with the final cache
// status of the shell and every include: so each page is classified
// exactly (warmed: something was fetched or refreshed; fresh: everything
// was a hit; failed: an error status or a failed include), which a plain
// GET cannot do (its `x-fragcache` header is written before slow includes
// finish). At most N pages (default 4) are in flight at once. A progress
// bar is drawn on a terminal, plain lines otherwise; the summary gives the
// counts, each failure's reason and the time taken. The exit code is 1 when
// anything failed, 2 on bad usage.

import { readFileSync } from "node:fs";

const USAGE = "usage: FRAGCACHE_ADMIN_TOKEN=… npm run warm -- [--concurrency N] <base URL> <file of paths>";

/** Page paths from the text of a paths file. */
export function parsePaths(text) {
  return text
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line !== "" && !line.startsWith("#"));
}

function parseArgs(argv) {
  let concurrency = 4;
  const rest = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--concurrency" || a.startsWith("--concurrency=")) {
      const v = a.includes("=") ? a.split("=")[1] : argv[++i];
      concurrency = Number(v);
      if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 64) {
        throw new Error(`--concurrency must be a whole number from 1 to 64, got ${v}`);
      }
    } else if (a === "--help" || a === "-h") {
      throw new Error(USAGE);
    } else {
      rest.push(a);
    }
  }
  if (rest.length !== 2) throw new Error(USAGE);
  const [base, file] = rest;
  let url;
  try {
    url = new URL(base);
  } catch {
    throw new Error(`not a URL: ${base}\n${USAGE}`);
  }
  return { base: url, file, concurrency };
}

/** Warms one page; resolves to { path, outcome, reason? }. */
async function warmOne(base, token, path) {
  const target = new URL(`/_fragcache/warm?path=${encodeURIComponent(path)}`, base);
  try {
    const res = await fetch(target, { method: "POST", headers: { authorization: `Bearer ${token}` } });
    const text = await res.text();
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      return { path, outcome: "failed", reason: `HTTP ${res.status}: ${text.slice(0, 120)}` };
    }
    if (!res.ok) return { path, outcome: "failed", reason: `HTTP ${res.status}: ${json.error ?? text.slice(0, 120)}` };
    const page = json.pages?.[0];
    if (!page) return { path, outcome: "failed", reason: "the worker answered no page" };
    return { path, outcome: page.outcome, reason: page.error ?? undefined };
  } catch (err) {
    return { path, outcome: "failed", reason: err?.cause?.message ?? err?.message ?? String(err) };
  }
}

function progress(out, done, total, counts, last) {
  if (out.isTTY) {
    const width = 30;
    const filled = total === 0 ? width : Math.round((done / total) * width);
    const bar = "#".repeat(filled) + "-".repeat(width - filled);
    out.write(`\r[${bar}] ${done}/${total}  warmed ${counts.warmed}  fresh ${counts.fresh}  failed ${counts.failed}`);
    if (done === total) out.write("\n");
  } else {
    out.write(`${done}/${total} ${last.outcome} ${last.path}\n`);
  }
}

/**
 * Warms `paths` against `base` with at most `concurrency` in flight, and
 * returns { warmed, fresh, failed: [{ path, reason }], ms }.
 */
export async function warm({ base, paths, concurrency = 4, token, out = process.stdout }) {
  const started = Date.now();
  const counts = { warmed: 0, fresh: 0, failed: 0 };
  const failures = [];
  let next = 0;
  let done = 0;
  const worker = async () => {
    while (next < paths.length) {
      const path = paths[next++];
      const r = await warmOne(base, token, path);
      const outcome = r.outcome === "warmed" || r.outcome === "fresh" ? r.outcome : "failed";
      counts[outcome]++;
      if (outcome === "failed") failures.push({ path, reason: r.reason ?? `outcome ${r.outcome}` });
      done++;
      progress(out, done, paths.length, counts, { path, outcome });
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, paths.length) }, worker));
  return { warmed: counts.warmed, fresh: counts.fresh, failed: failures, ms: Date.now() - started };
}

/** The summary printed at the end. */
export function summary(result) {
  const lines = [
    `warmed: ${result.warmed}`,
    `already fresh: ${result.fresh}`,
    `failed: ${result.failed.length}`,
    ...result.failed.map((f) => `  ${f.path}: ${f.reason}`),
    `time: ${(result.ms / 1000).toFixed(2)} s`,
  ];
  return lines.join("\n") + "\n";
}

async function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${err.message}\n`);
    return 2;
  }
  const token = process.env.FRAGCACHE_ADMIN_TOKEN;
  if (!token) {
    process.stderr.write(`FRAGCACHE_ADMIN_TOKEN is not set: the worker's admin token is needed\n${USAGE}\n`);
    return 2;
  }
  let paths;
  try {
    paths = parsePaths(readFileSync(args.file, "utf8"));
  } catch (err) {
    process.stderr.write(`cannot read ${args.file}: ${err.message}\n`);
    return 2;
  }
  const bad = paths.find((p) => !p.startsWith("/"));
  if (bad) {
    process.stderr.write(`${args.file}: ${JSON.stringify(bad)} is not a path starting with /\n`);
    return 2;
  }
  const result = await warm({ base: args.base, paths, concurrency: args.concurrency, token });
  process.stdout.write(summary(result));
  return result.failed.length > 0 ? 1 : 0;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  process.exitCode = await main();
}
