// Self-tests for startWorkers(): several isolates in one Miniflare, sharing a
// KV namespace and a Durable Object namespace. Runs a small stand-in worker
// (written to a temp dir), so it needs no build.
//
//   node --test tests/support/multi.selftest.test.mjs

import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, describe, it } from "node:test";

import { startWorkers } from "./worker.mjs";

// How long the stub worker waits for the coordinator before giving up.
const DO_TIMEOUT_MS = 500;

// A stand-in for build/index.js with a FragmentCoordinator Durable Object.
// The object counts calls in its SQLite storage (ctx.storage.sql exists only
// for SQLite-backed objects). The isolate id is drawn on first use: workerd
// forbids random values at global scope, and module state lives per isolate.
const STUB_WORKER = `
import { DurableObject } from "cloudflare:workers";
let isolate;
const isolateId = () => (isolate ??= crypto.randomUUID());

export class FragmentCoordinator extends DurableObject {
  constructor(ctx, env) {
    super(ctx, env);
    ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS calls (via TEXT)");
  }
  async fetch(request) {
    const via = new URL(request.url).searchParams.get("via") ?? "";
    this.ctx.storage.sql.exec("INSERT INTO calls (via) VALUES (?)", via);
    const { n } = this.ctx.storage.sql.exec("SELECT count(*) AS n FROM calls").one();
    return Response.json({ n, id: this.ctx.id.toString(), isolate: isolateId() });
  }
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const key = url.searchParams.get("k");
    if (url.pathname === "/isolate") return new Response(isolateId());
    if (url.pathname === "/kv/put") { await env.FRAGMENTS.put(key, url.searchParams.get("v")); return new Response("stored"); }
    if (url.pathname === "/kv/get") return new Response(await env.FRAGMENTS.get(key) ?? "(none)");
    if (url.pathname === "/do") {
      if (!env.COORDINATOR) return Response.json({ error: "no COORDINATOR binding" });
      const stub = env.COORDINATOR.get(env.COORDINATOR.idFromName("x"));
      const started = Date.now();
      let timer;
      const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve("timeout"), ${DO_TIMEOUT_MS}); });
      try {
        const res = await Promise.race([stub.fetch("http://coordinator/count?via=" + isolateId()), timeout]);
        if (res === "timeout") return Response.json({ error: "timeout", ms: Date.now() - started });
        return Response.json({ ok: await res.json(), ms: Date.now() - started });
      } catch (err) {
        return Response.json({ error: String(err?.message ?? err), ms: Date.now() - started });
      } finally {
        clearTimeout(timer);
      }
    }
    return new Response("stub page");
  },
};
`;

const config = { origin: "http://127.0.0.1:9", pages: [], fragments: [] };

let dir;
let script;
before(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), "fragcache-multi-"));
  script = path.join(dir, "index.js");
  writeFileSync(script, STUB_WORKER);
});
after(() => {
  rmSync(dir, { recursive: true, force: true });
});

const text = async (res) => {
  assert.equal(res.status, 200);
  return res.text();
};

describe("startWorkers (shared coordinator)", () => {
  let workers;
  before(async () => {
    workers = await startWorkers({ config, count: 3, scriptPath: script });
  });
  after(async () => {
    await workers?.dispose();
  });

  it("gives each worker its own loopback URL and name", () => {
    assert.deepEqual(workers.names, ["fragcache-0", "fragcache-1", "fragcache-2"]);
    assert.equal(workers.urls.length, 3);
    for (const url of workers.urls) assert.match(url, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(new Set(workers.urls).size, 3);
  });

  it("runs each worker in its own isolate, stable across requests", async () => {
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push(await text(await workers.fetch(i, "/isolate")));
    assert.equal(new Set(ids).size, 3, `isolate ids: ${ids}`);
    assert.equal(await text(await workers.fetch(1, "/isolate")), ids[1]);
    assert.equal(await text(await workers.dispatch(2, "/isolate")), ids[2]);
  });

  it("shares one KV namespace: a write through worker 0 is read through worker 1", async () => {
    assert.equal(await text(await workers.fetch(0, "/kv/put?k=shared&v=from-0")), "stored");
    assert.equal(await text(await workers.fetch(1, "/kv/get?k=shared")), "from-0");
    assert.equal(await workers.kv.get("shared"), "from-0");
  });

  it("reaches the same SQLite-backed Durable Object from every worker", async () => {
    const first = await (await workers.fetch(0, "/do")).json();
    const second = await (await workers.fetch(1, "/do")).json();
    const third = await (await workers.fetch(2, "/do")).json();
    assert.ok(first.ok && second.ok && third.ok, JSON.stringify({ first, second, third }));
    assert.deepEqual([first.ok.n, second.ok.n, third.ok.n], [1, 2, 3]);
    assert.equal(second.ok.id, first.ok.id);
    assert.equal(third.ok.id, first.ok.id);
  });

  it("logs nothing the cross-request check would flag", () => {
    assert.deepEqual(workers.crossRequestWarnings(), []);
  });

  it("rejects out-of-range worker numbers", () => {
    assert.throws(() => workers.fetch(3, "/"), /no worker 3/);
  });
});

describe("startWorkers (coordinator: false)", () => {
  it("binds no COORDINATOR, and still shares KV", async () => {
    const workers = await startWorkers({ config, coordinator: false, scriptPath: script });
    try {
      assert.deepEqual(await (await workers.fetch(1, "/do")).json(), { error: "no COORDINATOR binding" });
      await text(await workers.fetch(1, "/kv/put?k=solo&v=from-1"));
      assert.equal(await text(await workers.fetch(0, "/kv/get?k=solo")), "from-1");
    } finally {
      await workers.dispose();
    }
  });
});

describe("startWorkers (unavailable coordinator)", () => {
  it('"broken": every coordinator call fails at once, and pages are still served', async () => {
    const workers = await startWorkers({ config, coordinator: "broken", scriptPath: script });
    try {
      for (const i of [0, 1]) {
        const got = await (await workers.fetch(i, "/do")).json();
        assert.match(got.error ?? "", /coordinator unavailable/, JSON.stringify(got));
        assert.ok(got.ms < DO_TIMEOUT_MS, `failed after ${got.ms} ms`);
        assert.equal(await text(await workers.fetch(i, "/")), "stub page");
      }
      assert.deepEqual(workers.crossRequestWarnings(), []);
    } finally {
      await workers.dispose();
    }
  });

  it('"hung": coordinator calls never answer, so only the caller\'s timeout ends them', async () => {
    const workers = await startWorkers({ config, coordinator: "hung", scriptPath: script });
    try {
      const started = Date.now();
      const got = await (await workers.fetch(1, "/do")).json();
      assert.equal(got.error, "timeout", JSON.stringify(got));
      assert.ok(Date.now() - started < DO_TIMEOUT_MS + 2000, "the request ended soon after the stub's timeout");
      assert.equal(await text(await workers.fetch(0, "/")), "stub page");
      assert.deepEqual(workers.crossRequestWarnings(), []);
    } finally {
      await workers.dispose();
    }
  });
});

describe("startWorkers (arguments)", () => {
  it("refuses bad counts, unknown coordinator modes and a missing build", async () => {
    await assert.rejects(startWorkers({ config, count: 0, scriptPath: script }), /count must be a positive integer/);
    await assert.rejects(startWorkers({ config, coordinator: "maybe", scriptPath: script }), /coordinator must be/);
    await assert.rejects(startWorkers({ config, scriptPath: path.join(dir, "missing.js") }), /npm run build/);
  });

  it("fails to start, naming the class, when the script does not export FragmentCoordinator", async () => {
    const plain = path.join(dir, "plain.js");
    writeFileSync(plain, `export default { fetch() { return new Response("plain"); } };`);
    await assert.rejects(startWorkers({ config, scriptPath: plain }), /FragmentCoordinator/);
    // Without the coordinator the same script runs.
    const workers = await startWorkers({ config, coordinator: false, scriptPath: plain });
    try {
      assert.equal(await text(await workers.fetch(1, "/")), "plain");
    } finally {
      await workers.dispose();
    }
  });
});
