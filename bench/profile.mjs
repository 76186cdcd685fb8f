// A CPU profile of the worker serving the warm page, from V8's own sampling
// profiler through workerd's inspector: where the ~220 µs per page go.
//
//   node bench/profile.mjs [<build/index.js>] [--seconds 4] [--concurrency 16]
//
// Use a build with function names for readable wasm frames (release profile
// with `strip = false` and wasm-opt `-g`); a stripped build shows
// `wasm-function[N]`. Prints self time by function, top 40, and the share
// spent in wasm, in JavaScript glue and in the runtime (idle and GC apart).
import http from "node:http";
import { WebSocket } from "ws";
import { startOrigin } from "../tests/support/origin.mjs";
import { startWorkers } from "../tests/support/worker.mjs";

const positional = process.argv.slice(2).filter((a, i, all) => !a.startsWith("--") && !all[i - 1]?.startsWith("--"));
const opt = (name, dflt, max) => {
  const i = process.argv.indexOf(`--${name}`);
  const v = i > 0 ? Number(process.argv[i + 1]) : dflt;
  return Math.min(Math.max(Number.isInteger(v) ? v : dflt, 1), max);
};
const SECONDS = opt("seconds", 4, 30);
const CONNS = opt("concurrency", 16, 256);
const INSPECTOR_PORT = 9229 + Math.floor(Math.random() * 500);

const origin = await startOrigin();
const frags = Array.from({ length: 10 }, (_, i) => `/f/${i}`);
origin.route("/p/warm", {
  body: `<!doctype html><title>profile</title>\n${frags.map((f) => `<section><esi:include src="${f}"/></section>`).join("\n")}\n`,
});
frags.forEach((f, i) => origin.route(f, { body: `fragment ${i} `.repeat(200) }));
const w = await startWorkers({
  config: {
    origin: origin.url,
    pages: [{ path: "/p/*", soft_ttl: 600, hard_ttl: 3600 }],
    fragments: [{ path: "/f/*", soft_ttl: 600, hard_ttl: 3600 }],
  },
  count: 1,
  coordinator: false,
  analytics: "discard",
  ...(positional[0] ? { scriptPath: positional[0] } : {}),
  inspectorPort: INSPECTOR_PORT,
});
const base = w.urls[0];

const get = (agent) =>
  new Promise((resolve) => {
    const req = http.get(new URL("/p/warm", base), { agent }, (res) => {
      res.on("data", () => {});
      res.on("end", () => resolve(res.statusCode));
    });
    req.on("error", () => resolve(0));
  });
const agent = new http.Agent({ keepAlive: true, maxSockets: CONNS });
for (let i = 0; i < 20; i++) await get(agent);

const targets = await (await fetch(`http://127.0.0.1:${INSPECTOR_PORT}/json`)).json();
const target = targets.find((t) => t.title?.includes(w.names[0])) ?? targets[0];
const ws = new WebSocket(target.webSocketDebuggerUrl);
await new Promise((r, j) => (ws.once("open", r), ws.once("error", j)));
let id = 0;
const pending = new Map();
ws.on("message", (m) => {
  const msg = JSON.parse(m);
  if (msg.id && pending.has(msg.id)) pending.get(msg.id)(msg);
});
const send = (method, params = {}) =>
  new Promise((resolve) => {
    const n = ++id;
    pending.set(n, resolve);
    ws.send(JSON.stringify({ id: n, method, params }));
  });

await send("Profiler.enable");
await send("Profiler.setSamplingInterval", { interval: 100 });
await send("Profiler.start");
let served = 0;
const end = performance.now() + SECONDS * 1000;
await Promise.all(
  Array.from({ length: CONNS }, async () => {
    while (performance.now() < end) if ((await get(agent)) === 200) served++;
  }),
);
const { result } = await send("Profiler.stop");
ws.close();
agent.destroy();
await w.dispose();
await origin.close();

const { nodes, samples, timeDeltas } = result.profile;
const byId = new Map(nodes.map((n) => [n.id, n]));
const self = new Map();
samples.forEach((s, i) => {
  const n = byId.get(s);
  const name = n.callFrame.functionName || "(anonymous)";
  const url = n.callFrame.url || "";
  const key = `${name}  ${url.includes(".wasm") || url.startsWith("wasm") ? "[wasm]" : url ? `[${url.split("/").pop()}]` : ""}`;
  self.set(key, (self.get(key) ?? 0) + (timeDeltas[i] ?? 0));
});
const total = [...self.values()].reduce((a, b) => a + b, 0);
const idle = [...self].filter(([k]) => /^\((idle|program|garbage collector)\)/.test(k)).reduce((a, [, v]) => a + v, 0);
const busy = total - idle;
console.log(`${served} pages in ${SECONDS} s; ${samples.length} samples; busy ${(busy / 1000).toFixed(0)} ms of ${(total / 1000).toFixed(0)} ms`);
console.log(`busy time per page: ${(busy / served).toFixed(0)} µs`);
const share = (pred) => [...self].filter(([k]) => pred(k)).reduce((a, [, v]) => a + v, 0) / busy;
console.log(`wasm ${(100 * share((k) => k.includes("[wasm]"))).toFixed(1)} %, ` +
  `JS glue ${(100 * share((k) => /\[.*\.js\]/.test(k) && !k.includes("[wasm]"))).toFixed(1)} %, ` +
  `runtime/native ${(100 * share((k) => !k.includes("[") || /\[\]$/.test(k.trim()))).toFixed(1)} %`);
// `--callers <name>`: the call paths into a function, with their self time.
const callersOf = process.argv.includes("--callers") ? process.argv[process.argv.indexOf("--callers") + 1] : null;
if (callersOf) {
  const parent = new Map();
  for (const n of nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const hits = new Map(samples.map((s) => [s, 0]));
  samples.forEach((s, i) => hits.set(s, hits.get(s) + (timeDeltas[i] ?? 0)));
  const paths = new Map();
  for (const n of nodes.filter((n) => n.callFrame.functionName === callersOf)) {
    const chain = [];
    for (let id = parent.get(n.id); id !== undefined && chain.length < 12; id = parent.get(id)) {
      chain.push(byId.get(id).callFrame.functionName || "(anonymous)");
    }
    const key = chain.join(" < ");
    paths.set(key, (paths.get(key) ?? 0) + (hits.get(n.id) ?? 0));
  }
  for (const [k, v] of [...paths].sort((a, b) => b[1] - a[1]).slice(0, 8)) console.log(`${(v / 1000).toFixed(1)} ms  ${callersOf} < ${k}`);
}
for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 40)) {
  console.log(`${(v / 1000).toFixed(1).padStart(8)} ms ${((100 * v) / total).toFixed(1).padStart(5)} %  ${k}`);
}
