// A small shared HTTP cache for the integration tests: what a corporate
// proxy or another CDN tier in front of the worker does with its responses.
//
// It stores a GET response when a shared cache may (RFC 9111 §3): status
// 200, no `Set-Cookie`, `Cache-Control` with `public`, `max-age` or
// `s-maxage`, and none of `private`, `no-store`, `no-cache`. It keys the
// stored copy on the URL plus the request headers the response's `Vary`
// names (`Vary: *` never matches), and serves it while its age (including
// the `Age` it arrived with) is below `s-maxage` or `max-age`. So if the
// worker ever labels a user-specific page as shareable, the next user is
// handed the first user's page, which is exactly what the tests look for.

import http from "node:http";

/** Directives of a Cache-Control header, lower-cased names. */
export function directives(header) {
  const out = new Map();
  for (const part of (header ?? "").split(",")) {
    const [name, ...rest] = part.trim().split("=");
    if (name) out.set(name.toLowerCase(), rest.join("=").replace(/^"|"$/g, ""));
  }
  return out;
}

/** How long a shared cache may serve this response, in seconds (0: never store). */
export function sharedLifetime(status, headers) {
  if (status !== 200 || headers["set-cookie"] !== undefined) return 0;
  const cc = directives(headers["cache-control"]);
  if (cc.has("private") || cc.has("no-store") || cc.has("no-cache")) return 0;
  const seconds = Number(cc.get("s-maxage") ?? cc.get("max-age"));
  if (!Number.isFinite(seconds) || seconds <= 0) return 0;
  return seconds - Number(headers.age ?? 0);
}

/** Request header names a response varies on; null for `Vary: *`. */
function varyNames(headers) {
  const names = (headers.vary ?? "")
    .split(",")
    .map((n) => n.trim().toLowerCase())
    .filter(Boolean);
  return names.includes("*") ? null : names;
}

/**
 * Starts the proxy on 127.0.0.1 in front of `upstream` (an origin URL).
 *
 * @param {string} upstream
 * @returns {Promise<{ url: string, stats: { hits: number, misses: number, stored: number }, clear: () => void, close: () => Promise<void> }>}
 */
export async function startCachingProxy(upstream) {
  /** url -> [{ vary: string[], values: Record<string,string>, expires: number, status, headers, body }] */
  const store = new Map();
  const stats = { hits: 0, misses: 0, stored: 0 };

  const server = http.createServer(async (req, res) => {
    const url = req.url;
    const now = Date.now();
    if (req.method === "GET") {
      const candidates = store.get(url) ?? [];
      const match = candidates.find(
        (c) => c.expires > now && c.vary.every((n) => (req.headers[n] ?? "") === c.values[n]),
      );
      if (match) {
        stats.hits += 1;
        res.writeHead(match.status, { ...match.headers, "x-test-proxy": "hit" });
        res.end(match.body);
        return;
      }
    }
    stats.misses += 1;
    const headers = { ...req.headers };
    delete headers.host;
    delete headers.connection;
    let upstreamRes;
    try {
      upstreamRes = await fetch(new URL(url, upstream), { method: req.method, headers, redirect: "manual" });
    } catch (err) {
      res.writeHead(502, { "content-type": "text/plain" });
      res.end(`proxy: ${err.message}`);
      return;
    }
    const body = Buffer.from(await upstreamRes.arrayBuffer());
    const out = {};
    for (const [name, value] of upstreamRes.headers) {
      if (name === "content-length" || name === "content-encoding" || name === "transfer-encoding") continue;
      out[name] = value;
    }
    const setCookies = upstreamRes.headers.getSetCookie();
    if (setCookies.length > 0) out["set-cookie"] = setCookies;
    const lifetime = req.method === "GET" ? sharedLifetime(upstreamRes.status, out) : 0;
    const vary = varyNames(out);
    if (lifetime > 0 && vary !== null) {
      const values = Object.fromEntries(vary.map((n) => [n, req.headers[n] ?? ""]));
      const list = (store.get(url) ?? []).filter((c) => !vary.every((n) => c.values[n] === values[n]));
      list.push({ vary, values, expires: now + lifetime * 1000, status: upstreamRes.status, headers: out, body });
      store.set(url, list);
      stats.stored += 1;
    }
    res.writeHead(upstreamRes.status, { ...out, "x-test-proxy": "miss" });
    res.end(body);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    stats,
    clear: () => store.clear(),
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections?.();
        server.close(() => resolve());
      }),
  };
}
