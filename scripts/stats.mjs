#!/usr/bin/env node
// `npm run stats -- <log file> [--json]`: summarises fragcache's per-page
// records ({"fragcache":"page",…} log lines, one per page) into hit, stale
// and miss rates, origin fetches per page and time to first byte.
//
// It reads plain logs (`wrangler dev`, `wrangler tail` in its pretty form,
// workerd output: any line containing a record, other lines ignored) and
// `wrangler tail --format json` output, where each record is a string in an
// event's `logs[].message`. Rates are over cache lookups (hit, stale, miss,
// coalesced, error); bypassed pieces (private fragments, uncached shells)
// were never meant to be cached, so they are counted but not in the rates.

import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const MARKER = '{"fragcache":"page"';

/** Every page record in `text`, whatever the log format. */
export function parseRecords(text) {
  const records = [];
  const take = (s) => {
    // The worker writes the marker first; a log shipper may reorder keys.
    const at = s.includes(MARKER) ? s.indexOf(MARKER) : s.includes('"fragcache":"page"') ? s.indexOf("{") : -1;
    if (at < 0) return;
    try {
      const r = JSON.parse(s.slice(at).trim());
      if (r && r.fragcache === "page") records.push(r);
    } catch {
      // A record cut off or followed by other text: not a record we can count.
    }
  };
  for (const line of text.split("\n")) take(line);
  for (const event of jsonObjects(text)) {
    for (const log of Array.isArray(event?.logs) ? event.logs : []) {
      for (const m of Array.isArray(log?.message) ? log.message : [log?.message]) {
        if (typeof m === "string") take(m);
      }
    }
  }
  return records;
}

/** Top-level JSON objects in `text` (concatenated or pretty-printed), skipping anything else. */
function* jsonObjects(text) {
  let depth = 0;
  let start = -1;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
    } else if (c === '"' && depth > 0) inString = true;
    else if (c === "{") {
      if (depth++ === 0) start = i;
    } else if (c === "}" && depth > 0 && --depth === 0) {
      try {
        yield JSON.parse(text.slice(start, i + 1));
      } catch {
        // Not JSON after all (a brace in a plain log line).
      }
    }
  }
}

/** Nearest-rank percentile of sorted numbers. */
function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

/** The summary of `records`. */
export function summarise(records) {
  const sum = (field) => records.reduce((n, r) => n + (Number(r[field]) || 0), 0);
  const counts = Object.fromEntries(
    ["hit", "stale", "miss", "coalesced", "bypass", "error"].map((k) => [k, sum(k)]),
  );
  const lookups = counts.hit + counts.stale + counts.miss + counts.coalesced + counts.error;
  const rate = (n) => (lookups === 0 ? null : n / lookups);
  const ttfb = records.map((r) => Number(r.ttfb_ms)).filter(Number.isFinite).sort((a, b) => a - b);
  return {
    pages: records.length,
    ...counts,
    hit_rate: rate(counts.hit),
    stale_rate: rate(counts.stale),
    miss_rate: rate(counts.miss),
    origin_fetches: sum("origin_fetches"),
    origin_fetches_per_page: records.length ? sum("origin_fetches") / records.length : null,
    ttfb_p50_ms: percentile(ttfb, 50),
    ttfb_p95_ms: percentile(ttfb, 95),
  };
}

function main(argv) {
  const json = argv.includes("--json");
  const files = argv.filter((a) => a !== "--json");
  if (files.length !== 1) {
    console.error("usage: npm run stats -- <log file> [--json]");
    return 2;
  }
  let text;
  try {
    text = readFileSync(files[0], "utf8");
  } catch (e) {
    console.error(`stats: cannot read ${files[0]}: ${e.message}`);
    return 1;
  }
  const s = summarise(parseRecords(text));
  if (json) {
    console.log(JSON.stringify(s));
    return 0;
  }
  if (s.pages === 0) {
    console.log(`no page records in ${files[0]} (lines with ${MARKER}…})`);
    return 0;
  }
  const pct = (x) => (x === null ? "-" : `${(x * 100).toFixed(1)}%`);
  console.log(`pages:                   ${s.pages}`);
  console.log(`hit rate:                ${pct(s.hit_rate)}`);
  console.log(`stale rate:              ${pct(s.stale_rate)}`);
  console.log(`miss rate:               ${pct(s.miss_rate)}`);
  console.log(`coalesced / bypass / error: ${s.coalesced} / ${s.bypass} / ${s.error}`);
  console.log(`origin fetches per page: ${s.origin_fetches_per_page.toFixed(2)} (${s.origin_fetches} in all)`);
  console.log(`TTFB p50 / p95:          ${s.ttfb_p50_ms} ms / ${s.ttfb_p95_ms} ms`);
  return 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) process.exitCode = main(process.argv.slice(2));
