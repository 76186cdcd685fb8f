// Operations: write-through (PUT /_fragcache/fragment), warming
// (POST /_fragcache/warm, the scheduled handler, `npm run warm`), and the
// admin token in front of all of them.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { startOrigin } from "./support/origin.mjs";
import { REPO_ROOT, startWorker, waitFor } from "./support/worker.mjs";

const TOKEN = "ops-s3cret";
let origin;
let worker;

before(async () => {
  origin = await startOrigin();
  worker = await startWorker({
    config: {
      origin: origin.url,
      limits: { max_fragment_bytes: 1000 },
      pages: [{ path: "/p/*" }, { path: "/cron/*" }],
      fragments: [
        { path: "/frag/me", private: true },
        { path: "/frag/*", soft_ttl: 300, hard_ttl: 3600, xfetch_beta: 0, jitter: 0 },
      ],
      warm: { paths: ["/cron/a", "/cron/b"], concurrency: 2 },
    },
    bindings: { FRAGCACHE_ADMIN_TOKEN: TOKEN },
  });
});

after(async () => {
  await worker?.dispose();
  await origin?.close();
});

const auth = (token = TOKEN) => (token === null ? {} : { authorization: token.includes(" ") ? token : `Bearer ${token}` });

const put = (query, body, headers = {}, token = TOKEN) =>
  worker.fetch(`/_fragcache/fragment?${query}`, { method: "PUT", body, headers: { ...auth(token), ...headers } });

const kvKeys = async () => (await worker.kv.list()).keys.map((k) => k.name);

test("every admin operation needs the token, and a wrong one changes nothing", async () => {
  origin.route("/p/guarded", { body: `<esi:include src="/frag/guarded"/>` });
  origin.route("/frag/guarded", { body: "G" });
  const before = await kvKeys();
  const ops = [
    { path: "/_fragcache/", method: "GET" },
    { path: "/_fragcache/fragment?path=/frag/guarded", method: "PUT", body: "pushed" },
    { path: "/_fragcache/warm?path=/p/guarded", method: "POST" },
    { path: "/_fragcache/purge?path=/frag/guarded", method: "POST" },
  ];
  for (const op of ops) {
    for (const bad of [null, "wrong", "Basic " + TOKEN, `Bearer ${TOKEN}x`, "Bearer", TOKEN.slice(1)]) {
      const res = await worker.fetch(op.path, { method: op.method, body: op.body, headers: auth(bad) });
      assert.equal(res.status, 401, `${op.method} ${op.path} with ${bad}`);
      assert.match((await res.json()).error, /token/);
    }
  }
  assert.deepEqual(await kvKeys(), before, "nothing stored");
  assert.equal(origin.count("/p/guarded") + origin.count("/frag/guarded"), 0, "nothing fetched");

  const index = await (await worker.fetch("/_fragcache/", { headers: auth() })).json();
  const names = index.operations.map((o) => o.path);
  assert.ok(names.includes("/_fragcache/fragment") && names.includes("/_fragcache/warm"), names.join());
  const res = await put("path=/frag/guarded", "pushed");
  assert.equal(res.status, 200, await res.clone().text());
  const warm = await worker.fetch("/_fragcache/warm?path=/p/guarded", { method: "POST", headers: auth() });
  assert.equal(warm.status, 200);
  assert.equal((await warm.json()).fresh, 1, "the pushed fragment was already there");
  assert.equal(origin.count("/frag/guarded"), 0);
  assert.equal((await worker.fetch("/_fragcache/warm", { headers: auth() })).status, 405);
});

test("a written-through body is served without an origin fetch", async () => {
  origin.route("/p/news", { body: `[<esi:include src="/frag/news?x=1"/>]` });
  origin.route("/frag/news", { body: (_req, n) => `fetched v${n}` });
  const res = await put("path=/frag/news%3Fx%3D1&soft_ttl=120&hard_ttl=900", "pushed v1", {
    "content-type": "text/html",
    "cache-tag": "news",
  });
  assert.equal(res.status, 200);
  const json = await res.json();
  assert.equal(json.soft_ttl, 120);
  assert.equal(json.hard_ttl, 900);
  assert.deepEqual(json.tags, ["news"]);
  assert.match(json.keys[0], /\/frag\/news\?x=1$/);
  assert.ok((await kvKeys()).includes(json.keys[0]), "in KV");

  const page = await worker.fetch("/p/news");
  assert.equal(await page.text(), "[pushed v1]");
  assert.match(page.headers.get("x-fragcache"), /\/frag\/news\?x=1=hit/);
  assert.equal(origin.count("/frag/news"), 0, "no origin fetch");

  // Publishing again replaces it, here and in KV.
  await waitFor(async () => (await put("path=/frag/news%3Fx%3D1", "pushed v2")).status === 200, {
    message: "second push (one write per second per key)",
  });
  assert.equal(await (await worker.fetch("/p/news")).text(), "[pushed v2]");
  assert.equal(await worker.kv.get(json.keys[0]), "pushed v2");
  assert.equal(origin.count("/frag/news"), 0);
});

test("oversized, private and malformed pushes get a 4xx and store nothing", async () => {
  const before = await kvKeys();
  const cases = [
    ["path=/frag/big", "x".repeat(1001), {}, 413],
    ["path=/frag/me", "mine", {}, 409],
    ["path=/frag/x", "x", { "cache-control": "private" }, 409],
    ["path=/p/news", "x", {}, 404],
    ["path=/frag/x&hard_ttl=10", "x", {}, 400],
    ["soft_ttl=10", "x", {}, 400],
    ["path=/frag/x", "x", { "content-encoding": "gzip" }, 415],
  ];
  for (const [query, body, headers, status] of cases) {
    const res = await put(query, body, headers);
    assert.equal(res.status, status, `${query}: ${await res.clone().text()}`);
    assert.match((await res.json()).error, /^fragcache: /);
  }
  // A streamed body without a length is cut off at the limit too.
  const stream = new ReadableStream({
    start(c) {
      for (let i = 0; i < 5; i++) c.enqueue(new TextEncoder().encode("y".repeat(400)));
      c.close();
    },
  });
  const res = await worker.fetch("/_fragcache/fragment?path=/frag/big", {
    method: "PUT",
    body: stream,
    duplex: "half",
    headers: auth(),
  });
  assert.equal(res.status, 413);
  assert.deepEqual(await kvKeys(), before);
});

test("the scheduled handler warms its list", async () => {
  origin.route("/cron/*", { body: `<esi:include src="/frag/cron-shared"/><esi:include src="/frag/cron-own"/>` });
  origin.route("/frag/cron-shared", { body: "S", delayMs: 50 });
  origin.route("/frag/cron-own", { body: "O", delayMs: 50 });
  const result = await worker.scheduled();
  assert.equal(result.outcome, "ok");
  assert.equal(origin.count("/cron/a") + origin.count("/cron/b"), 2, "both pages");
  assert.equal(origin.count("/frag/cron-shared"), 1, "one fetch for both pages");
  await waitFor(() => worker.logs.some((l) => /cron \*\/5 \* \* \* \*: warm: 2 pages: 2 warmed, 0 already fresh, 0 failed/.test(l)), {
    message: "the summary line",
  });
  await waitFor(async () => (await kvKeys()).filter((k) => k.includes("/frag/cron-")).length === 2, { message: "stored" });
  const page = await worker.fetch("/cron/a");
  assert.match(page.headers.get("x-fragcache"), /cron-shared=hit/);
  assert.equal(origin.count("/frag/cron-shared"), 1);
  assert.deepEqual(worker.crossRequestWarnings(), []);
});

test("npm run warm: the summary matches what the origin saw", async () => {
  const pages = ["/p/w1", "/p/w2", "/p/w3", "/p/w4"];
  for (const p of pages) origin.route(p, { body: `<esi:include src="/frag${p}"/>` });
  for (const p of pages) origin.route(`/frag${p}`, { body: `F${p}` });
  origin.route("/p/wbad", { body: `<esi:include src="/frag/wbad"/>` });
  origin.fail("/frag/wbad", "status", { status: 500 });
  // One page is warm already: it must count as fresh.
  assert.equal((await worker.fetch("/p/w4")).status, 200);
  await waitFor(async () => (await kvKeys()).some((k) => k.endsWith("/frag/p/w4")), { message: "w4 stored" });
  const before = Object.fromEntries(pages.map((p) => [p, origin.count(`/frag${p}`)]));

  const dir = mkdtempSync(path.join(os.tmpdir(), "fragcache-warm-"));
  try {
    const list = path.join(dir, "paths.txt");
    writeFileSync(list, ["# pages to warm", "", ...pages, "  /p/wbad  ", "# end", ""].join("\n"));
    const run = promisify(execFile);
    const out = await run(process.execPath, [path.join(REPO_ROOT, "scripts/warm.mjs"), "--concurrency", "2", worker.url, list], {
      env: { ...process.env, FRAGCACHE_ADMIN_TOKEN: TOKEN },
    }).then(
      (r) => ({ code: 0, ...r }),
      (e) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
    );
    assert.equal(out.code, 1, `exit code (one page failed)\n${out.stdout}\n${out.stderr}`);
    const num = (label) => Number(out.stdout.match(new RegExp(`^${label}: (\\d+)$`, "m"))?.[1]);
    const fetched = pages.filter((p) => origin.count(`/frag${p}`) > before[p]);
    assert.equal(num("warmed"), fetched.length, out.stdout);
    assert.equal(num("warmed"), 3, out.stdout);
    assert.equal(num("already fresh"), pages.length - fetched.length, out.stdout);
    assert.equal(num("failed"), 1, out.stdout);
    assert.match(out.stdout, /^ {2}\/p\/wbad: /m);
    assert.match(out.stdout, /^time: \d+\.\d\d s$/m);
    assert.match(out.stdout, /^5\/5 /m, "plain progress lines when not a terminal");
    for (const p of pages) assert.equal(origin.count(`/frag${p}`), 1, `${p} fetched once`);

    const usage = await run(process.execPath, [path.join(REPO_ROOT, "scripts/warm.mjs"), worker.url], {
      env: { ...process.env, FRAGCACHE_ADMIN_TOKEN: TOKEN },
    }).catch((e) => e);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /usage:/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
