// A/B of two worker builds on the warm page (10 cached fragments), for
// build settings such as opt-level: the same origin, the same load, the two
// builds alternated round by round so that drift in the machine's load
// falls on both alike.
//
//   node bench/ab.mjs <build/index.js of A> <build/index.js of B> [--rounds 3] [--seconds 4] [--concurrency 32]
import http from "node:http";
import { startOrigin } from "../tests/support/origin.mjs";
import { startWorker } from "../tests/support/worker.mjs";

const [a, b] = process.argv.slice(2).filter((x) => !x.startsWith("--") && !/^\d+$/.test(x));
if (!a || !b) {
  console.error("usage: node bench/ab.mjs <A/index.js> <B/index.js> [--rounds N] [--seconds S] [--concurrency C]");
  process.exit(2);
}
const opt = (name, dflt, max) => {
  const i = process.argv.indexOf(`--${name}`);
  const v = i > 0 ? Number(process.argv[i + 1]) : dflt;
  return Math.min(Math.max(Number.isInteger(v) ? v : dflt, 1), max);
};
const ROUNDS = opt("rounds", 3, 20);
const SECONDS = opt("seconds", 4, 30);
const CONNS = opt("concurrency", 32, 256);

const origin = await startOrigin();
const frags = Array.from({ length: 10 }, (_, i) => `/f/${i}`);
origin.route("/p/warm", {
  body: `<!doctype html><title>ab</title>\n${frags.map((f) => `<section><esi:include src="${f}"/></section>`).join("\n")}\n`,
});
frags.forEach((f, i) => origin.route(f, { body: `fragment ${i} `.repeat(200) }));
const config = {
  origin: origin.url,
  pages: [{ path: "/p/*", soft_ttl: 600, hard_ttl: 3600 }],
  fragments: [{ path: "/f/*", soft_ttl: 600, hard_ttl: 3600 }],
};
const workers = { A: await startWorker({ config, scriptPath: a }), B: await startWorker({ config, scriptPath: b }) };

const get = (base, agent) =>
  new Promise((resolve) => {
    const t0 = performance.now();
    const req = http.get(new URL("/p/warm", base), { agent }, (res) => {
      res.on("data", () => {});
      res.on("end", () => resolve({ ok: res.statusCode === 200, ms: performance.now() - t0 }));
    });
    req.on("error", () => resolve({ ok: false, ms: 0 }));
  });

async function steady(base) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONNS });
  await Promise.all(Array.from({ length: CONNS }, () => get(base, agent)));
  const times = [];
  const end = performance.now() + SECONDS * 1000;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: CONNS }, async () => {
      while (performance.now() < end) {
        const r = await get(base, agent);
        if (r.ok) times.push(r.ms);
      }
    }),
  );
  agent.destroy();
  times.sort((x, y) => x - y);
  return { rps: Math.round((times.length / (performance.now() - t0)) * 1000), p99: +times[Math.floor(times.length * 0.99)].toFixed(1) };
}

for (const w of Object.values(workers)) {
  for (let i = 0; i < 3; i++) await get(w.url); // fill and warm
}
const results = { A: [], B: [] };
for (let r = 0; r < ROUNDS; r++) {
  for (const k of r % 2 ? ["B", "A"] : ["A", "B"]) {
    const s = await steady(workers[k].url);
    results[k].push(s);
    console.log(`round ${r + 1} ${k}: ${s.rps} req/s, p99 ${s.p99} ms`);
  }
}
const mean = (xs) => Math.round(xs.reduce((x, y) => x + y, 0) / xs.length);
const ra = mean(results.A.map((s) => s.rps));
const rb = mean(results.B.map((s) => s.rps));
console.log(`A ${a}: ${ra} req/s; B ${b}: ${rb} req/s; B/A = ${(rb / ra).toFixed(3)}`);
for (const w of Object.values(workers)) await w.dispose();
await origin.close();
