// Does the Cache API (`caches.default`) earn a place between isolate memory
// and KV? A fresh isolate has an empty memory, so its first pages read every
// fragment from a shared store: this measures that read, for a page of 10
// fragments, from KV and from the Cache API, in the same workerd and the
// same run, against a worker that reads nothing (the floor).
//
//   node bench/cache-layer.mjs [--pages 300] [--fragments 10] [--bytes 2200]
//
// Every request is a fresh lookup (no isolate memory is involved: the worker
// below is plain JavaScript with no memory layer), so each page is what a
// fresh isolate pays. Prints p50/p95/mean per store and saves JSON to
// bench/results/cache-layer.json.
import { Miniflare } from "miniflare";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []),
);
const PAGES = Math.min(Math.max(Number(args.pages ?? 300), 10), 5000);
const FRAGMENTS = Math.min(Math.max(Number(args.fragments ?? 10), 1), 100);
const BYTES = Math.min(Math.max(Number(args.bytes ?? 2200), 1), 1 << 20);

const script = `
export default {
  async fetch(req, env) {
    const u = new URL(req.url);
    const n = Number(u.searchParams.get("n"));
    const keys = Array.from({ length: n }, (_, i) => "http://origin.test/f/" + i);
    const cache = caches.default;
    if (u.pathname === "/fill") {
      const body = "x".repeat(Number(u.searchParams.get("bytes")));
      for (const k of keys) {
        await env.KV.put(k, body, { expirationTtl: 3600, metadata: { s: Date.now() } });
        await cache.put(k, new Response(body, { headers: { "cache-control": "max-age=3600" } }));
      }
      return new Response("ok");
    }
    let parts;
    if (u.pathname === "/kv") {
      parts = await Promise.all(keys.map((k) => env.KV.getWithMetadata(k, "arrayBuffer").then((r) => r.value)));
    } else if (u.pathname === "/cache") {
      parts = await Promise.all(keys.map((k) => cache.match(k).then((r) => r && r.arrayBuffer())));
    } else {
      parts = keys.map(() => new ArrayBuffer(0));
    }
    if (parts.some((p) => p == null)) return new Response("missing", { status: 500 });
    return new Response(String(parts.reduce((a, p) => a + p.byteLength, 0)));
  },
};`;

const mf = new Miniflare({
  modules: true,
  script,
  compatibilityDate: "2026-04-01",
  kvNamespaces: ["KV"],
});
const base = await mf.ready;
const get = async (p) => {
  const t = performance.now();
  const r = await fetch(new URL(p, base));
  const text = await r.text();
  if (r.status !== 200) throw new Error(`${p}: ${r.status} ${text}`);
  return performance.now() - t;
};
await get(`/fill?n=${FRAGMENTS}&bytes=${BYTES}`);

const stores = ["none", "kv", "cache"];
const times = Object.fromEntries(stores.map((s) => [s, []]));
// Interleaved, so that drift in the machine's load hits every store alike.
for (let i = 0; i < PAGES; i++) {
  for (const s of stores) times[s].push(await get(`/${s}?n=${FRAGMENTS}`));
}
await mf.dispose();

const q = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))];
const summary = Object.fromEntries(
  stores.map((s) => [
    s,
    {
      p50: +q(times[s], 0.5).toFixed(2),
      p95: +q(times[s], 0.95).toFixed(2),
      mean: +(times[s].reduce((a, b) => a + b, 0) / times[s].length).toFixed(2),
    },
  ]),
);
console.log(`page of ${FRAGMENTS} fragments × ${BYTES} bytes, ${PAGES} pages per store, ms:`);
console.log("store  | p50    | p95    | mean");
for (const s of stores) {
  const r = summary[s];
  console.log(`${s.padEnd(6)} | ${String(r.p50).padEnd(6)} | ${String(r.p95).padEnd(6)} | ${r.mean}`);
}
const out = path.join(path.dirname(fileURLToPath(import.meta.url)), "results", "cache-layer.json");
fs.mkdirSync(path.dirname(out), { recursive: true });
fs.writeFileSync(out, JSON.stringify({ pages: PAGES, fragments: FRAGMENTS, bytes: BYTES, summary }, null, 2));
