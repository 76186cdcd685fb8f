// `npm start`: one command from a fresh checkout to a running demo.
//
// Installs the toolchain pieces (scripts/setup.sh), builds the worker
// (scripts/build.sh), starts the demo shop origin and `wrangler dev` in
// front of it, waits until the worker answers, and prints where to look.
// Ctrl-C (or SIGTERM) stops both servers.
//
//   npm start [-- --skip-setup] [-- --skip-build]
//   ORIGIN_PORT=8788 WORKER_PORT=8787 START_TIMEOUT_S=60 npm start

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const HOST = "127.0.0.1";
const ORIGIN_PORT = portFromEnv("ORIGIN_PORT", 8788);
const WORKER_PORT = portFromEnv("WORKER_PORT", 8787);
const START_TIMEOUT_MS = (Number(process.env.START_TIMEOUT_S) > 0 ? Number(process.env.START_TIMEOUT_S) : 60) * 1000;
const ORIGIN_URL = `http://${HOST}:${ORIGIN_PORT}`;
const WORKER_URL = `http://${HOST}:${WORKER_PORT}`;
// The admin API's token for this run only (a deployed worker takes it from
// `wrangler secret put FRAGCACHE_ADMIN_TOKEN`), unless one is given.
const ADMIN_TOKEN = process.env.FRAGCACHE_ADMIN_TOKEN || randomBytes(12).toString("hex");

const args = new Set(process.argv.slice(2));

/** Long-running children, killed on exit. */
const children = new Map(); // name -> ChildProcess
let shuttingDown = false;

function portFromEnv(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const port = Number(raw);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    console.error(`[start] error: ${name}=${raw} is not a valid port`);
    process.exit(1);
  }
  return port;
}

function say(msg) {
  console.log(`\n[start] ${msg}`);
}

/** Reports a failure noticed in an event handler and stops everything. */
function die(msg, code = 1) {
  if (shuttingDown) return;
  console.error(`\n[start] error: ${msg}`);
  shutdown(code);
}

/** Resolves true if nothing listens on host:port (so our server can bind it). */
function portIsFree(port) {
  return new Promise((resolve) => {
    const probe = net.createServer();
    probe.once("error", () => resolve(false));
    probe.listen(port, HOST, () => probe.close(() => resolve(true)));
  });
}

async function requirePortsFree() {
  for (const [port, what, env] of [
    [ORIGIN_PORT, "demo origin", "ORIGIN_PORT"],
    [WORKER_PORT, "wrangler dev", "WORKER_PORT"],
  ]) {
    if (!(await portIsFree(port))) {
      throw new Error(
        `port ${port} on ${HOST} (for ${what}) is already in use.\n` +
          `        Stop whatever holds it (another \`npm start\`?), e.g. find it with: ss -ltnp 'sport = :${port}'\n` +
          `        or choose another port: ${env}=<port> npm start`,
      );
    }
  }
}

/** Runs a setup step to completion, its output going to the terminal. */
function runStep(label, script) {
  const file = path.join(ROOT, script);
  if (!existsSync(file)) throw new Error(`${script} is missing; cannot ${label}`);
  say(`${label}: bash ${script}`);
  return new Promise((resolve, reject) => {
    // Own process group, like the servers, so a SIGTERM to us also stops
    // whatever the step runs (cargo, rustc), not just bash.
    const child = spawn("bash", [file], { cwd: ROOT, stdio: ["ignore", "inherit", "inherit"], detached: true });
    children.set(label, child);
    child.on("error", (err) => reject(new Error(`could not run bash ${script}: ${err.message}`)));
    child.on("exit", (code, signal) => {
      children.delete(label);
      if (code === 0) resolve();
      else reject(new Error(`${script} failed (${signal ? `signal ${signal}` : `exit code ${code}`}); see its output above`));
    });
  });
}

/**
 * Starts a long-running child in its own process group, so shutdown can
 * stop it together with everything it spawned (wrangler runs workerd).
 */
function startServer(name, command, argv, env = process.env) {
  const child = spawn(command, argv, {
    cwd: ROOT,
    env,
    // No stdin: wrangler must not expect a terminal (CI has none).
    stdio: ["ignore", "inherit", "inherit"],
    detached: true,
  });
  children.set(name, child);
  child.on("error", (err) => die(`could not start ${name}: ${err.message}`));
  child.on("exit", (code, signal) => {
    children.delete(name);
    die(`${name} exited unexpectedly (${signal ? `signal ${signal}` : `exit code ${code}`})`);
  });
  return child;
}

/**
 * Polls `url` until any HTTP response arrives and returns its status, or
 * null at the deadline or as soon as `child` exits (its own error output
 * says why).
 */
async function waitUntilAnswering(url, child, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) return null;
    try {
      // wrangler's proxy may accept and hold a request while the worker is
      // still loading, so each attempt is bounded by what time is left.
      const res = await fetch(url, { signal: AbortSignal.timeout(Math.max(250, deadline - Date.now())) });
      await res.arrayBuffer();
      return res.status;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }
  return null;
}

/** Warns if wrangler.toml points the worker at a different origin than ours. */
function checkConfiguredOrigin() {
  const toml = path.join(ROOT, "wrangler.toml");
  if (!existsSync(toml)) throw new Error("wrangler.toml is missing; `wrangler dev` needs it for the FRAGCACHE config and KV binding");
  const configured = /^\s*origin\s*=\s*"([^"]*)"/m.exec(readFileSync(toml, "utf8"))?.[1];
  if (configured && configured.replace(/\/+$/, "") !== ORIGIN_URL) {
    console.warn(
      `\n[start] warning: wrangler.toml sends fragment requests to ${configured}, ` +
        `but the demo origin runs on ${ORIGIN_URL}.\n        Change FRAGCACHE.origin in wrangler.toml or unset ORIGIN_PORT.`,
    );
  }
}

function banner() {
  const line = "─".repeat(66);
  console.log(`
${line}
  fragcache demo is running

  Open        ${WORKER_URL}/
              (the origin itself, uncached: ${ORIGIN_URL}/)

  Watch       the x-fragcache response header (DevTools > Network, or
              curl -sI ${WORKER_URL}/): one entry per fragment,
              hit / miss / stale / bypass (lookup: still being read from
              KV when the headers left), with its age. Lines starting
              with "origin:" below show every request that reached the origin.

  Sign in     ${WORKER_URL}/login?user=alice   (sign out: /logout)
              The greeting is private: fetched per user, never cached.

  Admin       token for this run: ${ADMIN_TOKEN}
              (README → Operations; FRAGCACHE_ADMIN_TOKEN=… npm start to choose it)
              curl -H "Authorization: Bearer ${ADMIN_TOKEN}" -H "Accept: application/json" \\
                "${WORKER_URL}/_fragcache/inspect?path=/"
              curl -X POST -H "Authorization: Bearer ${ADMIN_TOKEN}" \\
                "${WORKER_URL}/_fragcache/purge?path=/fragments/nav&soft=1"

  Stop        Ctrl-C
${line}
`);
}

/** Sends `signal` to a child's whole process group, falling back to the child. */
function signalGroup(child, signal) {
  try {
    process.kill(-child.pid, signal);
  } catch {
    try {
      child.kill(signal);
    } catch {
      // Already gone.
    }
  }
}

async function shutdown(code) {
  if (shuttingDown) return;
  shuttingDown = true;
  const running = [...children.values()].filter((c) => c.exitCode === null && c.signalCode === null);
  for (const child of running) signalGroup(child, "SIGTERM");
  // Give wrangler a moment to stop workerd cleanly, then insist.
  await Promise.all(
    running.map(
      (child) =>
        new Promise((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) return resolve();
          const timer = setTimeout(() => {
            signalGroup(child, "SIGKILL");
            resolve();
          }, 5000);
          child.once("exit", () => {
            clearTimeout(timer);
            resolve();
          });
        }),
    ),
  );
  process.exit(code);
}

async function main() {
  process.on("SIGINT", () => {
    if (shuttingDown) {
      // A second Ctrl-C means "now": don't wait for a graceful stop.
      for (const child of children.values()) signalGroup(child, "SIGKILL");
      process.exit(130);
    }
    say("stopping…");
    shutdown(130);
  });
  process.on("SIGTERM", () => shutdown(143));

  // Checked before the (slow) build, so a taken port is reported at once.
  await requirePortsFree();
  checkConfiguredOrigin();

  if (!args.has("--skip-setup")) await runStep("install the toolchain", "scripts/setup.sh");
  if (!args.has("--skip-build")) await runStep("build the worker", "scripts/build.sh");
  if (!existsSync(path.join(ROOT, "build", "index.js"))) throw new Error("build/index.js is missing after the build; see the build output above");

  // Ports may have been taken while we were building.
  await requirePortsFree();

  say(`starting the demo origin on ${ORIGIN_URL}`);
  const origin = startServer("demo origin", process.execPath, [
    path.join(ROOT, "examples", "demo-origin.mjs"),
    "--port",
    String(ORIGIN_PORT),
  ]);
  if ((await waitUntilAnswering(`${ORIGIN_URL}/favicon.ico`, origin, 10_000)) === null) {
    throw new Error(`the demo origin did not answer on ${ORIGIN_URL} within 10 s`);
  }

  say(`starting wrangler dev on ${WORKER_URL}`);
  const wrangler = startServer(
    "wrangler dev",
    path.join(ROOT, "node_modules", ".bin", "wrangler"),
    [
      "dev",
      "--local",
      "--ip",
      HOST,
      "--port",
      String(WORKER_PORT),
      "--show-interactive-dev-session=false",
      "--var",
      `FRAGCACHE_ADMIN_TOKEN:${ADMIN_TOKEN}`,
    ],
    {
      ...process.env,
      WRANGLER_SEND_METRICS: "false",
      // Otherwise Miniflare tries to download Request.cf and, offline,
      // prints a harmless but alarming stack trace.
      CLOUDFLARE_CF_FETCH_ENABLED: process.env.CLOUDFLARE_CF_FETCH_ENABLED ?? "false",
    },
  );

  // Polling a path that is neither a page nor a fragment proves the worker
  // is up without warming the cache, so the first visit shows real misses.
  const status = await waitUntilAnswering(`${WORKER_URL}/favicon.ico`, wrangler, START_TIMEOUT_MS);
  if (status === null) {
    throw new Error(
      `wrangler dev did not answer on ${WORKER_URL} within ${START_TIMEOUT_MS / 1000} s; see its output above ` +
        `(a slow first build? try START_TIMEOUT_S=180 npm start)`,
    );
  }
  banner();
  if (status >= 500) {
    console.warn(`[start] warning: the worker is up but answered ${status} to a first request; see the wrangler output above.\n`);
  }
}

main().catch((err) => die(err?.message ?? String(err)));
