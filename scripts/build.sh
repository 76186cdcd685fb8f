#!/usr/bin/env bash
# Builds the worker (release wasm + JS shim) into build/ with worker-build.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

# `wrangler dev` and `wrangler deploy` run the [build] command themselves
# (dev twice: at start-up and when its file watcher starts); `npm start` and
# `npm run deploy` have just built, so skip while nothing changed.
if [ -n "${WRANGLER_COMMAND:-}" ] && [ -f build/index.js ] \
  && [ -z "$(find src core/src Cargo.toml Cargo.lock core/Cargo.toml -newer build/index.js -print -quit)" ]; then
  echo "build: build/ is up to date"
  exit 0
fi
worker-build --release
ls -l build/index.js build/*.wasm 2>/dev/null || true
