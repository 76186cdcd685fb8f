// Many users through a shared cache in front of the worker (a corporate
// proxy, another CDN tier): the real wasm worker under Miniflare, a real
// origin, and between client and worker a caching proxy that honours
// Cache-Control and Vary (tests/support/proxy.mjs). If the worker ever
// labelled a page built for one user as shareable, the proxy would hand it
// to the next user. No user may ever see another's page; pages that depend
// on nobody must still be cached by the proxy (or this test could not tell).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { cookieOf, startOrigin } from "./support/origin.mjs";
import { startCachingProxy } from "./support/proxy.mjs";
import { startWorker, waitFor } from "./support/worker.mjs";

let origin;
let worker;
let proxy;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));


before(async () => {
  origin = await startOrigin();
  const shareable = { "cache-control": "public, max-age=60" };
  // A shareable shell that greets the user from a cookie variable.
  origin.route("/page/hello", {
    body: `<h1><esi:vars>hi $(HTTP_COOKIE{user})</esi:vars></h1><esi:include src="/frag/news"/>`,
    headers: shareable,
  });
  // A shareable shell choosing on a cookie.
  origin.route("/page/tier", {
    body: `<esi:choose><esi:when test="$(HTTP_COOKIE{user})=='user0'">ADMIN user0</esi:when><esi:otherwise>PUBLIC</esi:otherwise></esi:choose><esi:include src="/frag/news"/>`,
    headers: shareable,
  });
  // A shareable shell with a private (per-user) fragment.
  origin.route("/page/account", {
    body: `<esi:include src="/frag/me"/>|<esi:include src="/frag/news"/>`,
    headers: shareable,
  });
  // A shareable shell whose output depends on Accept-Language only.
  origin.route("/page/lang", {
    body: `<esi:choose><esi:when test="$(HTTP_ACCEPT_LANGUAGE{de})">Hallo</esi:when><esi:otherwise>Hello</esi:otherwise></esi:choose>`,
    headers: shareable,
  });
  // Depends on nobody: the proxy should cache it.
  origin.route("/page/static", { body: `<esi:include src="/frag/news"/>`, headers: shareable });
  origin.route("/frag/news", { body: "NEWS", delayMs: 5 });
  origin.route("/frag/me", {
    body: async (req) => {
      await sleep(Math.floor(Math.random() * 20));
      return `me=${cookieOf(req, "user") || "nobody"}`;
    },
  });
  worker = await startWorker({
    config: {
      origin: origin.url,
      pages: [{ path: "/page/*" }],
      fragments: [
        { path: "/frag/me", private: true },
        { path: "/frag/*", soft_ttl: 60, hard_ttl: 600 },
      ],
    },
  });
  proxy = await startCachingProxy(worker.url);
});

after(async () => {
  await proxy?.close();
  await worker?.dispose();
  await origin?.close();
  assert.deepEqual(worker?.crossRequestWarnings() ?? [], [], "workerd reported cross-request I/O");
});

async function viaProxy(path, headers) {
  const res = await fetch(new URL(path, proxy.url), { headers });
  return { res, body: await res.text() };
}

test("50 users through a shared cache never receive another user's page", async (t) => {
  // Warm the shared fragment so pages are decided with everything known.
  await viaProxy("/page/static", {});
  await waitFor(async () => (await worker.kv.list()).keys.some((k) => k.name.includes("/frag/news")), {
    message: "shared fragment stored",
  });
  proxy.clear();
  const USERS = 50;
  const ROUNDS = 3;
  for (let round = 0; round < ROUNDS; round++) {
    const results = await Promise.all(
      Array.from({ length: USERS }, async (_, i) => {
        const headers = { cookie: `user=user${i}`, "accept-language": i % 2 ? "de" : "en" };
        const [hello, tier, account, lang, stat] = await Promise.all(
          ["/page/hello", "/page/tier", "/page/account", "/page/lang", "/page/static"].map((p) =>
            viaProxy(p, headers),
          ),
        );
        return { i, hello, tier, account, lang, stat };
      }),
    );
    for (const { i, hello, tier, account, lang, stat } of results) {
      const me = `user${i}`;
      assert.equal(hello.body, `<h1>hi ${me}</h1>NEWS`, `round ${round}`);
      assert.equal(tier.body, i === 0 ? "ADMIN user0NEWS" : "PUBLICNEWS", `round ${round}, ${me}`);
      assert.equal(account.body, `me=${me}|NEWS`, `round ${round}`);
      assert.equal(lang.body, i % 2 ? "Hallo" : "Hello", `round ${round}, ${me}`);
      assert.equal(stat.body, "NEWS");
      for (const r of [hello, tier, account]) {
        assert.equal(r.res.headers.get("cache-control"), "private, no-store", `${me}: ${r.body}`);
        assert.equal(r.res.headers.get("x-test-proxy"), "miss", "a per-user page was served from the shared cache");
      }
      assert.deepEqual(
        [...new Set([hello.body, account.body].join(" ").match(/user\d+/g))],
        [me],
        `round ${round}: another user's name`,
      );
    }
  }
  // The proxy did cache what depends on nobody, and what varies on
  // Accept-Language (one copy per language): it is a real shared cache.
  t.diagnostic(`proxy: ${proxy.stats.hits} hits, ${proxy.stats.misses} misses, ${proxy.stats.stored} stored`);
  assert.ok(proxy.stats.hits >= USERS * ROUNDS, `proxy hits: ${proxy.stats.hits}`);
  assert.ok(proxy.stats.stored >= 3, `proxy stored ${proxy.stats.stored}`);
});
