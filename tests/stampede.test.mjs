// Stale-while-revalidate and stampede protection, end to end: the real wasm
// worker under Miniflare, hundreds of concurrent streaming requests, and a
// real origin on 127.0.0.1 that counts what reaches it. Any cross-request
// I/O warning from workerd fails the run.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startOrigin } from "./support/origin.mjs";
import { startWorker, waitFor } from "./support/worker.mjs";

let origin;
let worker;

before(async () => {
  origin = await startOrigin();
  worker = await startWorker({
    config: {
      origin: origin.url,
      pages: [{ path: "/p/*" }, { path: "/cached/*", soft_ttl: 600, hard_ttl: 3600 }],
      fragments: [
        { path: "/cold-fail/*", soft_ttl: 30, hard_ttl: 300, cold: "fail", retry_after: 3, jitter: 0 },
        { path: "/short/*", soft_ttl: 1, hard_ttl: 300, jitter: 0, xfetch_beta: 0, timeout_ms: 800 },
        { path: "/slow/*", soft_ttl: 1, hard_ttl: 300, jitter: 0, xfetch_beta: 0 },
        { path: "/f/*", soft_ttl: 60, hard_ttl: 600, jitter: 0, xfetch_beta: 0 },
      ],
    },
  });
});

after(async () => {
  await worker?.dispose();
  await origin?.close();
});

function assertNoCrossRequestIo() {
  assert.deepEqual(worker.crossRequestWarnings(), [], "workerd reported cross-request I/O");
}

async function burst(n, path, init) {
  return Promise.all(
    Array.from({ length: n }, async () => {
      const res = await worker.fetch(path, init);
      return { status: res.status, headers: res.headers, body: await res.text() };
    }),
  );
}

async function kvMeta(fragment) {
  const keys = (await worker.kv.list()).keys.filter((k) => k.name.includes(fragment));
  return keys[0]?.metadata;
}

/** Waits (bounded, by polling KV metadata) until `fragment`'s soft TTL is over. */
async function waitUntilStale(fragment) {
  const meta = await waitFor(() => kvMeta(fragment), { message: `${fragment} stored` });
  await waitFor(() => Date.now() > meta.f + 20, { timeoutMs: 5000, message: `${fragment} stale` });
  return meta;
}

test("200 concurrent requests on a cold fragment: one origin fetch", async () => {
  origin.route("/p/cold", { body: `<div><esi:include src="/f/cold"/></div>` });
  origin.route("/f/cold", { body: "COLD", delayMs: 300 });
  const results = await burst(200, "/p/cold");
  assert.equal(origin.count("/f/cold"), 1);
  for (const r of results) {
    assert.equal(r.status, 200);
    assert.equal(r.body, "<div>COLD</div>");
  }
  // Headers never wait for a lookup: a request whose KV read was still out
  // says "lookup"; the origin count above is what proves one fetch. On a
  // loaded machine the last requests of the burst may arrive after the
  // 300 ms fetch has landed, and find the copy it left in memory ("hit").
  const statuses = results.map((r) => r.headers.get("x-fragcache").match(/\/f\/cold=(\w+)/)[1]);
  assert.ok(statuses.filter((s) => s === "miss").length <= 1, statuses.join());
  assert.ok(statuses.every((s) => ["lookup", "miss", "coalesced", "hit"].includes(s)), statuses.join());
  assertNoCrossRequestIo();
});

test("200 concurrent requests on a stale fragment: stale served, one refresh", async () => {
  // The shell is cached too, so the burst reaches the fragment lookup at once;
  // the refresh takes 1.5 s, far longer than serving the whole burst.
  origin.route("/cached/stale", { body: `[<esi:include src="/slow/s"/>]` });
  origin.route("/slow/s", { body: (_req, n) => `v${n}`, delayMs: 1500 });
  const first = await worker.fetch("/cached/stale");
  assert.equal(await first.text(), "[v1]");
  await waitUntilStale("/slow/s");
  const t0 = Date.now();
  const results = await burst(200, "/cached/stale");
  const elapsed = Date.now() - t0;
  assert.ok(elapsed < 1500, `burst took ${elapsed} ms: someone waited for the refresh`);
  for (const r of results) {
    assert.equal(r.status, 200);
    assert.equal(r.body, "[v1]", "stale body served without waiting");
    assert.match(r.headers.get("x-fragcache"), /\/slow\/s=stale/);
  }
  // Exactly one refresh reaches the origin, and its result replaces the entry.
  await waitFor(async () => (await worker.fetch("/cached/stale").then((r) => r.text())) === "[v2]", {
    message: "refreshed body served",
  });
  assert.equal(origin.count("/slow/s"), 2);
  assertNoCrossRequestIo();
});

test("origin 500, hang and reset during refresh: stale served, refreshes back off", async () => {
  for (const [i, mode] of ["status", "hang", "reset"].entries()) {
    const frag = `/short/e${i}`;
    origin.route(`/p/err${i}`, { body: `<esi:include src="${frag}"/>` });
    origin.route(frag, { body: "good" });
    assert.equal(await worker.fetch(`/p/err${i}`).then((r) => r.text()), "good");
    await waitUntilStale(frag);
    origin.fail(frag, mode, { status: 500 });
    const before = origin.count(frag);
    // Two seconds of traffic, one request every 50 ms.
    const started = Date.now();
    while (Date.now() - started < 2000) {
      const t0 = Date.now();
      const res = await worker.fetch(`/p/err${i}`);
      assert.equal(await res.text(), "good", `${mode}: stale kept`);
      assert.ok(Date.now() - t0 < 500, `${mode}: stale served at hit latency`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const attempts = origin.count(frag) - before;
    // Back-off of 1 s then 2 s (jittered down to half): at most 3 in 2 s, never ~40.
    assert.ok(attempts >= 1 && attempts <= 3, `${mode}: ${attempts} refresh attempts`);
    origin.fail(frag, "ok");
  }
  assertNoCrossRequestIo();
});

test("cold policy fail: followers get 503 with Retry-After", async () => {
  origin.route("/p/cf", { body: `<esi:include src="/cold-fail/x"/>` });
  origin.route("/cold-fail/x", { body: "X", delayMs: 400 });
  const results = await burst(20, "/p/cf");
  const ok = results.filter((r) => r.status === 200);
  const busy = results.filter((r) => r.status === 503);
  assert.equal(ok.length, 1);
  assert.equal(busy.length, 19);
  for (const r of busy) assert.equal(r.headers.get("retry-after"), "3");
  assert.equal(origin.count("/cold-fail/x"), 1);
  assertNoCrossRequestIo();
});

test("a leader whose client disconnects still completes the fetch", async () => {
  origin.route("/p/abort", { body: `<esi:include src="/f/abort"/>` });
  origin.route("/f/abort", { body: "DONE", delayMs: 300 });
  const controller = new AbortController();
  const aborted = worker.fetch("/p/abort", { signal: controller.signal }).catch(() => null);
  await waitFor(() => origin.count("/f/abort") === 1, { message: "leader fetch started" });
  const followers = burst(20, "/p/abort");
  controller.abort();
  await aborted;
  for (const r of await followers) assert.equal(r.body, "DONE");
  assert.equal(origin.count("/f/abort"), 1);
  assertNoCrossRequestIo();
});
