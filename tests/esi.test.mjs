// The ESI language through the real worker: variables from real request
// cookies, query strings and headers; conditions; try/except against a
// failing origin fragment; Surrogate-Control gating and stripping.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startOrigin } from "./support/origin.mjs";
import { startWorker } from "./support/worker.mjs";

let origin;
let worker;

before(async () => {
  origin = await startOrigin();
  worker = await startWorker({
    config: {
      origin: origin.url,
      pages: [{ path: "/esi/*" }, { path: "/gated/*", require_surrogate_control: true }],
      fragments: [{ path: "/frag/*", soft_ttl: 30, hard_ttl: 300 }],
    },
  });
});

after(async () => {
  await worker?.dispose();
  await origin?.close();
  assert.deepEqual(worker?.crossRequestWarnings() ?? [], []);
});

const text = async (path, init) => {
  const res = await worker.fetch(path, init);
  return { res, body: await res.text() };
};

test("variables come from the request's cookies, query and headers", async () => {
  origin.route("/esi/vars", {
    body:
      `<esi:vars>name=$(HTTP_COOKIE{name}) q=$(QUERY_STRING{q}) host=$(HTTP_HOST) ` +
      `lang=$(HTTP_ACCEPT_LANGUAGE{de}) browser=$(HTTP_USER_AGENT{browser}) ` +
      `missing=$(HTTP_COOKIE{nope}|'anon')</esi:vars> raw $(HTTP_COOKIE{name})`,
  });
  const { body } = await text("/esi/vars?q=red+shoes", {
    headers: {
      cookie: "name=ann; other=1",
      "accept-language": "de-DE,en;q=0.5",
      "user-agent": "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    },
  });
  const host = new URL(worker.url).host;
  assert.equal(
    body,
    `name=ann q=red shoes host=${host} lang=true browser=MOZILLA missing=anon raw $(HTTP_COOKIE{name})`,
  );
});

test("hostile cookie and query values cannot create markup or includes", async () => {
  origin.route("/esi/hostile", {
    body: `<esi:vars><p>$(HTTP_COOKIE{x})</p><a title="$(QUERY_STRING{t})"></a></esi:vars><esi:include src="/frag/echo?v=$(HTTP_COOKIE{x})"/>`,
  });
  origin.route("/frag/echo", { body: (req) => `[${req.url}]` });
  origin.route("/frag/evil", { body: "EVIL" });
  const { body } = await text(`/esi/hostile?t=${encodeURIComponent('"><script>x</script>')}`, {
    headers: { cookie: `x=<esi:include src="/frag/evil"/>` },
  });
  assert.ok(!body.includes("<script>"), body);
  assert.ok(!body.includes("EVIL"), body);
  assert.ok(body.includes("&lt;esi:include"), body);
  assert.equal(origin.count("/frag/evil"), 0);
  // In the src the value is substituted as URL text: what would change the
  // URL's structure (quotes, spaces, angle brackets, and in the query `&`,
  // `?`, `+`) is percent-encoded, so it stays one parameter value.
  assert.match(body, /\[\/frag\/echo\?v=%3Cesi:include%20src=%22\/frag\/evil%22\/%3E\]/);
});

test("choose/when picks the first true branch from request data", async () => {
  origin.route("/esi/choose", {
    body:
      `<esi:choose><esi:when test="$(HTTP_COOKIE{tier}) == 'gold'">GOLD</esi:when>` +
      `<esi:when test="$(QUERY_STRING{n}) > 5 &amp; !($(HTTP_COOKIE{tier}) == 'banned')">BIG</esi:when>` +
      `<esi:otherwise>PLAIN</esi:otherwise></esi:choose>`,
  });
  assert.equal((await text("/esi/choose", { headers: { cookie: "tier=gold" } })).body, "GOLD");
  assert.equal((await text("/esi/choose?n=9")).body, "BIG");
  assert.equal((await text("/esi/choose?n=9", { headers: { cookie: "tier=banned" } })).body, "PLAIN");
  assert.equal((await text("/esi/choose?n=2")).body, "PLAIN");
});

test("try/except falls back when an origin fragment fails", async () => {
  origin.route("/esi/try", {
    body:
      `A<esi:try><esi:attempt>[<esi:include src="/frag/flaky"/>]</esi:attempt>` +
      `<esi:except>(sorry)</esi:except></esi:try>B`,
  });
  origin.route("/frag/flaky", { body: "ok" });
  origin.fail("/frag/flaky", "status", { status: 500 });
  assert.equal((await text("/esi/try")).body, "A(sorry)B");
  origin.fail("/frag/flaky", "ok");
  assert.equal((await text("/esi/try")).body, "A[ok]B");
});

test("includes in src resolve relative to the page and decode entities", async () => {
  origin.route("/esi/dir/page", { body: `<esi:include src="part?a=1&amp;b=2"/>` });
  origin.route("/esi/dir/part", { body: (req) => `got ${req.url}` });
  assert.equal((await text("/esi/dir/page")).body, "got /esi/dir/part?a=1&b=2");
});

test("Surrogate-Control gates ESI on gated routes and never reaches the client", async () => {
  origin.route("/gated/on", {
    body: `<esi:include src="/frag/g"/>`,
    headers: { "surrogate-control": 'content="ESI/1.0"' },
  });
  origin.route("/gated/off", { body: `<esi:include src="/frag/g"/>` });
  origin.route("/frag/g", { body: "G" });
  const on = await text("/gated/on");
  assert.equal(on.body, "G");
  assert.equal(on.res.headers.get("surrogate-control"), null);
  const off = await text("/gated/off");
  assert.equal(off.body, `<esi:include src="/frag/g"/>`);
  // Pass-through routes strip it too.
  origin.route("/plain", { body: "p", headers: { "surrogate-control": "max-age=60" } });
  const plain = await text("/plain");
  assert.equal(plain.body, "p");
  assert.equal(plain.res.headers.get("surrogate-control"), null);
  // The worker advertises what it can do.
  assert.equal(origin.requests("/frag/g")[0].headers["surrogate-capability"], 'fragcache="ESI/1.0"');
});

test("an unconfigured route is assembled when the origin asks with Surrogate-Control", async () => {
  origin.route("/origin-driven", {
    body: `X<esi:include src="/frag/od"/>Y`,
    headers: { "surrogate-control": 'content="ESI/1.0"', "set-cookie": "seen=1" },
  });
  origin.route("/frag/od", { body: "OD" });
  const { res, body } = await text("/origin-driven");
  assert.equal(body, "XODY");
  assert.equal(res.headers.get("surrogate-control"), null);
  assert.equal(res.headers.get("set-cookie"), "seen=1");
  assert.equal(res.headers.get("cache-control"), "private, no-store");
  assert.match(res.headers.get("x-fragcache"), /^shell=bypass, \/frag\/od=/);
});
