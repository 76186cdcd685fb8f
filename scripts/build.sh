#!/usr/bin/env bash
# Builds the worker (release wasm + JS shim) into build/ with worker-build.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
worker-build --release
ls -l build/index.js build/*.wasm 2>/dev/null || true
