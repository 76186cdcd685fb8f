// Miniflare harness for fragcache's integration tests.
//
// Runs the real `worker-build` output (build/index.js + its .wasm) in workerd
// with a KV namespace and the FRAGCACHE config binding, and captures
// everything workerd prints. The capture matters: workerd reports
// cross-request I/O ("Cannot perform I/O on behalf of a different request"),
// promises resolved from another request's context, and requests it cancelled
// as hung only in its log output, often while the HTTP responses still look
// fine. The single-flight tests treat any such line as a failure.

import { existsSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { inspect, stripVTControlCharacters } from "node:util";
import { fileURLToPath } from "node:url";
import { Log, LogLevel, Miniflare } from "miniflare";

/** Repository root, so tests work from any working directory. */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
/** The worker-build entry point the harness runs by default. */
export const BUILD_SCRIPT = path.join(REPO_ROOT, "build", "index.js");

const COMPATIBILITY_DATE = "2026-04-01";

/** Lines that mean a request touched another request's I/O or was killed as hung. */
export const CROSS_REQUEST_PATTERN = /different request|hung|cross-request|Cannot perform I\/O/i;

// workerd follows some errors with a line of raw code addresses; it carries
// no information without a symbolizer and only bloats failure messages.
const ADDRESS_STACK_LINE = /^stack:( \S+@[0-9a-f]+)+\s*$/;

/**
 * Whether the worker has been built (`npm run build`), so integration tests
 * can skip with a clear reason instead of failing on a missing file.
 *
 * @param {string} [scriptPath=BUILD_SCRIPT]
 * @returns {boolean}
 */
export function buildExists(scriptPath = BUILD_SCRIPT) {
  return existsSync(scriptPath);
}

/** Routes Miniflare's own log messages (warnings, errors) into `sink`. */
class CapturingLog extends Log {
  /** @param {(line: string) => void} sink */
  constructor(sink) {
    super(LogLevel.INFO);
    this.sink = sink;
  }

  log(message) {
    for (const line of String(message).split("\n")) this.sink(line);
  }
}

/**
 * Starts the built worker under Miniflare on 127.0.0.1 with an ephemeral port.
 *
 * Captured log lines (workerd stdout/stderr, including the worker's console
 * output, plus Miniflare's own messages) are collected in `logs`; set
 * `FRAGCACHE_TEST_LOGS=1` to also echo them to stderr while debugging.
 *
 * @param {object} options
 * @param {object} options.config  The FRAGCACHE config object (JSON binding).
 * @param {Record<string, string>} [options.bindings={}]  Extra plain-text bindings (e.g. secrets).
 * @param {boolean | string} [options.kvPersist=false]
 *   false: KV lives only as long as this instance. A directory path: KV is
 *   stored there, so a second instance started with the same path sees it
 *   (the caller owns and removes the directory). true: a fresh temporary
 *   directory, removed by dispose().
 * @param {string} [options.scriptPath=BUILD_SCRIPT]  Only for testing the harness itself.
 * @param {string} [options.compatibilityDate="2026-04-01"]
 * @returns {Promise<{
 *   mf: Miniflare,
 *   url: string,
 *   fetch: (path: string, init?: RequestInit) => Promise<Response>,
 *   dispatch: (path: string, init?: RequestInit) => Promise<Response>,
 *   kv: any,
 *   logs: string[],
 *   crossRequestWarnings: () => string[],
 *   dispose: () => Promise<void>,
 * }>}
 */
export async function startWorker({
  config,
  bindings = {},
  kvPersist = false,
  scriptPath = BUILD_SCRIPT,
  compatibilityDate = COMPATIBILITY_DATE,
} = {}) {
  if (config === undefined) throw new TypeError("startWorker: config is required");
  const script = path.resolve(REPO_ROOT, scriptPath);
  if (!existsSync(script)) {
    throw new Error(`startWorker: ${path.relative(REPO_ROOT, script)} does not exist; run \`npm run build\` first`);
  }

  /** @type {string[]} */
  const logs = [];
  const echo = process.env.FRAGCACHE_TEST_LOGS === "1";
  const push = (raw) => {
    const line = stripVTControlCharacters(raw);
    if (line === "" || ADDRESS_STACK_LINE.test(line)) return;
    logs.push(line);
    if (echo) process.stderr.write(`[worker] ${line}\n`);
  };

  let tempPersist;
  let persist = kvPersist;
  if (kvPersist === true) {
    // Miniflare's own default for `true` is .mf/ under the working directory,
    // which would leak state into the repository and between runs.
    tempPersist = mkdtempSync(path.join(os.tmpdir(), "fragcache-kv-"));
    persist = tempPersist;
  }

  const mf = new Miniflare({
    modules: true,
    scriptPath: script,
    // Module names are relative to this root; pinning it to the script's
    // directory keeps them independent of the test runner's cwd.
    modulesRoot: path.dirname(script),
    modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"], fallthrough: true }],
    compatibilityDate,
    kvNamespaces: ["FRAGMENTS"],
    kvPersist: persist,
    bindings: { ...bindings, FRAGCACHE: config },
    host: "127.0.0.1",
    port: 0,
    // Without workerd's --verbose, uncaught exceptions (cross-request I/O
    // errors, "hung" cancellations) never reach the log at all: Miniflare's
    // entry worker turns them into a 500 and prints nothing.
    verbose: true,
    // Plain-text lines, so the patterns above match what a developer reads.
    structuredWorkerdLogs: false,
    handleRuntimeStdio(stdout, stderr) {
      readline.createInterface({ input: stdout, crlfDelay: Infinity }).on("line", push);
      readline.createInterface({ input: stderr, crlfDelay: Infinity }).on("line", push);
    },
    log: new CapturingLog(push),
    // One loopback call per request would add load to the concurrency tests
    // and noise to `logs` without telling us anything they need.
    logRequests: false,
    // Never try to download Request.cf from the internet (offline machines).
    cf: false,
  });

  let disposed = false;
  const dispose = async () => {
    if (disposed) return;
    disposed = true;
    try {
      await mf.dispose();
    } finally {
      if (tempPersist) rmSync(tempPersist, { recursive: true, force: true });
    }
  };

  let readyUrl;
  try {
    readyUrl = await mf.ready;
  } catch (err) {
    await dispose().catch(() => {});
    const tail = logs.slice(-40).join("\n");
    throw new Error(`Miniflare failed to start ${path.relative(REPO_ROOT, script)}: ${err?.message ?? err}\n${tail}`, {
      cause: err,
    });
  }
  const url = readyUrl.origin;
  const kv = await mf.getKVNamespace("FRAGMENTS");

  return {
    mf,
    url,
    /** Real HTTP through workerd's socket, like a browser. */
    fetch: (p, init) => fetch(new URL(p, url), init),
    /** Miniflare's in-process dispatch; same worker, no client socket of our own. */
    dispatch: (p, init) => mf.dispatchFetch(new URL(p, url).href, init),
    kv,
    logs,
    crossRequestWarnings: () => logs.filter((line) => CROSS_REQUEST_PATTERN.test(line)),
    dispose,
  };
}

/**
 * Polls `fn` until it returns a truthy value, and returns that value.
 *
 * Background effects (refreshes under `wait_until`, KV writes) finish after
 * the response, so tests wait for their effect with a bound instead of
 * sleeping a fixed time. An exception from `fn` counts as "not yet"; the last
 * one is reported if time runs out.
 *
 * @template T
 * @param {() => T | Promise<T>} fn
 * @param {{ timeoutMs?: number, intervalMs?: number, message?: string }} [options]
 * @returns {Promise<T>}
 */
export async function waitFor(fn, { timeoutMs = 5000, intervalMs = 20, message } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  let lastValue;
  for (;;) {
    try {
      lastValue = await fn();
      if (lastValue) return lastValue;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) break;
    await new Promise((resolve) => setTimeout(resolve, Math.min(intervalMs, Math.max(0, deadline - Date.now()))));
  }
  const what = message ?? `condition ${fn.toString().slice(0, 120)}`;
  const detail = lastError
    ? `; last error: ${lastError?.message ?? lastError}`
    : `; last value: ${inspect(lastValue, { depth: 2, breakLength: Infinity }).slice(0, 300)}`;
  throw new Error(`waitFor timed out after ${timeoutMs} ms: ${what}${detail}`, { cause: lastError });
}
