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

/** The KV namespace id every worker's FRAGMENTS binding uses (as before: the binding name). */
const KV_NAMESPACE_ID = "FRAGMENTS";
/** The Durable Object class the build will export for cross-isolate single-flight. */
export const COORDINATOR_CLASS = "FragmentCoordinator";
/** Worker name prefix for startWorkers(); worker i is `${WORKER_NAME_PREFIX}-${i}`. */
export const WORKER_NAME_PREFIX = "fragcache";
/** Name of the extra worker that hosts a deliberately broken coordinator. */
export const COORDINATOR_STUB_NAME = "fragcache-coordinator-stub";

// Stand-ins for an unavailable coordinator. "broken": every call to the object
// fails at once (an exception crosses the stub boundary, as when an object is
// unreachable or reset). "hung": calls are accepted and never answered; a
// pending timer keeps the request alive, so workerd neither cancels it as hung
// nor logs anything the cross-request check would flag.
const COORDINATOR_STUBS = {
  broken: `async fetch() { throw new Error("coordinator unavailable (fragcache test harness: coordinator: \\"broken\\")"); }`,
  hung: `async fetch() { await new Promise((resolve) => setTimeout(resolve, 3_600_000)); return new Response("too late", { status: 504 }); }`,
};

function coordinatorStubScript(mode) {
  return [
    `import { DurableObject } from "cloudflare:workers";`,
    `export class ${COORDINATOR_CLASS} extends DurableObject { ${COORDINATOR_STUBS[mode]} }`,
    `export default { fetch() { return new Response("coordinator stub", { status: 404 }); } };`,
  ].join("\n");
}

/** Resolves `scriptPath` and fails with the fix if it has not been built. */
function resolveScript(scriptPath, caller) {
  const script = path.resolve(REPO_ROOT, scriptPath);
  if (!existsSync(script)) {
    throw new Error(`${caller}: ${path.relative(REPO_ROOT, script)} does not exist; run \`npm run build\` first`);
  }
  return script;
}

/** Per-worker Miniflare options: the script, its .wasm, KV and the config binding. */
function workerOptions({ script, config, bindings, compatibilityDate }) {
  return {
    modules: true,
    scriptPath: script,
    // Module names are relative to this root; pinning it to the script's
    // directory keeps them independent of the test runner's cwd.
    modulesRoot: path.dirname(script),
    modulesRules: [{ type: "CompiledWasm", include: ["**/*.wasm"], fallthrough: true }],
    compatibilityDate,
    // Same namespace id in every worker, so all isolates share one KV store.
    kvNamespaces: { FRAGMENTS: KV_NAMESPACE_ID },
    bindings: { ...bindings, FRAGCACHE: config },
  };
}

/**
 * Starts one Miniflare instance with log capture and KV persistence set up.
 * `options` holds the worker options (flat, or `workers: [...]`).
 */
async function launch({ options, kvPersist, script }) {
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
    ...options,
    kvPersist: persist,
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

  return {
    mf,
    readyUrl,
    logs,
    crossRequestWarnings: () => logs.filter((line) => CROSS_REQUEST_PATTERN.test(line)),
    dispose,
  };
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
 * @param {boolean | "discard"} [options.analytics=false]  true: bind
 *   FRAGCACHE_ANALYTICS to a dataset that records its data points (read them
 *   with analyticsPoints()); "discard": to Miniflare's dataset, which keeps
 *   nothing (for benchmarks).
 * @param {string} [options.scriptPath=BUILD_SCRIPT]  Only for testing the harness itself.
 * @param {string} [options.compatibilityDate="2026-04-01"]
 * @returns {Promise<{
 *   mf: Miniflare,
 *   url: string,
 *   fetch: (path: string, init?: RequestInit) => Promise<Response>,
 *   dispatch: (path: string, init?: RequestInit) => Promise<Response>,
 *   scheduled: (cron?: string) => Promise<{ outcome: string, noRetry: boolean }>,
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
  analytics = false,
  scriptPath = BUILD_SCRIPT,
  compatibilityDate = COMPATIBILITY_DATE,
} = {}) {
  if (config === undefined) throw new TypeError("startWorker: config is required");
  const script = resolveScript(scriptPath, "startWorker");
  let options = workerOptions({ script, config, bindings, compatibilityDate });
  if (analytics === "discard") {
    // Miniflare's own dataset: accepts every point and keeps none, which is
    // what writing one costs the worker, as in production.
    options.analyticsEngineDatasets = { FRAGCACHE_ANALYTICS: { dataset: "fragcache" } };
  } else if (analytics) {
    // Miniflare's own Analytics Engine drops every point; this binding has
    // the platform's interface (`writeDataPoint`) and keeps each point in
    // a KV namespace of its own, so a test can read what the worker wrote.
    options = {
      workers: [
        { ...options, wrappedBindings: { FRAGCACHE_ANALYTICS: { scriptName: ANALYTICS_RECORDER } } },
        {
          name: ANALYTICS_RECORDER,
          modules: [{ type: "ESModule", path: "recorder.mjs", contents: ANALYTICS_RECORDER_SCRIPT }],
          kvNamespaces: { POINTS: "fragcache-analytics-points" },
        },
      ],
    };
  }
  const { mf, readyUrl, logs, crossRequestWarnings, dispose } = await launch({ options, kvPersist, script });
  const url = readyUrl.origin;
  const kv = await mf.getKVNamespace("FRAGMENTS");
  const points = analytics === true ? await mf.getKVNamespace("POINTS", ANALYTICS_RECORDER) : undefined;

  return {
    mf,
    url,
    /** Real HTTP through workerd's socket, like a browser. */
    fetch: (p, init) => fetch(new URL(p, url), init),
    /** Miniflare's in-process dispatch; same worker, no client socket of our own. */
    dispatch: (p, init) => mf.dispatchFetch(new URL(p, url).href, init),
    /** Fires the worker's scheduled (cron) handler, as a cron trigger would, and waits for it. */
    scheduled: async (cron = "*/5 * * * *") => (await mf.getWorker()).scheduled({ cron }),
    kv,
    /** With `analytics`: the data points written, in no particular order. */
    analyticsPoints: async () => {
      if (!points) throw new Error("startWorker: start with { analytics: true } to record data points");
      const { keys } = await points.list();
      return Promise.all(keys.map(async (k) => JSON.parse(await points.get(k.name))));
    },
    logs,
    crossRequestWarnings,
    dispose,
  };
}

/** Name of the worker standing in for the Analytics Engine dataset. */
const ANALYTICS_RECORDER = "fragcache-analytics-recorder";
const ANALYTICS_RECORDER_SCRIPT = `
let n = 0;
export default function (env) {
  return {
    writeDataPoint(point) {
      env.POINTS.put(\`\${Date.now()}-\${n++}-\${Math.random()}\`, JSON.stringify(point));
    },
  };
}`;

// workerd starts even if a bound Durable Object class is not exported; it
// only prints this warning, and every call then fails as "internal error".
const MISSING_CLASS_PATTERN = new RegExp(`no such Durable Object class is exported|no such actor class; c = ${COORDINATOR_CLASS}`);
// The warning is printed before workerd listens, but reaches `logs` through a
// pipe; this is how long we give it after the instance is ready.
const MISSING_CLASS_GRACE_MS = 150;

async function assertExportsCoordinator(logs, script) {
  await new Promise((resolve) => setTimeout(resolve, MISSING_CLASS_GRACE_MS));
  const line = logs.find((l) => MISSING_CLASS_PATTERN.test(l) && l.includes(COORDINATOR_CLASS));
  if (line) {
    throw new Error(
      `startWorkers: ${path.relative(REPO_ROOT, script)} does not export ${COORDINATOR_CLASS}; ` +
        `pass coordinator: false to run without it.\n${line}`,
    );
  }
}

/**
 * Starts `count` copies of the built worker in ONE Miniflare instance, each
 * its own isolate (workers `fragcache-0` … `fragcache-{count-1}`), sharing one
 * KV namespace and, unless `coordinator` is false, one Durable Object
 * namespace bound as COORDINATOR.
 *
 * Every worker gets its own loopback socket (Miniflare's `unsafeDirectSockets`,
 * resolved with `mf.unsafeGetDirectURL(name)`), so a test sends real HTTP to
 * exactly the isolate it means. Logs of all workers go into one `logs` array.
 *
 * @param {object} options
 * @param {object} options.config  The FRAGCACHE config object (JSON binding), same for every worker.
 * @param {number} [options.count=2]  How many workers (isolates).
 * @param {Record<string, string>} [options.bindings={}]  Extra plain-text bindings.
 * @param {false | "discard"} [options.analytics=false]  "discard": bind
 *   FRAGCACHE_ANALYTICS to Miniflare's dataset, which keeps nothing.
 * @param {number} [options.inspectorPort]  Open V8's inspector on this port
 *   (for CPU profiles: bench/profile.mjs).
 * @param {true | false | "broken" | "hung"} [options.coordinator=true]
 *   true: COORDINATOR is the script's own FragmentCoordinator class, defined
 *   (SQLite-backed) by worker 0 and bound by the others through `scriptName`,
 *   so all isolates reach the same objects. The script must export the class;
 *   startWorkers() fails (from workerd's startup warning) if it does not.
 *   false: no COORDINATOR binding (each isolate is on its own).
 *   "broken": COORDINATOR is a stub object whose every call throws at once.
 *   "hung": COORDINATOR is a stub object that accepts calls and never answers.
 * @param {boolean | string} [options.kvPersist=false]  As for startWorker().
 * @param {string} [options.scriptPath=BUILD_SCRIPT]  Only for testing the harness itself.
 * @param {string} [options.compatibilityDate="2026-04-01"]
 * @returns {Promise<{
 *   mf: Miniflare,
 *   names: string[],
 *   urls: string[],
 *   fetch: (i: number, path: string, init?: RequestInit) => Promise<Response>,
 *   dispatch: (i: number, path: string, init?: RequestInit) => Promise<Response>,
 *   kv: any,
 *   logs: string[],
 *   crossRequestWarnings: () => string[],
 *   dispose: () => Promise<void>,
 * }>}
 */
export async function startWorkers({
  config,
  count = 2,
  bindings = {},
  analytics = false,
  inspectorPort,
  coordinator = true,
  kvPersist = false,
  scriptPath = BUILD_SCRIPT,
  compatibilityDate = COMPATIBILITY_DATE,
} = {}) {
  if (config === undefined) throw new TypeError("startWorkers: config is required");
  if (!Number.isInteger(count) || count < 1) throw new TypeError(`startWorkers: count must be a positive integer, got ${count}`);
  if (![true, false, "broken", "hung"].includes(coordinator)) {
    throw new TypeError(`startWorkers: coordinator must be true, false, "broken" or "hung", got ${inspect(coordinator)}`);
  }
  const script = resolveScript(scriptPath, "startWorkers");
  const names = Array.from({ length: count }, (_, i) => `${WORKER_NAME_PREFIX}-${i}`);

  const coordinatorHost = coordinator === true ? names[0] : COORDINATOR_STUB_NAME;
  const workers = names.map((name) => {
    const options = {
      ...workerOptions({ script, config, bindings, compatibilityDate }),
      name,
      unsafeDirectSockets: [{ host: "127.0.0.1", port: 0 }],
    };
    if (analytics === "discard") options.analyticsEngineDatasets = { FRAGCACHE_ANALYTICS: { dataset: "fragcache" } };
    else if (analytics) throw new TypeError('startWorkers: analytics may only be "discard"');
    // Profiling (bench/profile.mjs): V8's inspector for this worker.
    if (inspectorPort) options.unsafeInspectorProxy = true;
    if (coordinator !== false) {
      const binding = { className: COORDINATOR_CLASS, useSQLite: true };
      // The host worker defines the namespace; everyone else points at it.
      if (name !== coordinatorHost) binding.scriptName = coordinatorHost;
      options.durableObjects = { COORDINATOR: binding };
    }
    return options;
  });
  if (coordinator === "broken" || coordinator === "hung") {
    workers.push({
      name: COORDINATOR_STUB_NAME,
      modules: [{ type: "ESModule", path: "coordinator-stub.mjs", contents: coordinatorStubScript(coordinator) }],
      compatibilityDate,
      durableObjects: { COORDINATOR: { className: COORDINATOR_CLASS, useSQLite: true } },
    });
  }

  const { mf, logs, crossRequestWarnings, dispose } = await launch({
    options: { workers, ...(inspectorPort ? { inspectorPort } : {}) },
    kvPersist,
    script,
  });
  let urls;
  let kv;
  try {
    if (coordinator === true) await assertExportsCoordinator(logs, script);
    urls = await Promise.all(names.map(async (name) => (await mf.unsafeGetDirectURL(name)).origin));
    kv = await mf.getKVNamespace("FRAGMENTS", names[0]);
  } catch (err) {
    await dispose().catch(() => {});
    throw err;
  }
  const target = (i, p) => {
    if (!Number.isInteger(i) || i < 0 || i >= count) throw new RangeError(`no worker ${i} (count is ${count})`);
    return new URL(p, urls[i]);
  };

  return {
    mf,
    names,
    urls,
    /** Real HTTP to worker i through its own workerd socket. */
    fetch: (i, p, init) => fetch(target(i, p), init),
    /** Miniflare's in-process dispatch to worker i (its Fetcher), no client socket of our own. */
    dispatch: async (i, p, init) => (await mf.getWorker(names[i])).fetch(target(i, p).href, init),
    kv,
    logs,
    crossRequestWarnings,
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
