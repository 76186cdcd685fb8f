// The debug bypass header and the per-page records, on the real wasm build:
// with the admin token the header makes one request skip the cache (and is
// never forwarded); without it nothing changes. Every page writes one JSON
// record line, and `npm run stats` turns those lines into the numbers the
// origin itself counted.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { startOrigin } from "./support/origin.mjs";
import { REPO_ROOT, startWorker, waitFor } from "./support/worker.mjs";

const run = promisify(execFile);
const TOKEN = "debug-t0ken";
const BYPASS = "x-fragcache-bypass";
const RECORD = '{"fragcache":"page"';

let origin;
let worker;

before(async () => {
  origin = await startOrigin();
  worker = await startWorker({
    config: {
      origin: origin.url,
      pages: [{ path: "/b" }, { path: "/s" }],
      fragments: [{ path: "/bf/*", soft_ttl: 300, hard_ttl: 3600 }],
    },
    bindings: { FRAGCACHE_ADMIN_TOKEN: TOKEN },
  });
  origin.route("/b", { body: `<esi:include src="/bf/one"/>|<esi:include src="/bf/two"/>` });
  origin.route("/bf/one", { body: (_req, n) => `one v${n}` });
  origin.route("/bf/two", { body: (_req, n) => `two v${n}` });
  origin.route("/elsewhere", { body: "passed through" });
});

after(async () => {
  await worker?.dispose();
  await origin?.close();
});

/** The stored entries: key → value. */
async function stored() {
  const out = {};
  for (const { name } of (await worker.kv.list()).keys) out[name] = await worker.kv.get(name);
  return out;
}

test("the bypass header with the token skips the cache for one request; a wrong one changes nothing", async () => {
  assert.equal(await (await worker.fetch("/b")).text(), "one v1|two v1");
  await waitFor(async () => Object.keys(await stored()).length === 2, { message: "both fragments stored" });
  const before = await stored();

  for (const wrong of ["nope", `${TOKEN}x`, "", `Bearer ${TOKEN}`]) {
    const res = await worker.fetch("/b", { headers: { [BYPASS]: wrong } });
    assert.equal(await res.text(), "one v1|two v1", `header ${JSON.stringify(wrong)}`);
    assert.match(res.headers.get("x-fragcache"), /\/bf\/one=hit.*\/bf\/two=hit/);
    assert.notEqual(res.headers.get("cache-control"), "private, no-store");
  }
  assert.equal(origin.count("/bf/one"), 1, "the wrong header reached nothing");

  const res = await worker.fetch("/b", { headers: { [BYPASS]: TOKEN } });
  assert.equal(await res.text(), "one v2|two v2");
  assert.equal(res.headers.get("cache-control"), "private, no-store");
  assert.equal(res.headers.get("x-fragcache"), "shell=bypass, /bf/one=bypass, /bf/two=bypass");
  assert.equal(origin.count("/bf/one"), 2);
  assert.equal(origin.count("/bf/two"), 2);
  for (const p of ["/b", "/bf/one", "/bf/two"]) {
    for (const r of origin.requests(p)) assert.equal(r.headers[BYPASS], undefined, `${p} got the header`);
  }
  assert.deepEqual(await stored(), before, "nothing written");

  // The cache is as it was for everyone else.
  const after = await worker.fetch("/b");
  assert.equal(await after.text(), "one v1|two v1");
  assert.match(after.headers.get("x-fragcache"), /\/bf\/one=hit/);

  // On a proxied route the header never reaches the origin either.
  const passed = await worker.fetch("/elsewhere", { headers: { [BYPASS]: TOKEN } });
  assert.equal(await passed.text(), "passed through");
  assert.equal(origin.requests("/elsewhere").at(-1).headers[BYPASS], undefined);
});

test("one record per page, and npm run stats adds them up to what the origin counted", async () => {
  origin.route("/s", { body: `<esi:include src="/bf/s1"/>|<esi:include src="/bf/s2"/>` });
  origin.route("/bf/s1", { body: "s1", delayMs: 20 });
  origin.route("/bf/s2", { body: "s2" });
  const records = () => worker.logs.filter((l) => l.includes(RECORD) && l.includes('"path":"/s"'));
  assert.equal(records().length, 0);

  const cold = await worker.fetch("/s"); // streamed: two misses
  // Server-Timing claims only what was known when the headers left.
  assert.match(cold.headers.get("server-timing"), /^shell;desc="bypass";dur=\d+, assemble;desc="2 fragments";dur=\d+$/);
  assert.equal(await cold.text(), "s1|s2");
  await waitFor(() => records().length === 1, { message: "the first page's record" });
  await waitFor(async () => (await worker.kv.list()).keys.length === 4, { message: "s1 and s2 stored" });
  for (let i = 0; i < 3; i++) assert.equal(await (await worker.fetch("/s")).text(), "s1|s2");
  await waitFor(() => records().length === 4, { message: "one record per page" });

  const first = JSON.parse(records()[0].slice(records()[0].indexOf(RECORD)));
  assert.deepEqual(
    [first.hit, first.miss, first.bypass, first.origin_fetches],
    [0, 2, 1, 3],
    "shell fetched, two cold fragments",
  );
  assert.ok(first.ttfb_ms <= first.total_ms);
  // Per-piece durations are in the record, where they are known.
  assert.deepEqual(first.pieces.map(([p, status]) => `${p}=${status}`), ["shell=bypass", "/bf/s1=miss", "/bf/s2=miss"]);
  assert.ok(first.pieces[1][3] >= 20, `s1 took its origin's 20 ms: ${JSON.stringify(first.pieces)}`);

  const origins = ["/s", "/bf/s1", "/bf/s2"].reduce((n, p) => n + origin.count(p), 0);
  const dir = mkdtempSync(path.join(os.tmpdir(), "fragcache-stats-"));
  try {
    const file = path.join(dir, "worker.log");
    // The worker's own lines, with other log lines around them, as captured.
    writeFileSync(file, ["unrelated line {", ...records(), "GET /s 200 OK"].join("\n"));
    const { stdout } = await run(process.execPath, ["scripts/stats.mjs", file, "--json"], { cwd: REPO_ROOT });
    const s = JSON.parse(stdout);
    assert.equal(s.pages, 4);
    assert.equal(s.origin_fetches, origins, "the origin's own count");
    assert.equal(s.origin_fetches_per_page, origins / 4);
    assert.equal(s.hit_rate, 6 / 8);
    assert.equal(s.miss_rate, 2 / 8);
    assert.equal(s.stale_rate, 0);
    assert.equal(s.bypass, 4, "the uncached shell, every time");
    assert.ok(s.ttfb_p50_ms <= s.ttfb_p95_ms);

    // `wrangler tail --format json`: records inside events' log messages.
    const tail = path.join(dir, "tail.json");
    const events = records().map((l) => ({
      outcome: "ok",
      logs: [{ message: [l.slice(l.indexOf(RECORD))], level: "log", timestamp: 0 }],
    }));
    writeFileSync(tail, events.map((e) => JSON.stringify(e, null, 2)).join("\n"));
    const { stdout: fromTail } = await run(process.execPath, ["scripts/stats.mjs", tail, "--json"], { cwd: REPO_ROOT });
    assert.deepEqual(JSON.parse(fromTail), s);

    // The human form, through npm as documented.
    const { stdout: text } = await run("npm", ["run", "--silent", "stats", "--", file], { cwd: REPO_ROOT });
    assert.match(text, /pages:\s+4/);
    assert.match(text, /hit rate:\s+75\.0%/);
    assert.match(text, new RegExp(`origin fetches per page:\\s+${(origins / 4).toFixed(2)}`));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("with an Analytics Engine binding, each page is one data point (no log line) in the documented layout", async () => {
  const withAe = await startWorker({
    config: {
      origin: origin.url,
      pages: [{ path: "/ae" }],
      fragments: [{ path: "/bf/*", soft_ttl: 300, hard_ttl: 3600 }],
    },
    analytics: true,
  });
  try {
    origin.route("/ae", { body: `<esi:include src="/bf/ae1"/>|<esi:include src="/bf/ae2"/>` });
    origin.route("/bf/ae1", { body: "a1" });
    origin.route("/bf/ae2", { body: "a2" });
    assert.equal(await (await withAe.fetch("/ae")).text(), "a1|a2");
    await waitFor(async () => (await withAe.kv.list()).keys.length >= 2, { message: "fragments stored" });
    assert.equal(await (await withAe.fetch("/ae?x=1")).text(), "a1|a2");
    const points = await waitFor(async () => {
      const p = await withAe.analyticsPoints();
      return p.length === 2 && p;
    }, { message: "two data points" });
    const byPath = Object.fromEntries(points.map((p) => [p.blobs[0], p]));
    // doubles: hit, stale, miss, coalesced, bypass, error, origin fetches, TTFB ms, total ms.
    assert.deepEqual(byPath["/ae"].doubles.slice(0, 7), [0, 0, 2, 0, 1, 0, 3], "shell passed, two misses");
    assert.deepEqual(byPath["/ae?x=1"].doubles.slice(0, 7), [2, 0, 0, 0, 1, 0, 1], "two hits");
    assert.deepEqual(byPath["/ae"].indexes, ["/ae"]);
    assert.ok(byPath["/ae"].doubles[7] <= byPath["/ae"].doubles[8], "TTFB within the total");
    assert.equal(withAe.logs.filter((l) => l.includes(RECORD)).length, 0, "no log line when the binding exists");
  } finally {
    await withAe.dispose();
  }
});
