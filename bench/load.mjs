// Load script (`npm run bench`): the same scenarios, in one run, against
//   1. fragcache: the built worker (build/index.js + .wasm) in workerd via
//      Miniflare, as the integration tests run it;
//   2. a trivial JS worker in the same Miniflare/workerd that answers every
//      request with the bytes of our warm page (the platform's ceiling);
//   3. Varnish with ESI and grace in front of the same origin, when
//      `varnishd` is installed (skipped with a hint otherwise).
// All on 127.0.0.1, with one counting origin (tests/support/origin.mjs).
// Each system gets its own key set, so every cold scenario starts cold.
//
// Usage: npm run bench [-- --burst 200 --steady 5 --concurrency 32]
//   --burst        concurrent requests in the cold and stale bursts (1..1000)
//   --steady       seconds of warm load per system (1..30)
//   --concurrency  connections for the warm load (1..256)
//   --coordinator  on: fragcache with its Durable Object binding (default off)
// Prints one table and writes the full results to bench/results/latest.json
// (latest-coordinator.json with --coordinator on).

import { spawn, spawnSync } from "node:child_process";
import { accessSync, constants, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { startOrigin } from "../tests/support/origin.mjs";
import { REPO_ROOT, startWorkers } from "../tests/support/worker.mjs";

// ---------------------------------------------------------------- options

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
function bounded(name, dflt, min, max) {
  const v = Number(args[name] ?? dflt);
  if (!Number.isInteger(v) || v < min || v > max) {
    console.error(`--${name} must be an integer in ${min}..${max}, got ${args[name]}`);
    process.exit(2);
  }
  return v;
}
const BURST = bounded("burst", 200, 1, 1000);
const STEADY_S = bounded("steady", 5, 1, 30);
const CONCURRENCY = bounded("concurrency", 32, 1, 256);
// `--coordinator on`: fragcache runs with its Durable Object binding, as
// `wrangler.toml` deploys it (cold misses and refreshes go through the
// key's object); off by default, one isolate on its own.
if (!["on", "off", undefined].includes(args.coordinator)) {
  console.error(`--coordinator must be on or off, got ${args.coordinator}`);
  process.exit(2);
}
const COORDINATOR = args.coordinator === "on";

// The routes every system caches, with fragcache's TTLs; Varnish gets the same.
const PAGE = { soft_ttl: 60, hard_ttl: 600 };
const FRAGMENT = { soft_ttl: 2, hard_ttl: 600 };
const CONFIG = {
  pages: [{ path: "/p/*", ...PAGE }],
  fragments: [{ path: "/f/*", ...FRAGMENT, jitter: 0, xfetch_beta: 0 }],
};

// Scenario shapes.
const WARM = { fragments: 10, fragmentMs: 100 };
const BURSTY = { shellMs: 100, fragments: 5, fragmentMs: 300 };
const COLD_PAGE = { fragments: 10, fragmentMs: 100, runs: 5 };
const FIRST_BYTE = { fragments: 10, lastMs: 1000, runs: 3 };

const GOALS = {
  warmRps: 0.7, // × ceiling
  warmP99: 1.5, // × ceiling
  coldBurstP50: 450, // ms
  staleP99: 2, // × our warm p99
  coldPage: 130, // ms
  firstByte: 5, // ms
};

// ---------------------------------------------------------------- helpers

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const NONCE = Date.now().toString(36);

function summary(times, errors = 0) {
  const s = [...times].sort((a, b) => a - b);
  const pct = (p) => (s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] : NaN);
  const r = (x) => Math.round(x * 100) / 100;
  return {
    n: s.length,
    errors,
    min: r(s[0]),
    p50: r(pct(50)),
    p90: r(pct(90)),
    p99: r(pct(99)),
    max: r(s[s.length - 1]),
    mean: r(s.reduce((a, b) => a + b, 0) / (s.length || 1)),
  };
}

/** One GET through `agent`, whole body read; resolves { ms, status, body? }. */
function get(base, p, agent, keepBody = false) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const req = http.get(new URL(p, base), { agent }, (res) => {
      const chunks = [];
      res.on("data", (c) => keepBody && chunks.push(c));
      res.on("end", () =>
        resolve({ ms: performance.now() - t0, status: res.statusCode, body: keepBody ? Buffer.concat(chunks) : undefined }),
      );
      res.on("error", () => resolve({ ms: performance.now() - t0, status: 0 }));
    });
    req.on("error", () => resolve({ ms: performance.now() - t0, status: 0 }));
  });
}

/** `n` requests all at once, on a fresh pool of `n` keep-alive sockets. */
async function burst(base, p, n) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: n });
  try {
    const results = await Promise.all(Array.from({ length: n }, () => get(base, p, agent)));
    const ok = results.filter((r) => r.status === 200);
    return summary(
      ok.map((r) => r.ms),
      results.length - ok.length,
    );
  } finally {
    agent.destroy();
  }
}

/** `conns` keep-alive connections in closed loops for `seconds`. */
async function steady(base, p, conns, seconds) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: conns });
  const times = [];
  let errors = 0;
  try {
    // Open the connections before the clock starts.
    await Promise.all(Array.from({ length: conns }, () => get(base, p, agent)));
    const t0 = performance.now();
    const end = t0 + seconds * 1000;
    await Promise.all(
      Array.from({ length: conns }, async () => {
        while (performance.now() < end) {
          const r = await get(base, p, agent);
          if (r.status === 200) times.push(r.ms);
          else errors++;
        }
      }),
    );
    const wall = performance.now() - t0;
    return { ...summary(times, errors), seconds: Math.round(wall) / 1000, rps: Math.round((times.length / wall) * 1000) };
  } finally {
    agent.destroy();
  }
}

/** Time to the first body chunk and to the end, with fetch + a reader. */
async function firstByte(base, p, headers = {}) {
  const t0 = performance.now();
  const res = await fetch(new URL(p, base), { headers });
  const reader = res.body.getReader();
  let first;
  for (;;) {
    const { done, value } = await reader.read();
    if (first === undefined && value?.length) first = performance.now() - t0;
    if (done) break;
  }
  return {
    status: res.status,
    contentEncoding: res.headers.get("content-encoding"),
    firstMs: first,
    totalMs: performance.now() - t0,
  };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function freePort() {
  const srv = net.createServer();
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

function findVarnishd() {
  const dirs = [...(process.env.PATH ?? "").split(":"), "/usr/sbin", "/usr/local/sbin"];
  for (const d of dirs) {
    const f = path.join(d, "varnishd");
    try {
      accessSync(f, constants.X_OK);
      return f;
    } catch {}
  }
  return null;
}

// ---------------------------------------------------------------- origin

const origin = await startOrigin();
const originPort = Number(new URL(origin.url).port);

/**
 * Defines a page `/p/<set>` whose shell includes `/f/<set>/<i>`, and returns
 * its paths. `delays[i]` is fragment i's origin delay.
 */
function keyset(set, { shellMs = 0, delays }) {
  const frags = delays.map((_, i) => `/f/${set}/${i}`);
  const shell = frags.map((f) => `<section><esi:include src="${f}"/></section>`).join("\n");
  const page = `/p/${set}`;
  origin.route(page, { body: `<!doctype html><title>bench</title>\n${shell}\n`, delayMs: shellMs });
  frags.forEach((f, i) =>
    origin.route(f, { body: (_req, n) => `fragment ${i} version ${n} `.repeat(20), delayMs: delays[i] }),
  );
  return { page, frags, counts: () => ({ shell: origin.count(page), fragments: frags.map((f) => origin.count(f)) }) };
}

// ---------------------------------------------------------------- systems

// Every worker is reached on its own workerd socket (`startWorkers`), not
// through Miniflare's entry worker, a JavaScript proxy in front of the
// default URL that production does not have: through it, each request paid
// for a second worker and the ceiling sat far lower.
async function startFragcache() {
  // Page records go to an Analytics Engine dataset, as the README advises
  // for busy sites: the fallback, a log line per page, costs about 15 % of
  // warm throughput here, most of it in this harness's log capture.
  const w = await startWorkers({
    config: { origin: origin.url, ...CONFIG },
    count: 1,
    coordinator: COORDINATOR,
    analytics: "discard",
  });
  return { url: w.urls[0], stop: () => w.dispose(), warnings: () => w.crossRequestWarnings() };
}

async function startTrivial(body, contentType) {
  // Under exactly the harness our worker runs under (same Miniflare
  // options, verbose logging and log capture included), so the ceiling is
  // the same runtime's, not a lighter one's.
  const dir = mkdtempSync(path.join(os.tmpdir(), "fragcache-trivial-"));
  const script = path.join(dir, "trivial.mjs");
  writeFileSync(
    script,
    `export default { fetch(_req, env) { return new Response(env.BODY, { headers: { "content-type": env.TYPE } }); } };`,
  );
  const w = await startWorkers({
    config: {},
    count: 1,
    coordinator: false,
    scriptPath: script,
    bindings: { BODY: body, TYPE: contentType },
  });
  return {
    url: w.urls[0],
    stop: async () => {
      await w.dispose();
      rmSync(dir, { recursive: true, force: true });
    },
    warnings: () => [],
    constant: true,
  };
}

function varnishVcl() {
  const grace = (r) => r.hard_ttl - r.soft_ttl;
  return `vcl 4.1;

backend origin { .host = "127.0.0.1"; .port = "${originPort}"; }

sub vcl_recv {
  if (req.url == "/__ready") { return (synth(200, "ready")); }
}

sub vcl_backend_response {
  if (bereq.url ~ "^/p/") {
    set beresp.do_esi = true;
    set beresp.ttl = ${PAGE.soft_ttl}s;
    set beresp.grace = ${grace(PAGE)}s;
  } elsif (bereq.url ~ "^/f/") {
    set beresp.ttl = ${FRAGMENT.soft_ttl}s;
    set beresp.grace = ${grace(FRAGMENT)}s;
  }
  return (deliver);
}
`;
}

async function startVarnish(varnishd) {
  const dir = mkdtempSync(path.join(os.tmpdir(), "fragcache-varnish-"));
  const vcl = path.join(dir, "bench.vcl");
  writeFileSync(vcl, varnishVcl());
  const port = await freePort();
  const argv = ["-F", "-j", "none", "-n", path.join(dir, "n"), "-a", `127.0.0.1:${port}`, "-f", vcl, "-s", "malloc,64m"];
  const child = spawn(varnishd, argv, { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  child.stdout.on("data", (d) => (log += d));
  child.stderr.on("data", (d) => (log += d));
  const exited = new Promise((r) => child.once("exit", r));
  const kill = () => {
    if (child.exitCode === null) child.kill("SIGTERM");
  };
  process.once("exit", kill);
  const stop = async () => {
    kill();
    await Promise.race([exited, sleep(5000)]);
    if (child.exitCode === null) child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  };
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`varnishd exited (${child.exitCode}):\n${log}`);
    const r = await get(url, "/__ready", undefined);
    if (r.status === 200) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`varnishd did not answer on ${url}:\n${log}`);
    }
    await sleep(100);
  }
  const v = spawnSync(varnishd, ["-V"], { encoding: "utf8" });
  const version = `${v.stdout}${v.stderr}`.split("\n")[0].replace(/^varnishd \((.*?) revision.*$/, "$1");
  return { url, stop, warnings: () => [], version, argv: [varnishd, ...argv], vcl: varnishVcl() };
}

// ---------------------------------------------------------------- scenarios

async function scenarios(id, sys) {
  const out = {};
  const usesOrigin = !sys.constant;
  const set = (name) => `${id}-${NONCE}-${name}`;
  const log = (m) => process.stderr.write(`[${id}] ${m}\n`);

  // Cold burst, then the same keys once their fragments are past soft TTL.
  const b = keyset(set("burst"), { shellMs: BURSTY.shellMs, delays: Array(BURSTY.fragments).fill(BURSTY.fragmentMs) });
  origin.reset();
  log(`cold burst of ${BURST}`);
  out.coldBurst = { ...(await burst(sys.url, b.page, BURST)), origin: b.counts() };
  await sleep(FRAGMENT.soft_ttl * 1000 + 300);
  origin.reset();
  log(`stale burst of ${BURST}`);
  const stale = await burst(sys.url, b.page, BURST);
  if (usesOrigin) {
    // Let the background refreshes land (and any duplicates show up).
    const until = Date.now() + 3000;
    while (Date.now() < until && !b.counts().fragments.every((n) => n >= 1)) await sleep(20);
    await sleep(BURSTY.fragmentMs + 200);
  }
  out.staleBurst = { ...stale, origin: b.counts() };

  // Warm page: one request fills it, then closed-loop load.
  const w = keyset(set("warm"), { delays: Array(WARM.fragments).fill(WARM.fragmentMs) });
  const fill = await get(sys.url, w.page, undefined, true);
  if (fill.status !== 200) throw new Error(`${id}: ${w.page} answered ${fill.status}`);
  await sleep(200);
  const warmBody = (await get(sys.url, w.page, undefined, true)).body;
  origin.reset();
  log(`warm load: ${CONCURRENCY} connections for ${STEADY_S} s`);
  out.warm = { ...(await steady(sys.url, w.page, CONCURRENCY, STEADY_S)), origin: w.counts(), bytes: warmBody.length };

  // Cold page of 10 × 100 ms fragments, one request at a time, fresh keys each.
  const coldTimes = [];
  for (let i = 0; i < COLD_PAGE.runs; i++) {
    const k = keyset(set(`coldpage${i}`), { delays: Array(COLD_PAGE.fragments).fill(COLD_PAGE.fragmentMs) });
    const r = await get(sys.url, k.page, undefined);
    if (r.status !== 200) throw new Error(`${id}: cold page answered ${r.status}`);
    coldTimes.push(r.ms);
  }
  log(`cold page: ${coldTimes.map((t) => t.toFixed(0)).join(", ")} ms`);
  out.coldPage = { runs: coldTimes.map((t) => Math.round(t * 100) / 100), median: Math.round(median(coldTimes) * 100) / 100 };

  // First body byte of a cold page whose last fragment takes 1 s: with
  // fetch's default headers (it accepts gzip, so workerd may compress), and
  // with Accept-Encoding: identity.
  await fetch(new URL("/__ready", sys.url)).then((r) => r.arrayBuffer()); // pooled connection
  for (const [key, headers] of [["firstByte", {}], ["firstByteIdentity", { "accept-encoding": "identity" }]]) {
    const fb = [];
    for (let i = 0; i < FIRST_BYTE.runs; i++) {
      const delays = Array(FIRST_BYTE.fragments).fill(0);
      delays[delays.length - 1] = FIRST_BYTE.lastMs;
      const k = keyset(set(`${key}${i}`), { delays });
      const r = await firstByte(sys.url, k.page, headers);
      if (r.status !== 200) throw new Error(`${id}: first-byte page answered ${r.status}`);
      fb.push(r);
    }
    log(`${key}: ${fb.map((r) => r.firstMs.toFixed(1)).join(", ")} ms`);
    out[key] = {
      requestHeaders: headers,
      contentEncoding: fb[0].contentEncoding,
      runs: fb.map((r) => ({ firstMs: Math.round(r.firstMs * 100) / 100, totalMs: Math.round(r.totalMs * 100) / 100 })),
      median: Math.round(median(fb.map((r) => r.firstMs)) * 100) / 100,
    };
  }
  return { out, warmBody };
}

// ---------------------------------------------------------------- run

const results = {
  date: new Date().toISOString(),
  command: `npm run bench -- --burst ${BURST} --steady ${STEADY_S} --concurrency ${CONCURRENCY} --coordinator ${COORDINATOR ? "on" : "off"}`,
  machine: { cpus: os.cpus().length, cpu: os.cpus()[0]?.model, node: process.version },
  shapes: { CONFIG, WARM, BURSTY, COLD_PAGE, FIRST_BYTE, GOALS },
  systems: {},
};
const stops = [];
try {
  const fc = await startFragcache();
  stops.push(fc.stop);
  const fcRun = await scenarios("fragcache", fc);
  results.systems.fragcache = fcRun.out;
  const warnings = fc.warnings();
  if (warnings.length) results.systems.fragcache.crossRequestWarnings = warnings.length;
  await fc.stop();

  const tw = await startTrivial(fcRun.warmBody.toString("utf8"), "text/html; charset=utf-8");
  stops.push(tw.stop);
  results.systems.trivial = (await scenarios("trivial", tw)).out;
  await tw.stop();

  const varnishd = findVarnishd();
  if (varnishd) {
    const vn = await startVarnish(varnishd);
    stops.push(vn.stop);
    results.systems.varnish = { version: vn.version, argv: vn.argv, vcl: vn.vcl, ...(await scenarios("varnish", vn)).out };
    await vn.stop();
  } else {
    results.systems.varnish = null;
    console.log("varnishd not found: Varnish column skipped. Install it with `sudo apt-get install varnish`.");
  }
} finally {
  for (const s of stops) await s().catch(() => {});
  await origin.close();
}

// ---------------------------------------------------------------- table

const { fragcache: F, trivial: T, varnish: V } = results.systems;
const fmt = (x, d = 1) => (x === undefined || x === null || Number.isNaN(x) ? "—" : x.toFixed(d));
const ratio = (a, b) => (a === undefined || b === undefined || !b ? "—" : `${(a / b).toFixed(2)}×`);
const perFrag = (o) => {
  if (!o) return "—";
  const u = [...new Set(o.fragments)];
  const f = u.length === 1 ? `${u[0]} each` : o.fragments.join(",");
  return `${f}; shell ${o.shell}`;
};
const rows = [
  {
    scenario: `warm page, ${WARM.fragments} fragments, ${CONCURRENCY} conns: req/s`,
    f: F.warm.rps, t: T.warm.rps, v: V?.warm.rps, d: 0,
    goal: `≥ ${GOALS.warmRps}× ceiling (${fmt(GOALS.warmRps * T.warm.rps, 0)})`,
    met: F.warm.rps >= GOALS.warmRps * T.warm.rps, ceilingRatio: true,
  },
  { scenario: "warm page: p50 ms", f: F.warm.p50, t: T.warm.p50, v: V?.warm.p50, ceilingRatio: true },
  {
    scenario: "warm page: p99 ms",
    f: F.warm.p99, t: T.warm.p99, v: V?.warm.p99,
    goal: `≤ ${GOALS.warmP99}× ceiling (${fmt(GOALS.warmP99 * T.warm.p99)})`,
    met: F.warm.p99 <= GOALS.warmP99 * T.warm.p99, ceilingRatio: true,
  },
  {
    scenario: `cold burst, ${BURST} conc (shell ${BURSTY.shellMs} ms + ${BURSTY.fragments} × ${BURSTY.fragmentMs} ms): p50 ms`,
    f: F.coldBurst.p50, t: T.coldBurst.p50, v: V?.coldBurst.p50,
    goal: `≤ ${GOALS.coldBurstP50}`, met: F.coldBurst.p50 <= GOALS.coldBurstP50,
  },
  { scenario: "cold burst: p99 ms", f: F.coldBurst.p99, t: T.coldBurst.p99, v: V?.coldBurst.p99 },
  {
    scenario: `stale burst, ${BURST} conc: p99 ms`,
    f: F.staleBurst.p99, t: T.staleBurst.p99, v: V?.staleBurst.p99,
    goal: `≤ ${GOALS.staleP99}× our warm p99 (${fmt(GOALS.staleP99 * F.warm.p99)})`,
    met: F.staleBurst.p99 <= GOALS.staleP99 * F.warm.p99,
  },
  {
    scenario: `cold page, ${COLD_PAGE.fragments} × ${COLD_PAGE.fragmentMs} ms fragments: total ms (median of ${COLD_PAGE.runs})`,
    f: F.coldPage.median, t: T.coldPage.median, v: V?.coldPage.median,
    goal: `≤ ${GOALS.coldPage}`, met: F.coldPage.median <= GOALS.coldPage,
  },
  ...[
    ["firstByte", "fetch defaults, gzip accepted"],
    ["firstByteIdentity", "Accept-Encoding: identity"],
  ].map(([k, how]) => ({
    scenario: `cold page, last fragment ${FIRST_BYTE.lastMs / 1000} s: first body byte ms, ${how} (median of ${FIRST_BYTE.runs})`,
    f: F[k].median, t: T[k].median, v: V?.[k].median, d: 1,
    goal: `≤ ${GOALS.firstByte}`, met: F[k].median <= GOALS.firstByte,
  })),
  { scenario: "cold burst: origin fetches per fragment", text: [perFrag(F.coldBurst.origin), "—", perFrag(V?.coldBurst.origin)] },
  { scenario: "stale burst: origin fetches per fragment", text: [perFrag(F.staleBurst.origin), "—", perFrag(V?.staleBurst.origin)] },
];

const lines = [
  "| scenario | fragcache | trivial worker (ceiling) | Varnish | goal | met | fragcache / ceiling | fragcache / Varnish |",
  "|---|---|---|---|---|---|---|---|",
];
results.table = [];
for (const r of rows) {
  if (r.text) {
    lines.push(`| ${r.scenario} | ${r.text.join(" | ")} | — | — | — | — |`);
    results.table.push({ scenario: r.scenario, fragcache: r.text[0], trivial: null, varnish: r.text[2] });
    continue;
  }
  const met = r.goal ? (r.met ? "met" : "not met") : "—";
  lines.push(
    `| ${r.scenario} | ${fmt(r.f, r.d)} | ${fmt(r.t, r.d)} | ${V ? fmt(r.v, r.d) : "skipped"} | ${r.goal ?? "—"} | ${met} | ` +
      `${r.ceilingRatio ? ratio(r.f, r.t) : "—"} | ${V ? ratio(r.f, r.v) : "—"} |`,
  );
  results.table.push({
    scenario: r.scenario, fragcache: r.f, trivial: r.t, varnish: r.v ?? null,
    goal: r.goal ?? null, met: r.goal ? r.met : null,
  });
}

const resultsDir = path.join(REPO_ROOT, "bench", "results");
mkdirSync(resultsDir, { recursive: true });
const out = path.join(resultsDir, COORDINATOR ? "latest-coordinator.json" : "latest.json");
writeFileSync(out, JSON.stringify(results, null, 2) + "\n");

console.log(`\n${results.date}, ${results.machine.cpus} CPUs, node ${process.version}${V ? `, ${V.version}` : ""}\n`);
console.log(lines.join("\n"));
if (F.crossRequestWarnings) console.log(`\nWARNING: ${F.crossRequestWarnings} cross-request warnings from workerd`);
console.log(`\nfull results: ${path.relative(process.cwd(), out) || out}`);
