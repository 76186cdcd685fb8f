// Self-tests for the integration-test support code, runnable before the
// worker is built: the scriptable origin on its own, and the Miniflare
// harness against a tiny stand-in worker (written to a temp dir) that
// imports a .wasm module the way worker-build output does.
//
//   node --test tests/support/selftest.test.mjs

import assert from "node:assert/strict";
import http from "node:http";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";

import { startOrigin } from "./origin.mjs";
import { buildExists, startWorker, waitFor } from "./worker.mjs";

/** Fails the test instead of hanging forever if `promise` never settles. */
function within(ms, promise, what) {
  let timer;
  const guard = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
  });
  return Promise.race([promise, guard]).finally(() => clearTimeout(timer));
}

describe("origin", () => {
  let origin;
  before(async () => {
    origin = await startOrigin();
  });
  after(async () => {
    await origin.close();
  });

  it("listens on an ephemeral loopback port", () => {
    assert.match(origin.url, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.notEqual(origin.url, "http://127.0.0.1:0");
  });

  it("serves a string route with status, headers and a default content type", async () => {
    origin.route("/fragments/nav", { body: "<nav>home</nav>", headers: { "cache-control": "max-age=60" } });
    const res = await fetch(`${origin.url}/fragments/nav`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), "text/html; charset=utf-8");
    assert.equal(res.headers.get("cache-control"), "max-age=60");
    assert.equal(await res.text(), "<nav>home</nav>");
  });

  it("serves Buffer bodies and custom statuses, and keeps a given content type", async () => {
    origin.route("/bin", { body: Buffer.from([0, 1, 2, 255]), status: 203, headers: { "Content-Type": "application/octet-stream" } });
    const res = await fetch(`${origin.url}/bin`);
    assert.equal(res.status, 203);
    assert.equal(res.headers.get("content-type"), "application/octet-stream");
    assert.deepEqual([...new Uint8Array(await res.arrayBuffer())], [0, 1, 2, 255]);
  });

  it("replaces an existing route", async () => {
    origin.route("/v", { body: "one" });
    origin.route("/v", { body: "two", status: 201 });
    const res = await fetch(`${origin.url}/v`);
    assert.equal(res.status, 201);
    assert.equal(await res.text(), "two");
  });

  it("answers 404 'not found' for unknown paths and still counts them", async () => {
    const res = await fetch(`${origin.url}/nope`);
    assert.equal(res.status, 404);
    assert.equal(await res.text(), "not found");
    assert.equal(origin.count("/nope"), 1);
  });

  it("counts by path without the query and records method, query and headers", async () => {
    origin.route("/q", { body: "q" });
    await (await fetch(`${origin.url}/q?a=1&b=2`, { headers: { "x-test": "yes" } })).text();
    await (await fetch(`${origin.url}/q`, { method: "HEAD" })).text();
    assert.equal(origin.count("/q"), 2);
    assert.equal(origin.count("/q?a=1&b=2"), 0);
    const [first, second] = origin.requests("/q");
    assert.deepEqual(
      { method: first.method, path: first.path, query: first.query, header: first.headers["x-test"] },
      { method: "GET", path: "/q", query: "a=1&b=2", header: "yes" },
    );
    assert.equal(second.method, "HEAD");
    assert.equal(second.query, "");
    assert.deepEqual(origin.requests("/never"), []);
    assert.equal(origin.count("/never"), 0);
  });

  it("passes the Node request (cookies) and the request number to body functions", async () => {
    origin.route("/fragments/greeting", {
      body: (req, n) => {
        const session = /(?:^|;\s*)session=([^;]*)/.exec(req.headers.cookie ?? "")?.[1];
        return `${session ? `Hello, ${session}` : "Sign in"} #${n}`;
      },
      headers: { "cache-control": "private" },
    });
    const alice = await fetch(`${origin.url}/fragments/greeting`, { headers: { cookie: "theme=dark; session=alice" } });
    assert.equal(await alice.text(), "Hello, alice #1");
    const anon = await fetch(`${origin.url}/fragments/greeting`);
    assert.equal(await anon.text(), "Sign in #2");
    assert.equal(origin.requests("/fragments/greeting")[0].headers.cookie, "theme=dark; session=alice");
  });

  it("awaits async body functions", async () => {
    origin.route("/async", { body: async () => "later" });
    assert.equal(await (await fetch(`${origin.url}/async`)).text(), "later");
  });

  it("counts a delayed request on arrival, before it is answered", async () => {
    origin.route("/slow", { body: "slow", delayMs: 300 });
    let answered = false;
    const started = Date.now();
    const pending = fetch(`${origin.url}/slow`).then(async (res) => {
      answered = true;
      return res.text();
    });
    await waitFor(() => origin.count("/slow") === 1, { message: "origin counted /slow" });
    assert.equal(answered, false, "the count must be visible while the response is still delayed");
    assert.equal(await pending, "slow");
    assert.ok(Date.now() - started >= 290, "the response waited for delayMs");
  });

  it("matches wildcard routes by longest prefix", async () => {
    origin.route("/fragments/*", { body: (req) => `generic ${req.url}` });
    origin.route("/fragments/special/*", { body: "special" });
    assert.equal(await (await fetch(`${origin.url}/fragments/a?x=1`)).text(), "generic /fragments/a?x=1");
    assert.equal(await (await fetch(`${origin.url}/fragments/special/b`)).text(), "special");
    // An exact route still wins over any wildcard.
    assert.equal(await (await fetch(`${origin.url}/fragments/nav`)).text(), "<nav>home</nav>");
    assert.equal(origin.count("/fragments/a"), 1);
  });

  it("fails with a status (500 by default), then recovers with 'ok'", async () => {
    origin.route("/flaky", { body: "fine" });
    origin.fail("/flaky", "status");
    assert.equal((await fetch(`${origin.url}/flaky`)).status, 500);
    origin.fail("/flaky", "status", { status: 503, headers: { "retry-after": "1" } });
    const res = await fetch(`${origin.url}/flaky`);
    assert.equal(res.status, 503);
    assert.equal(res.headers.get("retry-after"), "1");
    origin.fail("/flaky", "ok");
    const ok = await fetch(`${origin.url}/flaky`);
    assert.equal(ok.status, 200);
    assert.equal(await ok.text(), "fine");
    assert.equal(origin.count("/flaky"), 3);
  });

  it("resets the connection in 'reset' mode", async () => {
    origin.route("/reset", { body: "never seen" });
    origin.fail("/reset", "reset");
    await assert.rejects(fetch(`${origin.url}/reset`));
    assert.equal(origin.count("/reset"), 1);
    origin.fail("/reset", "ok");
  });

  it("rejects unknown failure modes", () => {
    assert.throws(() => origin.fail("/x", "explode"), /unknown mode/);
  });

  it("reset() clears counters and records but keeps routes", async () => {
    assert.ok(origin.totalCount() > 0);
    origin.reset();
    assert.equal(origin.totalCount(), 0);
    assert.equal(origin.count("/fragments/nav"), 0);
    assert.deepEqual(origin.requests("/fragments/nav"), []);
    assert.equal(await (await fetch(`${origin.url}/fragments/nav`)).text(), "<nav>home</nav>");
    assert.equal(origin.totalCount(), 1);
  });
});

describe("origin close()", () => {
  it("closes despite a hung request, failing that request", async () => {
    const origin = await startOrigin();
    origin.route("/hang", { body: "never" });
    origin.fail("/hang", "hang");
    const pending = fetch(`${origin.url}/hang`);
    await waitFor(() => origin.count("/hang") === 1, { message: "origin counted /hang" });
    await within(2000, origin.close(), "close() with a hung request");
    await assert.rejects(pending);
  });

  it("closes despite a pending delayed response", async () => {
    const origin = await startOrigin();
    origin.route("/slow", { body: "slow", delayMs: 60_000 });
    const pending = fetch(`${origin.url}/slow`);
    await waitFor(() => origin.count("/slow") === 1, { message: "origin counted /slow" });
    await within(2000, origin.close(), "close() with a delayed response");
    await assert.rejects(pending);
  });

  it("closes despite idle keep-alive connections", async () => {
    const origin = await startOrigin();
    origin.route("/", { body: "home" });
    const agent = new http.Agent({ keepAlive: true, keepAliveMsecs: 60_000 });
    const body = await new Promise((resolve, reject) => {
      http
        .get(`${origin.url}/`, { agent }, (res) => {
          let data = "";
          res.setEncoding("utf8");
          res.on("data", (chunk) => (data += chunk));
          res.on("end", () => resolve(data));
        })
        .on("error", reject);
    });
    assert.equal(body, "home");
    await within(2000, origin.close(), "close() with a keep-alive connection");
    agent.destroy();
  });

  it("is idempotent", async () => {
    const origin = await startOrigin();
    await origin.close();
    await origin.close();
  });
});

describe("waitFor", () => {
  it("returns the first truthy value", async () => {
    let n = 0;
    assert.equal(await waitFor(() => (++n >= 3 ? `done after ${n}` : 0), { intervalMs: 1 }), "done after 3");
  });

  it("times out with the given message and the last error", async () => {
    await assert.rejects(
      waitFor(
        () => {
          throw new Error("kv not written yet");
        },
        { timeoutMs: 50, intervalMs: 10, message: "fragment stored in KV" },
      ),
      /timed out after 50 ms: fragment stored in KV; last error: kv not written yet/,
    );
  });
});

// A stand-in for build/index.js: an ES module that imports a CompiledWasm
// module from next to itself, reads the config binding, writes KV in the
// background, logs, and can be made to touch another request's I/O.
const STUB_WORKER = `
import wasm from "./index_bg.wasm";
let saved;
export default {
  async fetch(request, env, ctx) {
    const { pathname } = new URL(request.url);
    if (pathname === "/config") return Response.json({ config: env.FRAGCACHE, wasm: wasm instanceof WebAssembly.Module });
    if (pathname === "/log") { console.log("stub says hello"); return new Response("logged"); }
    if (pathname === "/put") { ctx.waitUntil(env.FRAGMENTS.put("k", "v", { metadata: { at: 1 } })); return new Response("queued"); }
    if (pathname === "/save") { saved = new TransformStream(); return new Response("saved"); }
    if (pathname === "/misuse") { await saved.writable.getWriter().write(new Uint8Array([1])); return new Response("unreachable"); }
    return new Response("stub", { headers: { "x-fragcache": "stub" } });
  },
};
`;
// The smallest valid wasm module: magic number and version 1.
const EMPTY_WASM = Buffer.from([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]);

describe("worker harness (stub worker)", () => {
  let dir;
  let worker;
  const config = { origin: "http://127.0.0.1:9", pages: [{ path: "/", soft_ttl: 10, hard_ttl: 300 }], fragments: [] };

  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "fragcache-stub-"));
    writeFileSync(path.join(dir, "index.js"), STUB_WORKER);
    writeFileSync(path.join(dir, "index_bg.wasm"), EMPTY_WASM);
    worker = await startWorker({ config, scriptPath: path.join(dir, "index.js") });
  });
  after(async () => {
    await worker?.dispose();
    rmSync(dir, { recursive: true, force: true });
  });

  it("buildExists() reports whether a script is there", () => {
    assert.equal(buildExists(path.join(dir, "index.js")), true);
    assert.equal(buildExists(path.join(dir, "missing.js")), false);
    assert.equal(typeof buildExists(), "boolean");
  });

  it("refuses to start without a build, naming the fix", async () => {
    await assert.rejects(startWorker({ config, scriptPath: path.join(dir, "missing.js") }), /npm run build/);
  });

  it("serves over real HTTP on an ephemeral loopback port", async () => {
    assert.match(worker.url, /^http:\/\/127\.0\.0\.1:\d+$/);
    const res = await worker.fetch("/");
    assert.equal(res.headers.get("x-fragcache"), "stub");
    assert.equal(await res.text(), "stub");
  });

  it("binds FRAGCACHE as a JSON object and loads the .wasm as CompiledWasm", async () => {
    const res = await worker.dispatch("/config");
    assert.deepEqual(await res.json(), { config, wasm: true });
  });

  it("exposes the FRAGMENTS KV namespace, written under waitUntil", async () => {
    assert.equal(await (await worker.fetch("/put")).text(), "queued");
    const got = await waitFor(() => worker.kv.getWithMetadata("k"), { message: "stub wrote k to KV" });
    assert.deepEqual(got, { value: "v", metadata: { at: 1 }, cacheStatus: null });
  });

  it("captures the worker's console output", async () => {
    await (await worker.fetch("/log")).text();
    await waitFor(() => worker.logs.some((l) => l.includes("stub says hello")), { message: "console.log captured" });
    assert.deepEqual(worker.crossRequestWarnings(), []);
  });

  it("captures cross-request I/O errors as warnings", async () => {
    await (await worker.fetch("/save")).text();
    const res = await worker.fetch("/misuse");
    assert.equal(res.status, 500);
    await res.text();
    await waitFor(() => worker.crossRequestWarnings().some((l) => /Cannot perform I\/O/.test(l)), {
      message: "cross-request warning captured",
    });
  });
});

describe("worker harness KV persistence", () => {
  it("shares KV between instances given the same directory", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "fragcache-stub-"));
    const kvDir = path.join(dir, "kv");
    writeFileSync(path.join(dir, "index.js"), STUB_WORKER);
    writeFileSync(path.join(dir, "index_bg.wasm"), EMPTY_WASM);
    try {
      const first = await startWorker({ config: {}, kvPersist: kvDir, scriptPath: path.join(dir, "index.js") });
      try {
        await first.kv.put("persisted", "yes");
      } finally {
        await first.dispose();
      }
      const second = await startWorker({ config: {}, kvPersist: kvDir, scriptPath: path.join(dir, "index.js") });
      try {
        assert.equal(await second.kv.get("persisted"), "yes");
      } finally {
        await second.dispose();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
