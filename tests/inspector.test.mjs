// The inspector on the real wasm build: a page with a hit, a stale, a miss
// and a private fragment, seen as JSON and rendered by headless Chromium
// (DOM checked, screenshot kept in test-artifacts/inspector.png), and the
// admin token guarding it.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, statSync } from "node:fs";
import http from "node:http";
import path from "node:path";
import { promisify } from "node:util";
import { startOrigin, cookieOf } from "./support/origin.mjs";
import { REPO_ROOT, startWorker, waitFor } from "./support/worker.mjs";

const run = promisify(execFile);
const TOKEN = "inspect-t0ken";
const INSPECT = "/_fragcache/inspect?path=%2Fshop";

let origin;
let worker;

before(async () => {
  origin = await startOrigin();
  worker = await startWorker({
    config: {
      origin: origin.url,
      pages: [{ path: "/shop" }],
      fragments: [
        { path: "/frag/me", private: true },
        { path: "/frag/stale", soft_ttl: 1, hard_ttl: 120, jitter: 0, xfetch_beta: 0 },
        { path: "/frag/*", soft_ttl: 300, hard_ttl: 3600, jitter: 0, xfetch_beta: 0 },
      ],
    },
    bindings: { FRAGCACHE_ADMIN_TOKEN: TOKEN },
  });
  // A new query on every shell fetch: that include is a miss every time.
  origin.route("/shop", {
    body: (_req, n) =>
      `<h1>shop</h1><esi:include src="/frag/hit"/><esi:include src="/frag/stale"/>` +
      `<esi:include src="/frag/miss?n=${n}"/><esi:include src="/frag/me"/>`,
  });
  origin.route("/frag/hit", { body: "<p>hit</p>", headers: { "cache-tag": "nav,home" } });
  origin.route("/frag/stale", { body: "<p>stale</p>" });
  origin.route("/frag/miss", { body: "<p>miss</p>", delayMs: 30 });
  origin.route("/frag/me", { body: (req) => `<p>hello ${cookieOf(req, "user") || "guest"}</p>` });

  // Warm the cache, then make every refresh of /frag/stale fail, so that once
  // its one-second soft TTL is over it stays stale for as long as the test runs.
  assert.equal((await worker.fetch("/shop")).status, 200);
  // Entries only: the hit's two tags add index keys (`t:…`).
  const entries = async () => (await worker.kv.list()).keys.filter((k) => !k.name.startsWith("t:"));
  await waitFor(async () => (await entries()).length === 3, { message: "three fragments stored" });
  origin.fail("/frag/stale", "status", { status: 500 });
  await waitFor(
    async () => /\/frag\/stale=stale/.test((await worker.fetch("/shop")).headers.get("x-fragcache")),
    { timeoutMs: 10_000, intervalMs: 100, message: "/frag/stale served stale" },
  );
});

after(async () => {
  await worker?.dispose();
  await origin?.close();
});

const asAlice = { cookie: "user=alice", authorization: `Bearer ${TOKEN}` };

test("the inspector shows hit, stale, miss and the private fragment, as JSON", async () => {
  const res = await worker.fetch(INSPECT, { headers: { ...asAlice, accept: "application/json" } });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("cache-control"), "private, no-store");
  const data = await res.json();
  assert.equal(data.page, "/shop");
  const status = Object.fromEntries(data.rows.map((r) => [r.path.replace(/\?.*/, ""), r.status]));
  assert.deepEqual(status, {
    shell: "bypass",
    "/frag/hit": "hit",
    "/frag/stale": "stale",
    "/frag/miss": "miss",
    "/frag/me": "bypass",
  });
  const row = (p) => data.rows.find((r) => r.path.startsWith(p));
  assert.deepEqual([row("/frag/hit").soft_ttl_s, row("/frag/hit").hard_ttl_s], [300, 3600]);
  assert.deepEqual(row("/frag/hit").tags, ["nav", "home"]);
  assert.ok(row("/frag/stale").age_s >= 1, JSON.stringify(row("/frag/stale")));
  assert.equal(row("/frag/miss").source, "origin fetch");
  assert.ok(row("/frag/miss").ms >= 30, JSON.stringify(row("/frag/miss")));
  assert.ok(row("/frag/miss").start_ms + row("/frag/miss").ms <= data.total_ms);
  assert.equal(row("/frag/me").key, null, "private: never stored");
  // Alice's cookie went to the private fragment; the admin token did not.
  const last = origin.requests("/frag/me").at(-1);
  assert.equal(cookieOf(last, "user"), "alice");
  for (const p of ["/shop", "/frag/me", "/frag/miss"]) {
    for (const r of origin.requests(p)) assert.equal(r.headers.authorization, undefined, p);
  }
});

test("the admin operations refuse a wrong, missing or malformed token and change nothing", async () => {
  const shells = origin.count("/shop");
  const snapshot = async () => {
    const out = {};
    for (const { name } of (await worker.kv.list()).keys) out[name] = await worker.kv.get(name);
    return out;
  };
  const before = await snapshot();
  for (const authorization of [undefined, "Bearer wrong", `Basic ${TOKEN}`, TOKEN, "Bearer", `Bearer ${TOKEN}x`]) {
    const headers = authorization ? { authorization } : {};
    for (const [p, method] of [
      [INSPECT, "GET"],
      ["/_fragcache/", "GET"],
      ["/_fragcache/purge?path=/frag/hit", "POST"],
      ["/_fragcache/warm?path=/shop", "POST"],
      ["/_fragcache/fragment?path=/frag/hit", "PUT"],
    ]) {
      const body = method === "PUT" ? "<p>pushed</p>" : undefined;
      const res = await worker.fetch(p, { method, headers, body });
      assert.equal(res.status, 401, `${method} ${p} with ${authorization}`);
      assert.match(res.headers.get("content-type"), /json/);
      assert.match((await res.json()).error, /token/);
    }
  }
  assert.equal(origin.count("/shop"), shells, "no page was served");
  assert.deepEqual(await snapshot(), before, "nothing purged, pushed or warmed");
  const index = await worker.fetch("/_fragcache/", { headers: { authorization: `Bearer ${TOKEN}` } });
  assert.ok((await index.json()).operations.some((o) => o.path === "/_fragcache/inspect"));
  const bad = await worker.fetch("/_fragcache/inspect?path=shop", { headers: asAlice });
  assert.equal(bad.status, 400);
  assert.match((await bad.json()).error, /starting with one \//);
  const post = await worker.fetch(INSPECT, { method: "POST", headers: asAlice });
  assert.equal(post.status, 405);
});

/** The Chromium binary, or null. */
function chromium() {
  for (const name of ["chromium", "chromium-browser", "google-chrome"]) {
    try {
      return execFileSync("sh", ["-c", `command -v ${name}`], { encoding: "utf8" }).trim() || null;
    } catch {
      // not this one
    }
  }
  return null;
}

test("headless Chromium renders the inspector: rows, statuses, screenshot", async (t) => {
  const browser = chromium();
  if (!browser) {
    t.skip("no Chromium on this machine: `apt-get install -y chromium` (scripts/setup.sh does it as root); the browser check did not run");
    return;
  }
  // The browser cannot send a bearer token for a plain URL: a tiny local
  // proxy adds it (and Alice's cookie) to whatever the browser asks for.
  const proxy = http.createServer(async (req, res) => {
    const upstream = await worker.fetch(req.url, { headers: asAlice });
    res.writeHead(upstream.status, { "content-type": upstream.headers.get("content-type") ?? "text/plain" });
    res.end(Buffer.from(await upstream.arrayBuffer()));
  });
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${proxy.address().port}${INSPECT}`;
  const flags = ["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--hide-scrollbars"];
  try {
    const { stdout: dom } = await run(browser, [...flags, "--dump-dom", url], { timeout: 60_000, maxBuffer: 1 << 24 });
    const statuses = [...dom.matchAll(/<tr class="row" data-status="([a-z]+)">/g)].map((m) => m[1]);
    assert.deepEqual(statuses, ["bypass", "hit", "stale", "miss", "bypass"], dom.slice(0, 2000));
    assert.match(dom, /<code class="path">\/frag\/me<\/code>/);
    assert.match(dom, /age \d+ s, soft 300 s, hard 3600 s/);
    assert.match(dom, />nav<[^]*>home</, "the hit's tags");
    assert.match(dom, /age \d+ s, soft 1 s, hard 120 s/);
    for (const s of ["hit", "stale", "miss", "coalesced", "bypass", "error"]) {
      assert.match(dom, new RegExp(`<span class="s ${s}">${s}</span>`), `legend ${s}`);
    }

    const dir = path.join(REPO_ROOT, "test-artifacts");
    mkdirSync(dir, { recursive: true });
    const png = path.join(dir, "inspector.png");
    rmSync(png, { force: true });
    await run(browser, [...flags, `--screenshot=${png}`, "--window-size=1280,900", url], { timeout: 60_000 });
    const bytes = readFileSync(png);
    assert.equal(bytes.subarray(1, 4).toString(), "PNG");
    assert.ok(statSync(png).size > 10_000, `a real rendering, not a blank page (${statSync(png).size} bytes)`);
  } finally {
    proxy.close();
  }
});
