// The page as an HTTP response, end to end: the real wasm worker under
// Miniflare against a real origin on 127.0.0.1.
//
// - The shell's headers (security headers, Link, Content-Disposition,
//   custom ones) reach the client on assembled, passed-through and
//   origin-driven pages; hop-by-hop, surrogate and (for rewritten bodies)
//   validator headers do not.
// - The shell's Vary is merged with what the fragments vary on.
// - A page that read a cookie is `private, no-store`; one that read only a
//   request header keeps its Cache-Control and names the header in Vary.
// - Include URLs built from variables resolve as URLs; the allow-list, not
//   the encoding, keeps them on allowed hosts.
// - Large shells are assembled; an ESI shell over the limit is a 502, never
//   raw markup.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startOrigin } from "./support/origin.mjs";
import { startWorker, waitFor } from "./support/worker.mjs";

let origin;
/** Running, not allowed: nothing may reach it. */
let evil;
let worker;

const SHELL_LIMIT = 3 * 1024 * 1024;

/** Headers a site relies on in browsers, plus a custom one. */
const SITE_HEADERS = {
  "content-security-policy": "default-src 'self'; img-src https://img.example",
  "strict-transport-security": "max-age=63072000; includeSubDomains",
  "x-frame-options": "DENY",
  "x-content-type-options": "nosniff",
  "referrer-policy": "strict-origin-when-cross-origin",
  "content-disposition": "inline",
  link: "</app.css>; rel=preload; as=style",
  "x-team": "checkout",
};

before(async () => {
  origin = await startOrigin();
  evil = await startOrigin();
  evil.route("/*", { body: "EVIL HOST REACHED" });
  origin.route("/frag/a", { body: "A" });
  origin.route("/frag/lang", { body: (req) => `lang=${req.headers["accept-language"] ?? "-"}` });
  origin.route("/fragments/promo", { body: "PROMO" });
  worker = await startWorker({
    config: {
      origin: origin.url,
      limits: { max_shell_bytes: SHELL_LIMIT },
      pages: [{ path: "/cached/*", soft_ttl: 60, hard_ttl: 600 }, { path: "/live/*" }],
      fragments: [
        {
          path: "/frag/lang",
          soft_ttl: 60,
          hard_ttl: 600,
          vary: { headers: ["accept-language"] },
          forward_headers: ["accept-language"],
        },
        { path: "/frag/*", soft_ttl: 60, hard_ttl: 600 },
        { path: "/fragments/*", soft_ttl: 60, hard_ttl: 600 },
      ],
    },
  });
});

after(async () => {
  await worker?.dispose();
  await Promise.all([origin?.close(), evil?.close()]);
  assert.equal(evil?.totalCount(), 0, "a host outside the allow-list was reached");
  assert.deepEqual(worker?.crossRequestWarnings() ?? [], [], "workerd reported cross-request I/O");
});

async function get(path, init) {
  const res = await worker.fetch(path, init);
  return { res, body: await res.text(), status: res.status };
}

function assertSiteHeaders(res, what) {
  for (const [name, value] of Object.entries(SITE_HEADERS)) {
    assert.equal(res.headers.get(name), value, `${what}: ${name}`);
  }
  assert.equal(res.headers.get("surrogate-control"), null, `${what}: surrogate-control`);
  assert.equal(res.headers.get("x-hop"), null, `${what}: a header named by Connection`);
}

/** Tokens of a Vary header, lower-cased. */
function varyOf(res) {
  return (res.headers.get("vary") ?? "")
    .split(",")
    .map((t) => t.trim().toLowerCase())
    .filter(Boolean);
}

const SHELL_EXTRAS = {
  etag: '"shell-v1"',
  "last-modified": "Tue, 01 Dec 2026 10:00:00 GMT",
  connection: "x-hop",
  "x-hop": "1",
  "surrogate-control": "max-age=60",
};

test("an assembled page keeps the shell's headers, minus validators and surrogate headers", async () => {
  origin.route("/cached/secure", {
    body: `<p><esi:include src="/frag/a"/></p>`,
    headers: { ...SITE_HEADERS, ...SHELL_EXTRAS, "cache-control": "public, max-age=30" },
  });
  const first = await get("/cached/secure");
  assert.equal(first.body, "<p>A</p>");
  assertSiteHeaders(first.res, "assembled, shell miss");
  assert.equal(first.res.headers.get("etag"), null, "the body differs from the shell's");
  assert.equal(first.res.headers.get("last-modified"), null);
  await waitFor(async () => (await worker.kv.list()).keys.some((k) => k.name.includes("/cached/secure")), {
    message: "shell stored",
  });
  const again = await get("/cached/secure");
  assert.equal(again.body, "<p>A</p>");
  assert.match(again.res.headers.get("x-fragcache"), /^shell=hit/);
  assertSiteHeaders(again.res, "assembled, shell hit");
  assert.equal(again.res.headers.get("cache-control"), "public, max-age=30");
  assert.match(again.res.headers.get("age") ?? "", /^\d+$/, "a cached shell states its age");
});

test("a page shell without ESI passes through with all its headers, validators included", async () => {
  origin.route("/live/plain", {
    body: "<p>no esi here</p>",
    headers: { ...SITE_HEADERS, ...SHELL_EXTRAS, "cache-control": "public, max-age=30" },
  });
  const { res, body } = await get("/live/plain");
  assert.equal(body, "<p>no esi here</p>");
  assertSiteHeaders(res, "passed through");
  assert.equal(res.headers.get("etag"), '"shell-v1"', "the body is the shell's own");
  assert.equal(res.headers.get("cache-control"), "public, max-age=30");
});

test("an origin-driven ESI page (Surrogate-Control) keeps the shell's headers", async () => {
  origin.route("/driven/page", {
    body: `[<esi:include src="/frag/a"/>]`,
    headers: { ...SITE_HEADERS, ...SHELL_EXTRAS, "surrogate-control": 'content="ESI/1.0"' },
  });
  const { res, body } = await get("/driven/page");
  assert.equal(body, "[A]");
  assertSiteHeaders(res, "origin-driven");
  assert.equal(res.headers.get("etag"), null);
});

test("the shell's Vary is merged with what the fragments vary on", async () => {
  origin.route("/live/lang", {
    body: `<esi:include src="/frag/lang"/>`,
    headers: { vary: "Accept-Encoding", "cache-control": "public, max-age=30" },
  });
  const de = await get("/live/lang", { headers: { "accept-language": "de" } });
  assert.equal(de.body, "lang=de");
  // The first request's fragment is cold at header time, so that page is
  // private; once it is cached the page is shareable and says what it varies on.
  await waitFor(async () => (await worker.kv.list()).keys.some((k) => k.name.includes("/frag/lang")), {
    message: "fragment stored",
  });
  const de2 = await get("/live/lang", { headers: { "accept-language": "de" } });
  assert.equal(de2.body, "lang=de");
  assert.equal(de2.res.headers.get("cache-control"), "public, max-age=30");
  assert.deepEqual(varyOf(de2.res), ["accept-encoding", "accept-language"]);
  assert.equal(de2.res.headers.get("vary").split(",").length, 2, "one Vary field, no repeats");
});

test("a shareable shell that reads a cookie becomes private; one that reads Accept-Language varies on it", async () => {
  origin.route("/live/hello", {
    body: `<esi:vars>Hello $(HTTP_COOKIE{name})</esi:vars>`,
    headers: { "cache-control": "public, max-age=60" },
  });
  const hello = await get("/live/hello", { headers: { cookie: "name=alice" } });
  assert.equal(hello.body, "Hello alice");
  assert.equal(hello.res.headers.get("cache-control"), "private, no-store");

  origin.route("/live/choose-cookie", {
    body: `<esi:choose><esi:when test="$(HTTP_COOKIE{tier})=='gold'">GOLD</esi:when><esi:otherwise>STD</esi:otherwise></esi:choose>`,
    headers: { "cache-control": "public, max-age=60" },
  });
  const gold = await get("/live/choose-cookie", { headers: { cookie: "tier=gold" } });
  assert.equal(gold.body, "GOLD");
  assert.equal(gold.res.headers.get("cache-control"), "private, no-store");

  origin.route("/live/greet", {
    body: `<esi:choose><esi:when test="$(HTTP_ACCEPT_LANGUAGE{de})">Hallo</esi:when><esi:otherwise>Hello</esi:otherwise></esi:choose>`,
    headers: { "cache-control": "public, max-age=60" },
  });
  const hallo = await get("/live/greet", { headers: { "accept-language": "de-DE,de;q=0.9" } });
  assert.equal(hallo.body, "Hallo");
  assert.equal(hallo.res.headers.get("cache-control"), "public, max-age=60");
  assert.deepEqual(varyOf(hallo.res), ["accept-language"]);

  origin.route("/live/ua", {
    body: `<esi:vars>$(HTTP_USER_AGENT{os})</esi:vars>`,
    headers: { "cache-control": "public, max-age=60" },
  });
  const ua = await get("/live/ua", { headers: { "user-agent": "Mozilla/5.0 (Windows NT 10.0)" } });
  assert.equal(ua.body, "WIN");
  assert.deepEqual(varyOf(ua.res), ["user-agent"]);
  assert.equal(ua.res.headers.get("cache-control"), "public, max-age=60");
});

test("an include src built from a variable resolves as a URL; the allow-list keeps it home", async () => {
  origin.route("/live/qsrc", {
    body: `[<esi:include src="$(QUERY_STRING{frag})" onerror="continue"/>]`,
    headers: { "cache-control": "public, max-age=60" },
  });
  const ok = await get(`/live/qsrc?frag=${encodeURIComponent("/fragments/promo")}`);
  assert.equal(ok.body, "[PROMO]");
  const evilHost = new URL(evil.url).host;
  for (const value of [
    `${evil.url}/x`,
    `//${evilHost}/x`,
    `/\\${evilHost}/x`,
    `http://user@${evilHost}/x`,
    `http:${evilHost}/x`,
    "/fragments/promo\r\nx-injected: 1",
  ]) {
    const r = await get(`/live/qsrc?frag=${encodeURIComponent(value)}`);
    assert.equal(r.status, 200, value);
    assert.equal(r.body, "[]", `${JSON.stringify(value)} must not be fetched`);
  }
  assert.equal(evil.totalCount(), 0);
});

test("a 2 MB shell with includes is assembled, configured or origin-driven", async () => {
  const filler = "<p>" + "x".repeat(1000) + "</p>\n";
  const big = (n) =>
    `<esi:include src="/frag/a"/>${filler.repeat(n)}<esi:include src="/frag/a"/>${filler.repeat(n)}<esi:include src="/frag/a"/>`;
  const body = big(1000);
  assert.ok(body.length > 2_000_000);
  origin.route("/live/big", { body });
  origin.route("/driven/big", { body, headers: { "surrogate-control": 'content="ESI/1.0"' } });
  for (const path of ["/live/big", "/driven/big"]) {
    const r = await get(path);
    assert.equal(r.status, 200, path);
    assert.ok(!r.body.includes("<esi:"), `${path}: no raw ESI`);
    assert.equal(r.body.length, body.length - 3 * `<esi:include src="/frag/a"/>`.length + 3, path);
    assert.ok(r.body.startsWith("A<p>") && r.body.endsWith("</p>\nA"), path);
  }
});

test("an ESI shell over max_shell_bytes is a 502, never raw markup, with or without a length", async () => {
  const over = `<esi:include src="/frag/a"/>` + "y".repeat(SHELL_LIMIT + 10);
  origin.route("/driven/huge", { body: over, headers: { "surrogate-control": 'content="ESI/1.0"' } });
  origin.route("/driven/huge-chunked", {
    body: over,
    headers: { "surrogate-control": 'content="ESI/1.0"', "transfer-encoding": "chunked" },
  });
  origin.route("/live/huge", { body: over });
  for (const path of ["/driven/huge", "/driven/huge-chunked", "/live/huge"]) {
    const r = await get(path);
    assert.equal(r.status, 502, path);
    assert.ok(!r.body.includes("<esi:"), `${path}: raw ESI reached the client`);
    assert.equal(r.res.headers.get("cache-control"), "no-store", path);
  }
});
