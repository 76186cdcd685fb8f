// Load script (`npm run bench`): bursts against the built worker running in
// workerd (the runtime `wrangler dev` uses, driven here through Miniflare so
// the script controls the config and KV), with a real origin on 127.0.0.1
// that counts requests. Prints origin fetches per fragment and latency
// percentiles for a cold burst, a stale burst and a warm steady state.
//
// Usage: npm run bench [-- --burst 200 --steady 2000 --concurrency 50]

import { startOrigin } from "../tests/support/origin.mjs";
import { startWorker, waitFor } from "../tests/support/worker.mjs";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const BURST = Number(args.burst ?? 200);
const STEADY = Number(args.steady ?? 2000);
const CONCURRENCY = Number(args.concurrency ?? 50);
const FRAGMENTS = 10;
const FRAGMENT_MS = 100;

const origin = await startOrigin();
const worker = await startWorker({
  config: {
    origin: origin.url,
    pages: [{ path: "/page", soft_ttl: 60, hard_ttl: 600 }],
    fragments: [{ path: "/f/*", soft_ttl: 2, hard_ttl: 600, jitter: 0, xfetch_beta: 0 }],
  },
});

const shell = Array.from({ length: FRAGMENTS }, (_, i) => `<section><esi:include src="/f/${i}"/></section>`).join("\n");
origin.route("/page", { body: `<!doctype html><title>bench</title>\n${shell}\n` });
for (let i = 0; i < FRAGMENTS; i++) {
  origin.route(`/f/${i}`, { body: (_req, n) => `fragment ${i} version ${n} `.repeat(20), delayMs: FRAGMENT_MS });
}

function pct(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function timed() {
  const t0 = performance.now();
  const res = await worker.fetch("/page");
  await res.arrayBuffer();
  if (res.status !== 200) throw new Error(`status ${res.status}`);
  return performance.now() - t0;
}

async function run(total, concurrency) {
  const times = [];
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < total) {
        next++;
        times.push(await timed());
      }
    }),
  );
  const wall = performance.now() - t0;
  times.sort((a, b) => a - b);
  return { n: total, p50: pct(times, 50), p99: pct(times, 99), rps: (total / wall) * 1000 };
}

function fragmentFetches() {
  return Array.from({ length: FRAGMENTS }, (_, i) => origin.count(`/f/${i}`));
}

const rows = [];
origin.reset();
const cold = await run(BURST, BURST);
rows.push({ scenario: `cold burst (${BURST} concurrent)`, ...cold, fetches: fragmentFetches() });

const meta = await waitFor(async () => (await worker.kv.list()).keys.find((k) => k.name.includes("/f/9"))?.metadata, {
  message: "fragments stored",
});
await waitFor(() => Date.now() > meta.f + 50, { timeoutMs: 10_000, message: "fragments stale" });
origin.reset();
const stale = await run(BURST, BURST);
rows.push({ scenario: `stale burst (${BURST} concurrent)`, ...stale, fetches: fragmentFetches() });

// Steady state: wait for the refreshes to land, then measure hits.
await waitFor(() => fragmentFetches().every((n) => n >= 1), { message: "refreshes done" });
origin.reset();
const warm = await run(STEADY, CONCURRENCY);
rows.push({ scenario: `warm steady (${STEADY} req, ${CONCURRENCY} conc)`, ...warm, fetches: fragmentFetches() });

console.log(`\npage with ${FRAGMENTS} fragments of ${FRAGMENT_MS} ms each; soft TTL 2 s\n`);
console.log("| scenario | requests | p50 ms | p99 ms | req/s | origin fetches per fragment |");
console.log("|---|---|---|---|---|---|");
for (const r of rows) {
  const per = [...new Set(r.fetches)].length === 1 ? `${r.fetches[0]} each` : r.fetches.join(",");
  console.log(`| ${r.scenario} | ${r.n} | ${r.p50.toFixed(1)} | ${r.p99.toFixed(1)} | ${r.rps.toFixed(0)} | ${per} |`);
}
const warnings = worker.crossRequestWarnings();
if (warnings.length) console.log(`\nWARNING: ${warnings.length} cross-request warnings from workerd`);
await worker.dispose();
await origin.close();
