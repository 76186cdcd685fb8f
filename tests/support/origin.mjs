// A scriptable HTTP origin for fragcache's integration tests.
//
// The worker under test fetches pages and fragments from this server over
// real loopback TCP, so tests see exactly what an operator's origin would
// see: how many requests arrived (the stampede tests depend on this), which
// cookies were forwarded (private fragments), and how the worker copes with
// slow, failing, hanging and resetting origins.

import http from "node:http";

const DEFAULT_CONTENT_TYPE = "text/html; charset=utf-8";

/**
 * The `name` cookie in a Node request's Cookie header ("" if absent), so
 * origin routes can answer per user.
 *
 * @param {http.IncomingMessage} req
 * @param {string} name
 * @returns {string}
 */
export function cookieOf(req, name) {
  for (const part of (req.headers.cookie ?? "").split(";")) {
    const [k, ...v] = part.trim().split("=");
    if (k === name) return v.join("=");
  }
  return "";
}

/**
 * @typedef {object} RouteSpec
 * @property {string | Buffer | ((req: http.IncomingMessage, n: number) => string | Buffer | Promise<string | Buffer>)} body
 *   Response body. A function gets the Node request (to read cookies and
 *   other headers) and `n`, the 1-based number of this request for the path,
 *   so a test can serve a new version on each fetch.
 * @property {number} [status=200]
 * @property {Record<string, string | string[]>} [headers={}]
 *   Extra response headers; `content-type` defaults to text/html.
 * @property {number} [delayMs=0] Wait this long before answering.
 */

/**
 * @typedef {object} RecordedRequest
 * @property {string} method
 * @property {string} path    Path without the query string.
 * @property {string} query   Raw query string without the leading "?" ("" if none).
 * @property {http.IncomingHttpHeaders} headers  Lower-cased header names.
 */

/**
 * Starts an origin on 127.0.0.1 with an ephemeral port.
 *
 * Routes are matched exactly by path (query ignored); a route path ending in
 * `*` matches any path with that prefix, the longest prefix winning. Unknown
 * paths get 404 "not found".
 *
 * @returns {Promise<{
 *   url: string,
 *   route: (path: string, spec: RouteSpec) => void,
 *   fail: (path: string, mode: "status" | "hang" | "reset" | "ok", opts?: { status?: number, body?: string, headers?: Record<string, string>, delayMs?: number }) => void,
 *   count: (path: string) => number,
 *   requests: (path: string) => RecordedRequest[],
 *   totalCount: () => number,
 *   reset: () => void,
 *   close: () => Promise<void>,
 * }>}
 */
export async function startOrigin() {
  /** @type {Map<string, RouteSpec>} */
  const routes = new Map();
  /** @type {Map<string, { mode: string, opts: object }>} */
  const failures = new Map();
  /** @type {Map<string, RecordedRequest[]>} */
  const records = new Map();
  let total = 0;
  let closed = false;

  // Tracked so close() can cut keep-alive and deliberately hung connections,
  // which would otherwise keep server.close() (and the test run) waiting.
  const sockets = new Set();
  const timers = new Set();

  /** Finds the entry for `path` in an exact-or-prefix map. */
  function lookup(map, path) {
    if (map.has(path)) return map.get(path);
    let best;
    let bestLen = -1;
    for (const [key, value] of map) {
      if (key.endsWith("*")) {
        const prefix = key.slice(0, -1);
        if (path.startsWith(prefix) && prefix.length > bestLen) {
          best = value;
          bestLen = prefix.length;
        }
      }
    }
    return best;
  }

  /** Resolves after `ms`, or never if the server closes first. */
  function delay(ms) {
    if (!ms) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        timers.delete(t);
        resolve();
      }, ms);
      timers.add(t);
    });
  }

  function send(req, res, status, headers, body) {
    // The client (the worker) may have given up while we were delaying.
    if (res.destroyed || res.writableEnded || req.socket.destroyed) return;
    const buf = Buffer.isBuffer(body) ? body : Buffer.from(String(body ?? ""), "utf8");
    const out = { ...headers };
    const names = Object.keys(out).map((h) => h.toLowerCase());
    if (!names.includes("content-type")) out["content-type"] = DEFAULT_CONTENT_TYPE;
    // A route that declares `transfer-encoding: chunked` is sent without a length.
    if (!names.includes("content-length") && !names.includes("transfer-encoding")) out["content-length"] = String(buf.length);
    res.writeHead(status, out);
    res.end(req.method === "HEAD" ? undefined : buf);
  }

  async function handle(req, res) {
    const url = new URL(req.url ?? "/", "http://origin.invalid");
    const path = url.pathname;

    // Counted on arrival, before any delay, so a test can observe a request
    // that is still in flight (e.g. "the origin saw exactly one fetch").
    const record = {
      method: req.method ?? "GET",
      path,
      query: url.search.startsWith("?") ? url.search.slice(1) : url.search,
      headers: { ...req.headers },
    };
    if (!records.has(path)) records.set(path, []);
    records.get(path).push(record);
    total += 1;
    const n = records.get(path).length;

    const failure = lookup(failures, path);
    if (failure) {
      const { mode, opts } = failure;
      if (mode === "reset") {
        req.socket.destroy();
        return;
      }
      if (mode === "hang") {
        // Deliberately never answer; close() destroys the socket.
        return;
      }
      if (mode === "status") {
        await delay(opts.delayMs ?? 0);
        send(req, res, opts.status ?? 500, opts.headers ?? {}, opts.body ?? "origin failure");
        return;
      }
    }

    const spec = lookup(routes, path);
    if (!spec) {
      send(req, res, 404, { "content-type": "text/plain; charset=utf-8" }, "not found");
      return;
    }

    await delay(spec.delayMs ?? 0);
    if (closed) return;
    let body;
    try {
      body = typeof spec.body === "function" ? await spec.body(req, n) : spec.body;
    } catch (err) {
      // A broken test route should be loud, not look like a worker bug.
      send(req, res, 599, { "content-type": "text/plain" }, `origin route threw: ${err?.stack ?? err}`);
      return;
    }
    send(req, res, spec.status ?? 200, spec.headers ?? {}, body);
  }

  const server = http.createServer((req, res) => {
    // Drain any request body so keep-alive connections stay usable.
    req.resume();
    handle(req, res).catch((err) => {
      if (!res.headersSent && !res.destroyed) {
        res.writeHead(599, { "content-type": "text/plain" });
        res.end(String(err?.stack ?? err));
      }
    });
  });
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  // "reset" destroys sockets mid-request; that is expected, not a crash.
  server.on("clientError", (_err, socket) => socket.destroy());

  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const { port } = /** @type {import("node:net").AddressInfo} */ (server.address());

  return {
    url: `http://127.0.0.1:${port}`,

    route(path, spec) {
      if (!spec || spec.body === undefined) throw new TypeError(`route(${path}): spec.body is required`);
      routes.set(path, spec);
    },

    fail(path, mode, opts = {}) {
      if (mode === "ok") {
        failures.delete(path);
        return;
      }
      if (!["status", "hang", "reset"].includes(mode)) {
        throw new TypeError(`fail(${path}): unknown mode ${JSON.stringify(mode)}`);
      }
      failures.set(path, { mode, opts });
    },

    count(path) {
      return records.get(path)?.length ?? 0;
    },

    requests(path) {
      return [...(records.get(path) ?? [])];
    },

    totalCount() {
      return total;
    },

    // Routes and fail() modes stay: a test re-arms counters between phases
    // without re-describing the origin.
    reset() {
      records.clear();
      total = 0;
    },

    async close() {
      if (closed) return;
      closed = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      const done = new Promise((resolve) => server.close(() => resolve()));
      for (const socket of sockets) socket.destroy();
      await done;
    },
  };
}
