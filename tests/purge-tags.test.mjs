// Purge by tag, soft purge and purges reaching another isolate, end to end:
// the release wasm worker under Miniflare against a real counting origin.
//
// - tag=/soft= need the admin token: a wrong, missing or malformed one
//   changes nothing (KV and origin counts compared before and after);
// - the origin's Cache-Tag / Surrogate-Key never reach a client;
// - purge by tag removes every variant of the tagged fragment and nothing
//   else;
// - soft purge: the old copy once (stale), then the refreshed one, with one
//   origin fetch;
// - a purge made through one isolate reaches the other within the
//   documented bound (purge.check_interval_ms plus one log read), with and
//   without the coordinator.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startOrigin } from "./support/origin.mjs";
import { startWorker, startWorkers, waitFor } from "./support/worker.mjs";

const TOKEN = "s3cret-purge-token";
const CHECK_INTERVAL_MS = 1000;

const config = (originUrl) => ({
  origin: originUrl,
  purge: { check_interval_ms: CHECK_INTERVAL_MS },
  pages: [{ path: "/p/*" }],
  fragments: [
    { path: "/frag/*", soft_ttl: 300, hard_ttl: 3600, jitter: 0, xfetch_beta: 0, vary: { query: ["lang"] } },
  ],
});

let origin;
let worker;

before(async () => {
  origin = await startOrigin();
  origin.route("/p/*", { body: `<esi:include src="/frag/shoes"/>|<esi:include src="/frag/hats"/>` });
  origin.route("/frag/shoes", { body: (_req, n) => `shoes v${n}`, headers: { "cache-tag": "shoes, sale" } });
  origin.route("/frag/hats", { body: (_req, n) => `hats v${n}`, headers: { "surrogate-key": "hats sale-2" } });
  origin.route("/raw", { body: "raw", headers: { "cache-tag": "raw", "surrogate-key": "raw" } });
  worker = await startWorker({ config: config(origin.url), bindings: { FRAGCACHE_ADMIN_TOKEN: TOKEN } });
});

after(async () => {
  await worker?.dispose();
  await origin?.close();
});

const purge = (w, query, authorization = `Bearer ${TOKEN}`) =>
  w(`/_fragcache/purge?${query}`, {
    method: "POST",
    headers: authorization === null ? {} : { authorization },
  });

/** Every KV key with its value and metadata, to compare before and after. */
async function kvSnapshot(kv) {
  const out = {};
  for (const { name } of (await kv.list()).keys) {
    const { value, metadata } = await kv.getWithMetadata(name, "text");
    out[name] = { value, metadata };
  }
  return out;
}

const page = async (w, path) => {
  const res = await w(path);
  return { status: res.status, body: await res.text(), x: res.headers.get("x-fragcache") ?? "", headers: res.headers };
};

test("tags never reach a client, on assembled pages or responses passed through", async () => {
  const p = await page(worker.fetch, "/p/tags");
  assert.equal(p.body, "shoes v1|hats v1");
  for (const h of ["cache-tag", "surrogate-key"]) assert.equal(p.headers.get(h), null, h);
  const raw = await worker.fetch("/raw");
  assert.equal(await raw.text(), "raw");
  for (const h of ["cache-tag", "surrogate-key"]) assert.equal(raw.headers.get(h), null, h);
});

test("tag and soft purges need the token: a wrong, missing or malformed one changes nothing", async () => {
  for (const lang of ["en", "de"]) assert.equal((await page(worker.fetch, `/p/auth?lang=${lang}`)).status, 200);
  await waitFor(async () => (await worker.kv.list({ prefix: "t:shoes " })).keys.length >= 2, { message: "indexed" });
  const kvBefore = await kvSnapshot(worker.kv);
  const counts = () => [origin.count("/frag/shoes"), origin.count("/frag/hats")];
  const countsBefore = counts();
  for (const auth of [null, "Bearer wrong", `Bearer ${TOKEN}x`, `Basic ${TOKEN}`, "Bearer", TOKEN, `Bearer${TOKEN}`]) {
    for (const query of ["tag=shoes", "tag=shoes&soft=1", "path=/frag/shoes&soft=1", "tag=hats&tag=shoes"]) {
      const res = await purge(worker.fetch, query, auth);
      assert.equal(res.status, 401, `${auth} ${query}`);
      assert.match((await res.json()).error, /token/);
    }
  }
  assert.deepEqual(await kvSnapshot(worker.kv), kvBefore, "KV unchanged");
  const again = await page(worker.fetch, "/p/auth?lang=en");
  assert.match(again.x, /\/frag\/shoes=hit/, "still cached in memory");
  assert.deepEqual(counts(), countsBefore, "no origin fetch");

  // Bad parameters with the right token: 400, nothing changes either.
  for (const query of ["tag=", "tag=a%20b", "tag=shoes&soft=maybe", "soft=1"]) {
    const res = await purge(worker.fetch, query);
    assert.equal(res.status, 400, query);
    assert.match((await res.json()).error, /fragcache:/);
  }
  assert.deepEqual(await kvSnapshot(worker.kv), kvBefore, "KV unchanged by refused requests");

  // The right token works.
  const ok = await purge(worker.fetch, "tag=shoes&soft=1");
  assert.equal(ok.status, 200);
  const report = await ok.json();
  assert.ok(report.softened >= 2, JSON.stringify(report));
  assert.equal(report.purged, 0);
});

test("purge by tag removes every variant of the tagged fragment and nothing else", async () => {
  const langs = ["fr", "it", "es"];
  for (const lang of langs) assert.equal((await page(worker.fetch, `/p/variants?lang=${lang}`)).status, 200);
  await waitFor(async () => {
    const keys = (await worker.kv.list({ prefix: "t:hats " })).keys.map((k) => k.name);
    return langs.every((l) => keys.some((k) => k.includes(`q.lang=${l}`)));
  }, { message: "every variant indexed" });
  const shoes = origin.count("/frag/shoes");
  const hats = origin.count("/frag/hats");

  const res = await purge(worker.fetch, "tag=hats");
  assert.equal(res.status, 200);
  const report = await res.json();
  assert.equal(report.errors.length, 0, JSON.stringify(report));
  const purged = report.keys.filter((k) => /q\.lang=(fr|it|es)/.test(k));
  assert.equal(purged.length, 3, JSON.stringify(report));
  assert.ok(report.keys.every((k) => k.includes("/frag/hats")), "only the tagged fragment");
  assert.equal(report.purged, report.keys.length);

  for (const lang of langs) {
    const p = await page(worker.fetch, `/p/variants?lang=${lang}`);
    assert.match(p.x, /\/frag\/hats=(miss|lookup)/, lang);
    assert.match(p.x, /\/frag\/shoes=hit/, lang);
    assert.match(p.body, /\|hats v\d+$/);
  }
  assert.equal(origin.count("/frag/hats"), hats + 3, "each variant fetched again");
  assert.equal(origin.count("/frag/shoes"), shoes, "the other fragment untouched");
});

test("soft purge serves the old copy once, then the refreshed one, with one origin fetch", async () => {
  origin.route("/p/soft", { body: `<esi:include src="/frag/soft"/>` });
  origin.route("/frag/soft", { body: (_req, n) => `soft v${n}`, headers: { "cache-tag": "soft" }, delayMs: 50 });
  assert.equal((await page(worker.fetch, "/p/soft")).body, "soft v1");
  await waitFor(async () => (await worker.kv.list({ prefix: "t:soft " })).keys.length === 1, { message: "indexed" });
  assert.match((await page(worker.fetch, "/p/soft")).x, /\/frag\/soft=hit/);

  const res = await purge(worker.fetch, "tag=soft&soft=1");
  const report = await res.json();
  assert.equal(res.status, 200, JSON.stringify(report));
  assert.equal(report.softened, 1, JSON.stringify(report));
  const key = report.keys[0];
  const kept = await worker.kv.getWithMetadata(key, "text");
  assert.match(kept.value, /soft v1$/, "KV keeps the body");

  const old = await page(worker.fetch, "/p/soft");
  assert.equal(old.body, "soft v1");
  assert.match(old.x, /\/frag\/soft=stale/);
  await waitFor(() => origin.count("/frag/soft") === 2, { message: "one background refresh" });
  await waitFor(async () => (await page(worker.fetch, "/p/soft")).body === "soft v2", { message: "refreshed copy served" });
  assert.equal(origin.count("/frag/soft"), 2);
});

for (const coordinator of [true, false]) {
  test(`a purge reaches the second isolate within the documented bound (coordinator: ${coordinator})`, async (t) => {
    const o = await startOrigin();
    o.route("/p/*", { body: `<esi:include src="/frag/x"/>` });
    o.route("/frag/x", { body: (_req, n) => `x v${n}`, headers: { "surrogate-key": "x" } });
    const workers = await startWorkers({ coordinator, config: config(o.url), bindings: { FRAGCACHE_ADMIN_TOKEN: TOKEN } });
    try {
      const one = (p, init) => workers.fetch(1, p, init);
      assert.equal((await page(one, "/p/x")).body, "x v1");
      assert.match((await page(one, "/p/x")).x, /\/frag\/x=hit/, "isolate 1 holds it in memory");
      const start = Date.now();
      const res = await purge((p, init) => workers.fetch(0, p, init), "tag=x");
      const report = await res.json();
      assert.equal(res.status, 200, JSON.stringify(report));
      assert.equal(report.purged, 1, JSON.stringify(report));
      const purgedIn = Date.now() - start;
      // Bound: the check interval, plus the read of the log and one request.
      const bound = CHECK_INTERVAL_MS + 1000;
      await waitFor(async () => (await page(one, "/p/x")).body === "x v2", {
        timeoutMs: bound,
        intervalMs: 50,
        message: `isolate 1 serves new content within ${bound} ms`,
      });
      const took = Date.now() - start;
      t.diagnostic(`purge answered in ${purgedIn} ms; isolate 1 served new content ${took} ms after the purge was sent (bound ${bound} ms)`);
      assert.equal(o.count("/frag/x"), 2);
      assert.deepEqual(workers.crossRequestWarnings(), []);
    } finally {
      await workers.dispose();
      await o.close();
    }
  });
}
