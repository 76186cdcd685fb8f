// Integration tests of the foundation: the real wasm worker under Miniflare,
// assembling pages from a real origin on 127.0.0.1 that counts requests.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startOrigin } from "./support/origin.mjs";
import { startWorker, waitFor } from "./support/worker.mjs";

let origin;
let worker;

const config = (originUrl, extra = {}) => ({
  origin: originUrl,
  limits: { max_depth: 3 },
  pages: [
    { path: "/", soft_ttl: 30, hard_ttl: 300 },
    { path: "/pages/*" },
  ],
  fragments: [
    { path: "/frag/private", private: true },
    { path: "/frag/*", soft_ttl: 30, hard_ttl: 300, jitter: 0 },
  ],
  ...extra,
});

before(async () => {
  origin = await startOrigin();
  worker = await startWorker({ config: config(origin.url) });
});

after(async () => {
  await worker?.dispose();
  await origin?.close();
  const warnings = worker?.crossRequestWarnings() ?? [];
  assert.deepEqual(warnings, [], "workerd reported cross-request I/O");
});

async function get(path, init) {
  const res = await worker.fetch(path, init);
  return { res, body: await res.text() };
}

test("assembles includes in document order", async () => {
  origin.route("/pages/order", {
    body: `<p>a</p><esi:include src="/frag/o1"/><p>b</p><esi:include src='/frag/o2' /><esi:include
      src = "/frag/o3"/>end`,
  });
  origin.route("/frag/o1", { body: "ONE", delayMs: 120 });
  origin.route("/frag/o2", { body: "TWO", delayMs: 10 });
  origin.route("/frag/o3", { body: "THREE", delayMs: 60 });
  const { res, body } = await get("/pages/order");
  assert.equal(res.status, 200);
  assert.equal(body, "<p>a</p>ONE<p>b</p>TWOTHREEend");
  // Cold, and not in this isolate's memory: still being looked up (in KV)
  // when the headers went out, which never delay the first bytes.
  assert.match(res.headers.get("x-fragcache"), /\/frag\/o1=(lookup|miss)/);
  assert.ok(res.headers.get("server-timing"));
});

test("a fragment is served from KV on the second request", async () => {
  origin.route("/pages/cached", { body: `[<esi:include src="/frag/c1"/>]` });
  origin.route("/frag/c1", { body: "cached-body" });
  const first = await get("/pages/cached");
  assert.equal(first.body, "[cached-body]");
  // The write-back runs after the response (wait_until): wait for it.
  await waitFor(async () => (await worker.kv.list()).keys.some((k) => k.name.includes("/frag/c1")), {
    message: "fragment written to KV",
  });
  const second = await get("/pages/cached");
  assert.equal(second.body, "[cached-body]");
  assert.match(second.res.headers.get("x-fragcache"), /\/frag\/c1=hit;age=\d+/);
  assert.equal(origin.count("/frag/c1"), 1);
});

test("nested includes recurse, and the depth limit stops runaway nesting", async () => {
  origin.route("/pages/nested", { body: `<esi:include src="/frag/n1"/>` });
  origin.route("/frag/n1", { body: `1(<esi:include src="/frag/n2"/>)` });
  origin.route("/frag/n2", { body: `2(<esi:include src="/frag/n3"/>)` });
  origin.route("/frag/n3", { body: `3` });
  assert.equal((await get("/pages/nested")).body, "1(2(3))");

  // max_depth is 3: the fifth level is not fetched; onerror keeps the page.
  origin.route("/pages/deep", { body: `<esi:include src="/frag/d1"/>` });
  for (let i = 1; i <= 6; i++) {
    origin.route(`/frag/d${i}`, { body: `${i}<esi:include src="/frag/d${i + 1}" onerror="continue"/>` });
  }
  const { body } = await get("/pages/deep");
  assert.equal(body, "1234");
  assert.equal(origin.count("/frag/d5"), 0);
});

test("a cycle of includes is detected", async () => {
  origin.route("/pages/cycle", { body: `x<esi:include src="/frag/cy1" onerror="continue"/>y` });
  origin.route("/frag/cy1", { body: `a<esi:include src="/frag/cy2"/>` });
  origin.route("/frag/cy2", { body: `b<esi:include src="/frag/cy1"/>` });
  const { res, body } = await get("/pages/cycle");
  assert.equal(res.status, 200);
  assert.equal(body, "xy");
});

test("remove, comment and <!--esi are processed", async () => {
  origin.route("/pages/markup", {
    body: `A<esi:remove><esi:include src="/frag/never"/>fallback</esi:remove>B<esi:comment text="note"/>C<!--esi <esi:include src="/frag/m1"/>-->D<!-- plain comment -->`,
  });
  origin.route("/frag/m1", { body: "M" });
  origin.route("/frag/never", { body: "NEVER" });
  const { body } = await get("/pages/markup");
  assert.equal(body, "ABC MD<!-- plain comment -->");
  assert.equal(origin.count("/frag/never"), 0);
});

test("alt is tried when src fails, onerror=continue drops the include", async () => {
  origin.route("/pages/alt", {
    body: `1<esi:include src="/frag/missing" alt="/frag/alt"/>2<esi:include src="/frag/broken" onerror="continue"/>3`,
  });
  origin.route("/frag/alt", { body: "ALT" });
  origin.fail("/frag/broken", "status", { status: 500 });
  const { res, body } = await get("/pages/alt");
  assert.equal(res.status, 200);
  assert.equal(body, "1ALT23");
});

test("a failed include with no fallback before any byte fails the page", async () => {
  origin.route("/pages/fails", { body: `<esi:include src="/frag/down"/>rest` });
  origin.fail("/frag/down", "status", { status: 503 });
  const { res } = await get("/pages/fails");
  assert.equal(res.status, 502);
});

test("a failed include after bytes were sent leaves an empty slot", async () => {
  origin.route("/pages/late", { body: `head<esi:include src="/frag/down2"/>tail` });
  origin.fail("/frag/down2", "status", { status: 500 });
  const { res, body } = await get("/pages/late");
  assert.equal(res.status, 200);
  assert.equal(body, "headtail");
});

test("uncacheable fragment responses are never stored", async () => {
  origin.route("/pages/uncacheable", {
    body: `<esi:include src="/frag/u-private"/>|<esi:include src="/frag/u-nostore"/>|<esi:include src="/frag/u-cookie"/>`,
  });
  origin.route("/frag/u-private", { body: "p", headers: { "cache-control": "private" } });
  origin.route("/frag/u-nostore", { body: "n", headers: { "cache-control": "no-store" } });
  origin.route("/frag/u-cookie", { body: "c", headers: { "set-cookie": "sid=1" } });
  // A cacheable marker fragment tells us when the page's write-backs have run.
  assert.equal((await get("/pages/uncacheable")).body, "p|n|c");
  assert.equal((await get("/pages/uncacheable")).body, "p|n|c");
  assert.equal(origin.count("/frag/u-private"), 2);
  assert.equal(origin.count("/frag/u-nostore"), 2);
  assert.equal(origin.count("/frag/u-cookie"), 2);
  const keys = (await worker.kv.list()).keys.map((k) => k.name);
  assert.ok(!keys.some((k) => k.includes("/frag/u-")), keys.join("\n"));
});

test("private fragments make the page private, no-store", async () => {
  origin.route("/pages/mine", { body: `hi <esi:include src="/frag/private"/>` });
  origin.route("/frag/private", {
    body: (req) => `user=${(req.headers.cookie ?? "").replace("session=", "")}`,
  });
  const { res, body } = await get("/pages/mine", { headers: { cookie: "session=alice" } });
  assert.equal(body, "hi user=alice");
  assert.equal(res.headers.get("cache-control"), "private, no-store");
  assert.match(res.headers.get("x-fragcache"), /\/frag\/private=bypass/);
});

test("the page shell itself is cached on cacheable page routes", async () => {
  origin.route("/", { body: `<title>home</title><esi:include src="/frag/home"/>` });
  origin.route("/frag/home", { body: "H" });
  assert.equal((await get("/")).body, "<title>home</title>H");
  await waitFor(async () => (await worker.kv.list()).keys.some((k) => k.name.startsWith("p")), {
    message: "shell written to KV",
  });
  const again = await get("/");
  assert.equal(again.body, "<title>home</title>H");
  assert.match(again.res.headers.get("x-fragcache"), /^shell=hit/);
  assert.equal(origin.count("/"), 1);
});

test("unknown routes pass through to the origin untouched", async () => {
  origin.route("/static/app.css", { body: "body{}", headers: { "content-type": "text/css" } });
  const { res, body } = await get("/static/app.css");
  assert.equal(body, "body{}");
  assert.equal(res.headers.get("content-type"), "text/css");
  assert.equal(res.headers.get("x-fragcache"), null);
});

test("a broken config is reported with the field at every request", async () => {
  const broken = await startWorker({
    config: { origin: origin.url, fragments: [{ path: "/f/*", soft_ttl: 60, hard_ttl: 30 }] },
  });
  try {
    for (let i = 0; i < 2; i++) {
      const res = await broken.fetch("/");
      assert.equal(res.status, 500);
      const text = await res.text();
      assert.match(text, /fragments\[0\]\.hard_ttl/);
    }
    await waitFor(() => broken.logs.some((l) => l.includes("fragments[0].hard_ttl")), {
      message: "config error in the worker log",
    });
  } finally {
    await broken.dispose();
  }
});
