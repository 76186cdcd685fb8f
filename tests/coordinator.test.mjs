// Origin protection across isolates, end to end: two instances of the real
// wasm worker in one Miniflare (each its own isolate) sharing one KV
// namespace and one Durable Object namespace (the FragmentCoordinator class
// the worker exports), against a real counting origin on 127.0.0.1.
//
// - A cold burst split over both isolates: one origin fetch per fragment
//   with the coordinator; without it, one per isolate.
// - A stale burst over both: one refresh per fragment.
// - The coordinator unreachable: every page still served, per isolate.
// - An origin outage of 30 s (500, hang, reset in turn) under steady load:
//   every page served stale, about one probe a second, fresh content back
//   within 2 s of the origin healing.

import { test, after } from "node:test";
import assert from "node:assert/strict";
import { startOrigin } from "./support/origin.mjs";
import { startWorkers, waitFor } from "./support/worker.mjs";

const FRAGMENTS = 5;
const fragPaths = Array.from({ length: FRAGMENTS }, (_, i) => `/frag/p${i}`);
const shell = fragPaths.map((p) => `<esi:include src="${p}"/>`).join("|");

/** Everything started by a test, stopped after all of them. */
const running = [];
after(async () => {
  for (const r of running) await r.dispose?.().catch(() => {});
});

async function setUp({ coordinator, fragmentRoute = {}, delayMs = 300 }) {
  const origin = await startOrigin();
  origin.route("/page/*", { body: shell });
  origin.route("/frag/*", { body: (req, n) => `${new URL(req.url, "http://x").pathname}@${n}`, delayMs });
  const workers = await startWorkers({
    coordinator,
    config: {
      origin: origin.url,
      pages: [{ path: "/page/*" }],
      fragments: [{ path: "/frag/*", soft_ttl: 60, hard_ttl: 600, jitter: 0, xfetch_beta: 0, ...fragmentRoute }],
    },
  });
  running.push(workers, { dispose: () => origin.close() });
  return { origin, workers };
}

/** `n` concurrent page requests, alternating between the isolates. */
async function burst(workers, n, path = "/page/a") {
  return Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const res = await workers.fetch(i % 2, path);
      return { status: res.status, body: await res.text(), x: res.headers.get("x-fragcache") ?? "" };
    }),
  );
}

function fragmentFetches(origin) {
  return fragPaths.map((p) => origin.count(p));
}

test("a cold burst over two isolates: one origin fetch per fragment with the coordinator, one per isolate without", async (t) => {
  const counts = {};
  for (const coordinator of [true, false]) {
    const { origin, workers } = await setUp({ coordinator });
    const pages = await burst(workers, 200);
    for (const p of pages) {
      assert.equal(p.status, 200, p.body);
      assert.match(p.body, /^\/frag\/p0@\d+\|\/frag\/p1@\d+\|\/frag\/p2@\d+\|\/frag\/p3@\d+\|\/frag\/p4@\d+$/);
    }
    counts[coordinator] = fragmentFetches(origin);
    assert.deepEqual(workers.crossRequestWarnings(), []);
    await workers.dispose();
    await origin.close();
  }
  t.diagnostic(`origin fetches per fragment, coordinator: ${counts.true}; per isolate: ${counts.false}`);
  assert.deepEqual(counts.true, [1, 1, 1, 1, 1]);
  for (const c of counts.false) assert.ok(c >= 1 && c <= 2, `${counts.false}`);
});

test("a stale burst over two isolates refreshes each fragment once", async () => {
  const { origin, workers } = await setUp({ coordinator: true, fragmentRoute: { soft_ttl: 1 }, delayMs: 200 });
  await burst(workers, 20);
  assert.deepEqual(fragmentFetches(origin), [1, 1, 1, 1, 1]);
  // Let the copies go stale (soft TTL 1 s), then burst again.
  await new Promise((resolve) => setTimeout(resolve, 1200));
  const pages = await burst(workers, 200);
  assert.ok(pages.every((p) => p.status === 200));
  const stale = pages.filter((p) => /\/frag\/p0=stale/.test(p.x)).length;
  assert.ok(stale > 0, "served stale while refreshing");
  await waitFor(() => fragmentFetches(origin).every((c) => c === 2), { message: "one refresh each" });
  // Give any second refresh a chance to show up before counting.
  await new Promise((resolve) => setTimeout(resolve, 500));
  assert.deepEqual(fragmentFetches(origin), [2, 2, 2, 2, 2]);
  assert.deepEqual(workers.crossRequestWarnings(), []);
});

test("an unreachable coordinator: pages are still served, one fetch per isolate", async () => {
  for (const mode of ["broken", "hung"]) {
    const { origin, workers } = await setUp({
      coordinator: mode,
      fragmentRoute: { timeout_ms: 1000 },
      delayMs: 100,
    });
    const pages = await burst(workers, 40);
    for (const p of pages) assert.equal(p.status, 200, `${mode}: ${p.body}`);
    for (const c of fragmentFetches(origin)) assert.ok(c >= 1 && c <= 2, `${mode}: ${fragmentFetches(origin)}`);
    assert.ok(workers.logs.some((l) => /fetching directly/.test(l)), `${mode}: fallback logged`);
    await workers.dispose();
    await origin.close();
  }
});

test("a 30 s origin outage under steady load: stale pages, about one probe a second, back within 2 s", async (t) => {
  const STALE_FRAGMENTS = 20;
  const paths = Array.from({ length: STALE_FRAGMENTS }, (_, i) => `/frag/o${i}`);
  const origin = await startOrigin();
  origin.route("/page/outage", { body: paths.map((p) => `<esi:include src="${p}"/>`).join(",") });
  let version = "old";
  origin.route("/frag/*", { body: (req) => `${version}:${new URL(req.url, "http://x").pathname}` });
  const workers = await startWorkers({
    coordinator: true,
    config: {
      origin: origin.url,
      pages: [{ path: "/page/*" }],
      fragments: [{ path: "/frag/*", soft_ttl: 1, hard_ttl: 600, jitter: 0, xfetch_beta: 0, timeout_ms: 1000 }],
    },
  });
  running.push(workers, { dispose: () => origin.close() });
  const page = async (i) => {
    const res = await workers.fetch(i % 2, "/page/outage");
    return { status: res.status, body: await res.text() };
  };
  // Warm both isolates, then let the copies go stale.
  await Promise.all([page(0), page(1)]);
  await new Promise((resolve) => setTimeout(resolve, 1100));

  const fragCount = () => paths.reduce((n, p) => n + origin.count(p), 0);
  const before = fragCount();
  const perSecond = [];
  let failedPages = 0;
  let oldPages = 0;
  for (const [mode, opts] of [["status", { status: 500 }], ["hang", {}], ["reset", {}]]) {
    origin.fail("/frag/*", mode, opts);
    for (let s = 0; s < 10; s++) {
      const atStart = fragCount();
      const until = Date.now() + 1000;
      while (Date.now() < until) {
        const results = await Promise.all([page(0), page(1)]);
        for (const r of results) {
          if (r.status !== 200) failedPages += 1;
          else if (r.body.startsWith("old:")) oldPages += 1;
        }
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      perSecond.push(fragCount() - atStart);
    }
  }
  const duringOutage = fragCount() - before;
  // The origin heals with new content.
  version = "new";
  origin.fail("/frag/*", "ok");
  const healedAt = Date.now();
  const recovered = await waitFor(
    async () => {
      const results = await Promise.all([page(0), page(1)]);
      return results.every((r) => r.status === 200 && r.body.split(",").every((f) => f.startsWith("new:")))
        ? Date.now() - healedAt
        : undefined;
    },
    { timeoutMs: 5000, intervalMs: 50, message: "fresh content after the origin healed" },
  );
  t.diagnostic(
    `outage 30 s: ${duringOutage} origin requests (per second: ${perSecond.join(" ")}), ` +
      `${oldPages} stale pages served, ${failedPages} failed; fresh again ${recovered} ms after healing`,
  );
  assert.equal(failedPages, 0, "every page served");
  assert.ok(oldPages > 100, `${oldPages} stale pages`);
  // One breaker for the origin, shared by both isolates: after the first
  // failures open it, about one probe a second (jittered 0.5–1 s).
  assert.ok(duringOutage <= STALE_FRAGMENTS + 3 + 30 * 2 + 10, `${duringOutage} origin requests in 30 s`);
  assert.ok(recovered <= 2000, `recovered after ${recovered} ms`);
  assert.deepEqual(workers.crossRequestWarnings(), []);
});
