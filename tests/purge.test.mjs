// Purging: the authenticated endpoint deletes every stored variant of a
// path, so the next request fetches from the origin again.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startOrigin } from "./support/origin.mjs";
import { startWorker, waitFor } from "./support/worker.mjs";

let origin;
let worker;
const TOKEN = "s3cret-purge-token";

before(async () => {
  origin = await startOrigin();
  worker = await startWorker({
    config: {
      origin: origin.url,
      pages: [{ path: "/p/*" }],
      fragments: [{ path: "/frag/*", soft_ttl: 300, hard_ttl: 3600 }],
    },
    bindings: { FRAGCACHE_ADMIN_TOKEN: TOKEN },
  });
});

after(async () => {
  await worker?.dispose();
  await origin?.close();
});

const purge = (query, token = TOKEN) =>
  worker.fetch(`/_fragcache/purge?${query}`, {
    method: "POST",
    headers: token ? { authorization: `Bearer ${token}` } : {},
  });

test("purge needs POST and the right token", async () => {
  assert.equal((await worker.fetch("/_fragcache/purge?path=/frag/x")).status, 401);
  const get = await worker.fetch("/_fragcache/purge?path=/frag/x", {
    headers: { authorization: `Bearer ${TOKEN}` },
  });
  assert.equal(get.status, 405);
  assert.equal(get.headers.get("allow"), "POST");
  assert.equal((await purge("path=/frag/x", "wrong")).status, 401);
  assert.equal((await purge("path=/frag/x", null)).status, 401);
  assert.equal((await purge("nothing=1")).status, 400);
});

test("a purged fragment is fetched again; others stay cached", async () => {
  origin.route("/p/news", { body: `<esi:include src="/frag/news?x=1"/>|<esi:include src="/frag/weather"/>` });
  origin.route("/frag/news", { body: (_req, n) => `news v${n}` });
  origin.route("/frag/weather", { body: (_req, n) => `weather v${n}` });
  assert.equal(await (await worker.fetch("/p/news")).text(), "news v1|weather v1");
  await waitFor(async () => (await worker.kv.list()).keys.length === 2, { message: "both stored" });
  assert.equal(await (await worker.fetch("/p/news")).text(), "news v1|weather v1");

  const res = await purge("path=/frag/news");
  assert.equal(res.status, 200);
  const report = await res.json();
  assert.equal(report.purged, 1, JSON.stringify(report));
  assert.match(report.keys[0], /\/frag\/news\?x=1$/);

  assert.equal(await (await worker.fetch("/p/news")).text(), "news v2|weather v1");
  assert.equal(origin.count("/frag/news"), 2);
  assert.equal(origin.count("/frag/weather"), 1);
});

test("without the secret the endpoint is disabled", async () => {
  const plain = await startWorker({ config: { origin: origin.url } });
  try {
    const res = await plain.fetch("/_fragcache/purge?path=/x", { method: "POST" });
    assert.equal(res.status, 404);
    assert.match(await res.text(), /FRAGCACHE_ADMIN_TOKEN/);
  } finally {
    await plain.dispose();
  }
});
