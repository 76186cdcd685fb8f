// User-specific fragments and hostile input, end to end: the real wasm
// worker under Miniflare against real origins on 127.0.0.1.
//
// - Private fragments reach the origin with the user's own credentials, are
//   never stored in KV and never shared between users, even with 50 users
//   at once while shared fragments are being refreshed; they make the page
//   `private, no-store`.
// - Cacheable fragments, variants and other origins never see credentials.
// - Includes outside the allow-list are never fetched (a third origin that
//   is running but not allowed counts what reaches it: nothing may).
// - Limits (includes per page, fragment size, fragment and page timeouts)
//   hold, and the page still renders with `alt`/`onerror`.
//
// Time bounds below are correctness bounds (a timeout fired, and fired
// before a longer one), deliberately generous; they are not performance
// measurements.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { cookieOf, startOrigin } from "./support/origin.mjs";
import { startWorker, waitFor } from "./support/worker.mjs";

/** The configured origin. */
let origin;
/** A second origin, in `allowed_origins`. */
let second;
/** A third origin, running but not allowed: nothing may ever reach it. */
let forbidden;
let worker;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

before(async () => {
  origin = await startOrigin();
  second = await startOrigin();
  forbidden = await startOrigin();
  forbidden.route("/*", { body: "FORBIDDEN ORIGIN REACHED" });

  // The private greeting echoes the session cookie it received, after a
  // random pause so that concurrent users' requests interleave.
  origin.route("/frag/greeting", {
    body: async (req) => {
      await sleep(Math.floor(Math.random() * 30));
      return `hello ${cookieOf(req, "session") || "nobody"}!`;
    },
  });
  origin.route("/frag/small", { body: "SMALL" });
  second.route("/frag/greeting", { body: (req) => `second:${cookieOf(req, "session") || "anon"}` });
  second.route("/other", { body: "SECOND" });

  worker = await startWorker({
    config: {
      origin: origin.url,
      allowed_origins: [second.url],
      limits: { max_includes: 5, max_fragment_bytes: 1000, max_page_bytes: 4000, page_timeout_ms: 2000 },
      pages: [
        // Shells cached in KV.
        { path: "/page/*", soft_ttl: 60, hard_ttl: 600 },
        // Shells fetched per request.
        { path: "/live/*" },
      ],
      fragments: [
        { path: "/frag/greeting", private: true },
        { path: "/frag/shared/*", soft_ttl: 1, hard_ttl: 300, jitter: 0, xfetch_beta: 0 },
        {
          path: "/frag/price",
          soft_ttl: 60,
          hard_ttl: 600,
          jitter: 0,
          xfetch_beta: 0,
          vary: { cookies: ["currency"] },
        },
        { path: "/frag/maybe", soft_ttl: 60, hard_ttl: 600, jitter: 0, xfetch_beta: 0, private_if_cookie: "session" },
        { path: "/frag/slow", soft_ttl: 60, hard_ttl: 600, timeout_ms: 300 },
        { path: "/frag/patient", soft_ttl: 60, hard_ttl: 600, timeout_ms: 10000 },
        { path: "/frag/*", soft_ttl: 60, hard_ttl: 600, jitter: 0, xfetch_beta: 0 },
      ],
    },
  });
});

after(async () => {
  await worker?.dispose();
  await Promise.all([origin?.close(), second?.close(), forbidden?.close()]);
  assert.equal(forbidden?.totalCount(), 0, "the origin that is not allowed was reached");
  assert.deepEqual(worker?.crossRequestWarnings() ?? [], [], "workerd reported cross-request I/O");
});

async function get(path, init) {
  const res = await worker.fetch(path, init);
  return { res, body: await res.text(), status: res.status };
}

/** Every KV key, across pages of the listing. */
async function allKeys() {
  const keys = [];
  let cursor;
  do {
    const page = await worker.kv.list(cursor ? { cursor } : {});
    keys.push(...page.keys);
    cursor = page.list_complete ? undefined : page.cursor;
  } while (cursor);
  return keys;
}

async function keysFor(fragment) {
  return (await allKeys()).filter((k) => k.name.includes(fragment));
}

/** The status of `path` in an `x-fragcache` header. */
function fragStatus(res, path) {
  const header = res.headers.get("x-fragcache") ?? "";
  const entry = header.split(", ").find((e) => e.startsWith(`${path}=`));
  return entry?.slice(path.length + 1).split(";")[0];
}

test("50 concurrent users each see only their own greeting, across shared refreshes", async () => {
  let round = 0;
  /** When the shell was fetched: round and ms since the round started. */
  const shellFetches = [];
  let roundStart = Date.now();
  origin.route("/page/users", {
    body: () => {
      shellFetches.push(`round ${round} at +${Date.now() - roundStart} ms`);
      return `<h1>hi</h1><esi:include src="/frag/greeting"/>|<esi:include src="/frag/shared/news"/>|<esi:include src="/frag/shared/ticker"/>`;
    },
  });
  // Shared fragments change on every fetch, so refreshes are visible.
  origin.route("/frag/shared/news", { body: (_req, n) => `news v${n}`, delayMs: 50 });
  origin.route("/frag/shared/ticker", { body: (_req, n) => `ticker v${n}` });
  const USERS = 50;
  const ROUNDS = 3;
  const user = (i) => `user${i}`;
  let lastFresh = 0;
  let staleServed = 0;
  for (round = 0; round < ROUNDS; round++) {
    if (round > 0) {
      // Wait (bounded) for the previous round's write, then for it to go stale,
      // so that this round is served stale while one refresh runs.
      const meta = await waitFor(
        async () => {
          const m = (await keysFor("/frag/shared/news"))[0]?.metadata;
          return m && m.f > lastFresh ? m : undefined;
        },
        { message: `round ${round}: shared fragment stored` },
      );
      lastFresh = meta.f;
      await waitFor(() => Date.now() > meta.f + 20, { message: `round ${round}: shared fragment stale` });
    }
    roundStart = Date.now();
    const results = await Promise.all(
      Array.from({ length: USERS }, async (_, i) => {
        const { res, body, status } = await get("/page/users", {
          headers: { cookie: `session=${user(i)}; theme=dark`, authorization: `Bearer token-${i}` },
        });
        return { i, res, body, status };
      }),
    );
    for (const { i, res, body, status } of results) {
      assert.equal(status, 200, `round ${round}, ${user(i)}: ${body}`);
      assert.match(body, new RegExp(`^<h1>hi</h1>hello ${user(i)}!\\|news v\\d+\\|ticker v\\d+$`), `round ${round}`);
      assert.deepEqual([...new Set(body.match(/user\d+/g))], [user(i)], `round ${round}: ${body}`);
      assert.equal(res.headers.get("cache-control"), "private, no-store");
      assert.equal(fragStatus(res, "/frag/greeting"), "bypass");
      if (fragStatus(res, "/frag/shared/news") === "stale") staleServed += 1;
    }
  }
  assert.ok(staleServed > 0, "some requests were served a stale shared fragment while it refreshed");

  // Every greeting request reached the origin with one user's own cookie and
  // authorization, each user exactly once per round: nothing coalesced or mixed.
  const greetings = origin.requests("/frag/greeting");
  assert.equal(greetings.length, USERS * ROUNDS);
  const perUser = new Map();
  for (const r of greetings) {
    const m = /^session=user(\d+); theme=dark$/.exec(r.headers.cookie ?? "");
    assert.ok(m, `greeting request with cookie ${r.headers.cookie}`);
    assert.equal(r.headers.authorization, `Bearer token-${m[1]}`, "cookie and authorization of one user");
    perUser.set(m[1], (perUser.get(m[1]) ?? 0) + 1);
  }
  assert.equal(perUser.size, USERS);
  for (const [u, n] of perUser) assert.equal(n, ROUNDS, `user${u}`);

  // Shared fragments and the cached shell were fetched without credentials,
  // and refreshed (not fetched per request).
  for (const path of ["/frag/shared/news", "/frag/shared/ticker", "/page/users"]) {
    const reqs = origin.requests(path);
    assert.ok(reqs.length >= 1, path);
    for (const r of reqs) {
      assert.equal(r.headers.cookie, undefined, `${path} got a cookie`);
      assert.equal(r.headers.authorization, undefined, `${path} got authorization`);
    }
  }
  const news = origin.count("/frag/shared/news");
  assert.ok(news >= ROUNDS && news <= 2 * ROUNDS, `${news} fetches of the shared fragment`);
  // One fetch of the cold shell for the whole burst, then hits.
  assert.equal(origin.count("/page/users"), 1, `the shell is cached; fetched ${shellFetches.join(", ")}`);

  // KV holds nothing of any user's: no key for the private path, and no value
  // mentions a user (write-backs have had time to land: wait for the last refresh).
  await waitFor(async () => ((await keysFor("/frag/shared/news"))[0]?.metadata?.f ?? 0) > lastFresh, {
    message: "last refresh stored",
  });
  const keys = await allKeys();
  assert.ok(keys.length > 0);
  assert.deepEqual(
    keys.filter((k) => k.name.includes("/frag/greeting")).map((k) => k.name),
    [],
  );
  for (const { name } of keys) {
    const value = await worker.kv.get(name);
    assert.doesNotMatch(value ?? "", /user\d+|token-/, `KV value of ${name}`);
  }
});

test("the page is private, no-store with a private fragment, else keeps the shell's Cache-Control", async () => {
  const shellCc = "public, max-age=30";
  origin.route("/live/cc-public", { body: `a<esi:include src="/frag/cc"/>b`, headers: { "cache-control": shellCc } });
  origin.route("/live/cc-private", {
    body: `a<esi:include src="/frag/cc"/><esi:include src="/frag/greeting"/>b`,
    headers: { "cache-control": shellCc },
  });
  origin.route("/live/cc-none", { body: `a<esi:include src="/frag/cc"/>b` });
  origin.route("/page/cc", { body: `c<esi:include src="/frag/cc"/>`, headers: { "cache-control": "public, max-age=45" } });
  origin.route("/frag/cc", { body: "CC", headers: { "cache-control": "public, max-age=5" } });
  const cookie = { headers: { cookie: "session=alice" } };

  // Cold: /frag/cc is still loading when the headers go out, and its origin
  // might still mark it private, so the page cannot be declared public yet.
  const cold = await get("/live/cc-public", cookie);
  assert.equal(cold.body, "aCCb");
  assert.equal(cold.res.headers.get("cache-control"), "private, no-store");
  await waitFor(async () => (await keysFor("/frag/cc")).length === 1, { message: "fragment stored" });

  const pub = await get("/live/cc-public", cookie);
  assert.equal(pub.body, "aCCb");
  assert.equal(pub.res.headers.get("cache-control"), shellCc);

  const priv = await get("/live/cc-private", cookie);
  assert.equal(priv.body, "aCChello alice!b");
  assert.equal(priv.res.headers.get("cache-control"), "private, no-store");

  const none = await get("/live/cc-none");
  assert.equal(none.body, "aCCb");
  assert.equal(none.res.headers.get("cache-control"), null, "no Cache-Control of the worker's own invention");

  // A cached shell keeps its Cache-Control on a miss and on a hit.
  const miss = await get("/page/cc");
  assert.equal(miss.res.headers.get("cache-control"), "public, max-age=45");
  await waitFor(async () => (await keysFor("/page/cc")).length === 1, { message: "shell stored" });
  const hit = await get("/page/cc", cookie);
  assert.match(hit.res.headers.get("x-fragcache"), /^shell=hit/);
  assert.equal(hit.body, "cCC");
  assert.equal(hit.res.headers.get("cache-control"), "public, max-age=45");
});

test("credentials go only to private fragments on the configured origin", async () => {
  origin.route("/live/headers", {
    body: [
      `<esi:include src="/frag/h-cacheable"/>`,
      `<esi:include src="/frag/greeting"/>`,
      `<esi:include src="${second.url}/frag/greeting"/>`,
      `<esi:include src="${second.url}/other"/>`,
      `<esi:include src="/unrouted/h"/>`,
    ].join("|"),
  });
  origin.route("/frag/h-cacheable", { body: "C" });
  origin.route("/unrouted/h", { body: "U" });
  const cookie = "session=carol; currency=EUR";
  const authorization = "Bearer carol-secret";
  const { res, body, status } = await get("/live/headers", {
    headers: { cookie, authorization, "accept-language": "de", "x-private-note": "carol" },
  });
  assert.equal(status, 200, body);
  assert.equal(body, "C|hello carol!|second:anon|SECOND|U");
  assert.equal(res.headers.get("cache-control"), "private, no-store");

  const [cacheable] = origin.requests("/frag/h-cacheable");
  assert.equal(cacheable.headers.cookie, undefined);
  assert.equal(cacheable.headers.authorization, undefined);
  assert.equal(cacheable.headers["x-private-note"], undefined);

  const [greeting] = origin.requests("/frag/greeting").slice(-1);
  assert.equal(greeting.headers.cookie, cookie);
  assert.equal(greeting.headers.authorization, authorization);

  // The second origin is allowed, but it is not the origin: no credentials,
  // whether or not the path looks like a private route, and for unrouted includes.
  const secondRequests = [...second.requests("/frag/greeting"), ...second.requests("/other")];
  assert.equal(secondRequests.length, 2);
  for (const r of secondRequests) {
    assert.equal(r.headers.cookie, undefined, `${r.path} on the second origin got a cookie`);
    assert.equal(r.headers.authorization, undefined, `${r.path} on the second origin got authorization`);
  }

  // Unrouted includes on the origin are treated as private: fetched per request.
  assert.equal(fragStatus(res, "/unrouted/h"), "bypass");

  for (const r of [cacheable, greeting, ...secondRequests, ...origin.requests("/unrouted/h")]) {
    assert.match(r.headers["surrogate-capability"] ?? "", /ESI\/1\.0/, `${r.path}: surrogate-capability`);
  }
});

test("variants: one entry and one fetch per currency, whoever asks", async () => {
  origin.route("/live/price", { body: `price: <esi:include src="/frag/price"/>` });
  origin.route("/frag/price", { body: (req) => `${cookieOf(req, "currency") || "none"} ${req.headers.cookie ?? ""}` });
  const as = (session, currency) => get("/live/price", { headers: { cookie: `session=${session}; currency=${currency}` } });

  const eur1 = await as("dave", "EUR");
  assert.equal(eur1.body, "price: EUR currency=EUR");
  const usd = await as("erin", "USD");
  assert.equal(usd.body, "price: USD currency=USD");
  await waitFor(async () => (await keysFor("/frag/price")).length === 2, { message: "two variants stored" });
  const eur2 = await as("frank", "EUR");
  assert.equal(eur2.body, "price: EUR currency=EUR");
  assert.equal(fragStatus(eur2.res, "/frag/price"), "hit");
  const usd2 = await as("grace", "USD");
  assert.equal(fragStatus(usd2.res, "/frag/price"), "hit");

  assert.equal(origin.count("/frag/price"), 2);
  assert.equal((await keysFor("/frag/price")).length, 2);
  // Only the declared cookie reached the origin, never the session.
  assert.deepEqual(
    origin.requests("/frag/price").map((r) => r.headers.cookie),
    ["currency=EUR", "currency=USD"],
  );
  for (const r of origin.requests("/frag/price")) assert.equal(r.headers.authorization, undefined);
  // A variant page is as shareable as its shell says, and tells shared
  // caches that it varies on cookies.
  assert.notEqual(eur2.res.headers.get("cache-control"), "private, no-store");
  assert.match(eur2.res.headers.get("vary") ?? "", /(^|,\s*)cookie(\s*,|$)/i);
});

test("private_if_cookie: cached for anonymous users, per request once signed in", async () => {
  origin.route("/live/maybe", { body: `[<esi:include src="/frag/maybe"/>]` });
  origin.route("/frag/maybe", { body: (req, n) => `maybe:${cookieOf(req, "session") || "anon"}:${n}` });

  const anon1 = await get("/live/maybe");
  assert.equal(anon1.body, "[maybe:anon:1]");
  assert.match(fragStatus(anon1.res, "/frag/maybe"), /^(lookup|miss)$/);
  await waitFor(async () => (await keysFor("/frag/maybe")).length === 1, { message: "anonymous copy stored" });
  const anon2 = await get("/live/maybe", { headers: { cookie: "theme=dark" } });
  assert.equal(anon2.body, "[maybe:anon:1]");
  assert.equal(fragStatus(anon2.res, "/frag/maybe"), "hit");
  assert.notEqual(anon2.res.headers.get("cache-control"), "private, no-store");
  // Signed-in users get another answer: shared caches must keep them apart.
  assert.match(anon2.res.headers.get("vary") ?? "", /(^|,\s*)cookie(\s*,|$)/i);
  assert.equal(origin.count("/frag/maybe"), 1);

  for (const [i, who] of ["heidi", "ivan", "heidi"].entries()) {
    const signed = await get("/live/maybe", { headers: { cookie: `session=${who}` } });
    assert.equal(signed.body, `[maybe:${who}:${i + 2}]`);
    assert.equal(fragStatus(signed.res, "/frag/maybe"), "bypass");
    assert.equal(signed.res.headers.get("cache-control"), "private, no-store");
  }
  assert.equal(origin.count("/frag/maybe"), 4);
  const reqs = origin.requests("/frag/maybe");
  assert.equal(reqs[0].headers.cookie, undefined);
  assert.equal(reqs[1].headers.cookie, "session=heidi");

  // The personal answers replaced nothing: anonymous users still get the cached copy.
  const anon3 = await get("/live/maybe");
  assert.equal(anon3.body, "[maybe:anon:1]");
  assert.equal(fragStatus(anon3.res, "/frag/maybe"), "hit");
  const keys = await keysFor("/frag/maybe");
  assert.equal(keys.length, 1);
  assert.doesNotMatch((await worker.kv.get(keys[0].name)) ?? "", /heidi|ivan/);
});

// On a cacheable route the leader of a cold load asks the origin without
// credentials; when the answer is personal, each follower fetches its own
// copy, and must do so the same way. (Before 4953ae0 the followers' copies
// were fetched with their cookies and authorization, loader.rs `cold()`.)
test("a cacheable route never receives credentials, even when its origin answers privately", async () => {
  origin.route("/frag/coalesced-private", {
    body: (req) => `cp:${cookieOf(req, "session") || "anon"}`,
    delayMs: 200,
    headers: { "cache-control": "private" },
  });
  origin.route("/live/coalesced-private", { body: `<esi:include src="/frag/coalesced-private"/>` });
  const results = await Promise.all(
    [0, 1, 2, 3, 4].map((i) =>
      get("/live/coalesced-private", { headers: { cookie: `session=judy${i}`, authorization: `Bearer judy${i}` } }),
    ),
  );
  for (const { status, body } of results) {
    assert.equal(status, 200);
    assert.equal(body, "cp:anon");
  }
  const reqs = origin.requests("/frag/coalesced-private");
  assert.ok(reqs.length >= 1);
  for (const r of reqs) {
    assert.equal(r.headers.cookie, undefined, "cookie sent to a cacheable route");
    assert.equal(r.headers.authorization, undefined, "authorization sent to a cacheable route");
  }
  assert.deepEqual(await keysFor("/frag/coalesced-private"), []);
});

test("includes outside the allow-list are never fetched; alt and onerror apply", async () => {
  const port = new URL(forbidden.url).port;
  const originAuthority = new URL(origin.url).host;
  const hostile = [
    `${forbidden.url}/x`,
    `//127.0.0.1:${port}/x`,
    `http://localhost:${port}/x`,
    `http://0x7f.1:${port}/x`,
    `http://2130706433:${port}/x`,
    `http://127.1:${port}/x`,
    `http://${originAuthority}@127.0.0.1:${port}/x`,
    `https://${originAuthority}/x`,
    "http://evil.example/x",
    "//evil.example/x",
    "http://origin@evil/",
    "javascript:alert(1)",
    "file:///etc/passwd",
    "data:text/html,x",
    "http://0x7f.1/",
    "http:\\\\evil.example\\x",
    "/\\evil.example/x",
  ];
  for (const [i, src] of hostile.entries()) {
    const path = `/live/allow-${i}`;
    origin.route(path, {
      body: `<p>${i}</p>[<esi:include src="${src}" alt="/frag/small"/>][<esi:include src="${src}" onerror="continue"/>]end`,
    });
    const { status, body } = await get(path);
    assert.equal(status, 200, `${src}: ${body}`);
    assert.equal(body, `<p>${i}</p>[SMALL][]end`, src);
  }
  // An include that fails with no fallback before any byte fails the page, still unfetched.
  origin.route("/live/allow-bare", { body: `<esi:include src="${forbidden.url}/bare"/>tail` });
  const bare = await get("/live/allow-bare");
  assert.equal(bare.status, 502);
  assert.equal(forbidden.totalCount(), 0, "an include reached the origin that is not allowed");
  assert.equal(origin.count("/x"), 0);
});

// core/src/url.rs refuses these (`UrlError::EncodedDotSegment`): WHATWG
// `fetch` would otherwise turn `/frag/%2e%2e/secret` into `/secret` after the
// route (here the cacheable `/frag/*`) was chosen.
test("percent-encoded dot segments in includes are refused, not normalised by fetch", async () => {
  origin.route("/secret", { body: "SECRET" });
  origin.route("/frag/admin", { body: "ADMIN" });
  origin.route("/live/dots", {
    body: [
      `<esi:include src="/frag/%2e%2e/secret" alt="/frag/small"/>`,
      `<esi:include src="/frag/x/.%2E/admin" onerror="continue"/>`,
      `<esi:include src="/frag/x/%2e%2e/../../secret" onerror="continue"/>`,
    ].join("|"),
  });
  const { status, body } = await get("/live/dots");
  assert.equal(status, 200, body);
  assert.equal(body, "SMALL||");
  assert.equal(origin.count("/secret"), 0);
  assert.equal(origin.count("/frag/admin"), 0);
});

test("limits: includes per page", async () => {
  const n = 7;
  origin.route("/live/many", {
    body: Array.from({ length: n }, (_, i) => `<esi:include src="/frag/many-${i}" onerror="continue"/>`).join(""),
  });
  for (let i = 0; i < n; i++) origin.route(`/frag/many-${i}`, { body: `M${i}` });
  const { status, body } = await get("/live/many");
  assert.equal(status, 200, body);
  const fetched = Array.from({ length: n }, (_, i) => origin.count(`/frag/many-${i}`));
  assert.equal(fetched.reduce((a, b) => a + b), 5, `fetched: ${fetched}`);
  // The first five in document order, the rest dropped by onerror="continue".
  assert.equal(body, "M0M1M2M3M4");

  // Nested includes count too: 2 at the top, 3 inside each of them.
  origin.route("/live/nested-many", { body: `<esi:include src="/frag/nm-a"/><esi:include src="/frag/nm-b"/>` });
  for (const p of ["a", "b"]) {
    origin.route(`/frag/nm-${p}`, {
      body: [0, 1, 2].map((i) => `<esi:include src="/frag/nm-${p}${i}" onerror="continue"/>`).join(""),
    });
    for (const i of [0, 1, 2]) origin.route(`/frag/nm-${p}${i}`, { body: `${p}${i}` });
  }
  const nested = await get("/live/nested-many");
  assert.equal(nested.status, 200, nested.body);
  const inner = ["a0", "a1", "a2", "b0", "b1", "b2"].filter((x) => origin.count(`/frag/nm-${x}`) > 0);
  assert.equal(inner.length, 3, `nested includes fetched: ${inner}`);
  assert.equal(nested.body.length, 3 * 2);
});

test("limits: output past max_page_bytes is cut off", async () => {
  origin.route("/live/long", {
    body: `<p>x</p>${[0, 1, 2, 3, 4].map((i) => `<esi:include src="/frag/long-${i}"/>`).join("")}`,
  });
  for (let i = 0; i < 5; i++) origin.route(`/frag/long-${i}`, { body: String(i).repeat(900) });
  const { status, body } = await get("/live/long");
  assert.equal(status, 200);
  // Output is charged against the budget before it is copied, and ends at
  // the first piece that does not fit: a prefix of the whole page, cut at a
  // piece boundary, never past the limit.
  const whole = `<p>x</p>${[0, 1, 2, 3, 4].map((i) => String(i).repeat(900)).join("")}`;
  assert.ok(body.length <= 4000, `${body.length} bytes`);
  assert.ok(body.length >= 8 + 2 * 900, `${body.length} bytes`);
  assert.equal((body.length - 8) % 900, 0, "cut between pieces");
  assert.equal(body, whole.slice(0, body.length));
});

test("limits: a fragment larger than max_fragment_bytes fails and its alt is used", async () => {
  origin.route("/live/big", {
    body: `[<esi:include src="/frag/big" alt="/frag/small"/>][<esi:include src="/frag/exact"/>]`,
  });
  origin.route("/frag/big", { body: "B".repeat(1001) });
  origin.route("/frag/exact", { body: "E".repeat(1000) });
  const { status, body } = await get("/live/big");
  assert.equal(status, 200, body.slice(0, 200));
  assert.equal(body, `[SMALL][${"E".repeat(1000)}]`);
  assert.equal(origin.count("/frag/big"), 1);
  await waitFor(async () => (await keysFor("/frag/exact")).length === 1, { message: "exact-size fragment stored" });
  assert.deepEqual(await keysFor("/frag/big"), [], "an oversized body is never stored");
});

test("limits: a hanging fragment fails after its route's timeout_ms and alt is used", async () => {
  origin.route("/live/slow", { body: `<p>a</p><esi:include src="/frag/slow" alt="/frag/small"/><p>b</p>` });
  origin.route("/frag/slow", { body: "never" });
  origin.fail("/frag/slow", "hang");
  const t0 = Date.now();
  const { status, body } = await get("/live/slow");
  const elapsed = Date.now() - t0;
  assert.equal(status, 200);
  assert.equal(body, "<p>a</p>SMALL<p>b</p>");
  // timeout_ms is 300 and page_timeout_ms 2000: the route's timeout decided.
  assert.ok(elapsed >= 250 && elapsed < 1800, `page took ${elapsed} ms`);
  assert.equal(origin.count("/frag/slow"), 1);
});

test("limits: page_timeout_ms bounds a page whose fragment outlasts it", async () => {
  origin.route("/live/patient", {
    body: `<p>start</p><esi:include src="/frag/patient" alt="/frag/small" onerror="continue"/><p>end</p>`,
  });
  origin.route("/frag/patient", { body: "never" });
  origin.fail("/frag/patient", "hang");
  const t0 = Date.now();
  const { status, body } = await get("/live/patient");
  const elapsed = Date.now() - t0;
  assert.equal(status, 200);
  // Past the page deadline nothing more is loaded, not even the alt.
  assert.equal(body, "<p>start</p><p>end</p>");
  // page_timeout_ms is 2000; the route would have waited 10 s.
  assert.ok(elapsed >= 1800 && elapsed < 6000, `page took ${elapsed} ms`);
});

// ---------------------------------------------------------------------------
// Privacy discovered late. Headers go out with the first bytes; whatever is
// not known by then (a fragment still loading, nested includes in a cached
// fragment) makes the page `private, no-store`, since a private fragment
// found afterwards could no longer change them.
// ---------------------------------------------------------------------------

test(
  "a private fragment nested in a cacheable fragment makes the page private",
  async () => {
    origin.route("/frag/wrapper", { body: `W[<esi:include src="/frag/greeting"/>]` });
    origin.route("/live/nested-private", {
      body: `<p>head</p><esi:include src="/frag/wrapper"/>`,
      headers: { "cache-control": "public, max-age=60" },
    });
    for (const who of ["alice", "bob"]) {
      const { res, body } = await get("/live/nested-private", { headers: { cookie: `session=${who}` } });
      assert.equal(body, `<p>head</p>W[hello ${who}!]`);
      assert.equal(res.headers.get("cache-control"), "private, no-store", `${who}'s greeting in a public page`);
    }
  },
);

// A cacheable route whose origin answers `private` or with `Set-Cookie`
// A response the origin marks personal (`Cache-Control: private`,
// `no-store`, or `Set-Cookie`) on a route configured as cacheable. The first
// time, the fragment is cold when the headers go out, which alone makes the
// page private; so the test goes on: from then on the isolate remembers the
// answer is personal ("bypass" at header time, not a cold "miss"), and the
// page is private because of that. It is never stored, never shared.
test(
  "a fragment response the origin marks private makes the page private, and is known as such next time",
  async () => {
    let n = 0;
    origin.route("/frag/shared/origin-private", {
      body: () => `OP${++n}`,
      headers: { "cache-control": "private" },
      delayMs: 20,
    });
    origin.route("/frag/shared/origin-cookie", {
      body: () => `OC${++n}`,
      headers: { "set-cookie": "tracking=1" },
      delayMs: 20,
    });
    for (const frag of ["origin-private", "origin-cookie"]) {
      const page = `/live/${frag}`;
      origin.route(page, {
        body: `<p><esi:include src="/frag/shared/${frag}"/></p>`,
        headers: { "cache-control": "public, max-age=60" },
      });
      const first = await get(page);
      assert.equal(first.res.headers.get("cache-control"), "private, no-store", page);
      // Cold: unknown at header time (a KV lookup or a miss), not yet a pass.
      assert.match(fragStatus(first.res, `/frag/shared/${frag}`), /^(lookup|miss)$/, page);
      const bodies = new Set([first.body]);
      for (let i = 0; i < 3; i++) {
        const again = await get(page);
        assert.equal(again.res.headers.get("cache-control"), "private, no-store", page);
        assert.equal(fragStatus(again.res, `/frag/shared/${frag}`), "bypass", page);
        assert.equal(again.res.headers.get("set-cookie"), null, "a fragment's Set-Cookie never reaches the page");
        bodies.add(again.body);
      }
      assert.equal(bodies.size, 4, `${page}: every request got its own copy`);
      assert.equal(origin.count(`/frag/shared/${frag}`), 4, page);
      assert.deepEqual(await keysFor(`/frag/shared/${frag}`), [], `${page}: never stored`);
    }
  },
);
