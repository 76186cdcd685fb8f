// The demo origin behind `npm start`: a small shop whose home page is an
// HTML shell of <esi:include>s, served the way an operator's own web stack
// would serve it. Fragments answer after a realistic delay and print a line
// for every hit, so a newcomer can watch fragcache take load off the origin:
// a cached page produces no "origin:" lines at all.
//
//   node examples/demo-origin.mjs [--port 8788]

import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

const HOST = "127.0.0.1";
const DEFAULT_PORT = 8788;

const PRODUCTS = [
  { name: "Ethiopia Guji", note: "bergamot, peach, black tea", price: 14.5 },
  { name: "Colombia Huila", note: "red apple, caramel", price: 12.0 },
  { name: "House Espresso", note: "cocoa, hazelnut, long finish", price: 11.25 },
  { name: "Kenya Nyeri", note: "blackcurrant, grapefruit", price: 16.75 },
  { name: "Decaf Brazil", note: "milk chocolate, almond", price: 10.5 },
  { name: "Pour-over Kit", note: "dripper, filters, scoop", price: 34.0 },
];

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

/** The signed-in user, or null. Demo only: the cookie holds the bare name, unsigned. */
function sessionUser(req) {
  const match = /(?:^|;\s*)session=([^;]*)/.exec(req.headers.cookie ?? "");
  if (!match) return null;
  const user = decodeURIComponent(match[1]);
  return /^[A-Za-z0-9_-]{1,32}$/.test(user) ? user : null;
}

const SHELL = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Ridgeline Coffee</title>
<style>
  :root { --ink: #2b2118; --muted: #7a6a5c; --paper: #fbf7f2; --accent: #b5562b; --line: #eadfd3; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); background: var(--paper); }
  .wrap { max-width: 960px; margin: 0 auto; padding: 0 20px; }
  header.site { display: flex; align-items: center; justify-content: space-between; padding: 18px 0; border-bottom: 1px solid var(--line); }
  .brand { font-size: 1.4rem; font-weight: 700; letter-spacing: .02em; }
  .brand small { display: block; font-size: .8rem; font-weight: 400; color: var(--muted); }
  .greeting { font-size: .95rem; }
  nav ul { display: flex; gap: 22px; list-style: none; margin: 0; padding: 12px 0; border-bottom: 1px solid var(--line); }
  a { color: var(--accent); text-decoration: none; }
  a:hover { text-decoration: underline; }
  .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 16px; padding: 0; list-style: none; }
  .card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 16px; }
  .card h3 { margin: 0 0 4px; font-size: 1.05rem; }
  .card p { margin: 0 0 10px; color: var(--muted); font-size: .9rem; }
  .price { font-weight: 700; }
  .stamp { color: var(--muted); font-size: .85rem; }
  .hint { background: #fff4e8; border: 1px dashed var(--accent); border-radius: 8px; padding: 10px 14px; font-size: .9rem; margin: 18px 0; }
  code { background: #f1e8de; padding: 1px 5px; border-radius: 4px; }
  footer { margin: 32px 0; padding-top: 14px; border-top: 1px solid var(--line); color: var(--muted); font-size: .85rem; }
</style>
</head>
<body>
<div class="wrap">
  <header class="site">
    <esi:include src="/fragments/header"/>
    <div class="greeting"><esi:include src="/fragments/greeting"/></div>
  </header>
  <esi:include src="/fragments/nav"/>
  <p class="hint">This page is assembled by fragcache from five fragments. Open DevTools &rarr; Network and look at the
    <code>x-fragcache</code> response header: each fragment is a <code>hit</code>, <code>miss</code>, <code>stale</code>
    or <code>bypass</code> (the per-user greeting is never cached).</p>
  <main><esi:include src="/fragments/products"/></main>
  <esi:include src="/fragments/footer"/>
</div>
</body>
</html>
`;

/** Fragment handlers: delay in ms, and a render function of the request. */
const FRAGMENTS = {
  "/fragments/header": {
    delayMs: 50,
    render: () => `<div class="brand">Ridgeline Coffee<small>Small-batch roasts, shipped fresh</small></div>`,
  },
  "/fragments/nav": {
    delayMs: 30,
    render: () =>
      `<nav><ul><li><a href="/">Shop</a></li><li><a href="/#coffee">Coffee</a></li>` +
      `<li><a href="/#gear">Brewing gear</a></li><li><a href="/#about">About us</a></li></ul></nav>`,
  },
  "/fragments/products": {
    delayMs: 300,
    render: () => {
      const items = PRODUCTS.map(
        (p) =>
          `<li class="card"><h3>${escapeHtml(p.name)}</h3><p>${escapeHtml(p.note)}</p>` +
          `<span class="price">$${p.price.toFixed(2)}</span></li>`,
      ).join("");
      // The time shows when the origin last rendered this fragment, so a
      // cache hit, a stale serve and a background refresh are told apart.
      const now = new Date().toISOString().slice(11, 19);
      return `<h2 id="coffee">This week's roasts</h2><ul class="grid">${items}</ul>` +
        `<p class="stamp">Prices rendered by the origin at ${now} UTC</p>`;
    },
  },
  "/fragments/greeting": {
    delayMs: 80,
    private: true,
    render: (req) => {
      const user = sessionUser(req);
      return user
        ? `Hello, ${escapeHtml(user)} &middot; <a href="/logout">Sign out</a>`
        : `<a href="/login?user=alice">Sign in</a>`;
    },
  },
  "/fragments/footer": {
    delayMs: 20,
    render: () => `<footer>&copy; ${new Date().getUTCFullYear()} Ridgeline Coffee &middot; Roasted to order, shipped Mondays.</footer>`,
  },
};

function send(req, res, status, headers, body = "") {
  const buf = Buffer.from(body, "utf8");
  res.writeHead(status, { "content-length": String(buf.length), ...headers });
  res.end(req.method === "HEAD" ? undefined : buf);
}

async function handle(req, res) {
  const started = Date.now();
  const url = new URL(req.url ?? "/", `http://${HOST}`);
  const route = url.pathname;
  const log = (extra = "") => console.log(`origin: ${req.method} ${route} (${Date.now() - started} ms)${extra}`);

  if (req.method !== "GET" && req.method !== "HEAD") {
    send(req, res, 405, { allow: "GET, HEAD", "content-type": "text/plain; charset=utf-8" }, "method not allowed");
    return;
  }

  const fragment = FRAGMENTS[route];
  if (fragment) {
    await new Promise((resolve) => setTimeout(resolve, fragment.delayMs));
    if (res.destroyed) return;
    // Public fragments send no Cache-Control so that the TTLs in
    // wrangler.toml alone decide caching; the private one says so, which
    // keeps it out of any cache whatever the edge's config says.
    const headers = { "content-type": "text/html; charset=utf-8" };
    if (fragment.private) Object.assign(headers, { "cache-control": "private", vary: "Cookie" });
    send(req, res, 200, headers, fragment.render(req));
    const user = fragment.private ? ` user=${sessionUser(req) ?? "-"}` : "";
    log(user);
    return;
  }

  switch (route) {
    case "/":
      send(req, res, 200, { "content-type": "text/html; charset=utf-8" }, SHELL);
      log(" shell");
      return;
    case "/login": {
      const user = url.searchParams.get("user") ?? "";
      if (!/^[A-Za-z0-9_-]{1,32}$/.test(user)) {
        send(req, res, 400, { "content-type": "text/plain; charset=utf-8", "cache-control": "no-store" },
          "usage: /login?user=NAME (letters, digits, - and _, up to 32)\n");
        log(" bad user");
        return;
      }
      send(req, res, 302, {
        location: "/",
        "set-cookie": `session=${user}; Path=/; HttpOnly; SameSite=Lax`,
        "cache-control": "no-store",
      });
      log(` user=${user}`);
      return;
    }
    case "/logout":
      send(req, res, 302, {
        location: "/",
        "set-cookie": "session=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax",
        "cache-control": "no-store",
      });
      log();
      return;
    case "/favicon.ico":
      // Browsers ask for it on every visit; a quiet empty answer keeps the
      // log about fragments. start.mjs also polls it to see the stack is up.
      send(req, res, 204, { "cache-control": "public, max-age=86400" });
      return;
    default:
      send(req, res, 404, { "content-type": "text/plain; charset=utf-8" }, "not found");
      log(" not found");
  }
}

/**
 * Starts the demo origin on 127.0.0.1.
 *
 * @param {number} [port=8788]  0 picks a free port.
 * @returns {Promise<{ server: http.Server, url: string, close: () => Promise<void> }>}
 *   Rejects with a readable message if the port is taken.
 */
export async function startDemoOrigin(port = DEFAULT_PORT) {
  const server = http.createServer((req, res) => {
    req.resume();
    handle(req, res).catch((err) => {
      console.error("origin: handler failed:", err);
      if (!res.headersSent) send(req, res, 500, { "content-type": "text/plain" }, "internal error");
    });
  });
  await new Promise((resolve, reject) => {
    server.once("error", (err) => {
      if (err.code === "EADDRINUSE") {
        reject(new Error(`demo origin: port ${port} on ${HOST} is already in use (is another \`npm start\` running?)`, { cause: err }));
      } else {
        reject(err);
      }
    });
    server.listen(port, HOST, resolve);
  });
  const actual = /** @type {import("node:net").AddressInfo} */ (server.address()).port;
  return {
    server,
    url: `http://${HOST}:${actual}`,
    close: () =>
      new Promise((resolve) => {
        server.close(() => resolve());
        // Browsers hold keep-alive connections open; don't wait for them.
        server.closeAllConnections();
      }),
  };
}

function parsePort(argv) {
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = arg === "--port" ? argv[i + 1] : arg.startsWith("--port=") ? arg.slice(7) : undefined;
    if (value !== undefined) {
      const port = Number(value);
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`demo origin: invalid --port ${value}`);
      return port;
    }
  }
  return process.env.ORIGIN_PORT ? Number(process.env.ORIGIN_PORT) : DEFAULT_PORT;
}

async function main() {
  let origin;
  try {
    origin = await startDemoOrigin(parsePort(process.argv.slice(2)));
  } catch (err) {
    console.error(err.message);
    process.exit(1);
  }
  console.log(`origin: demo shop listening on ${origin.url}/`);
  const stop = () => origin.close().then(() => process.exit(0));
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
}

const invokedDirectly = process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (invokedDirectly) await main();
