#!/usr/bin/env bash
# Installs whatever is missing to build and test fragcache. Idempotent, and
# needs no network beyond crates.io and the npm registry: every tool is
# pinned, and nothing is downloaded by worker-build itself (it is pointed at
# the binaries installed here; see scripts/env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

WORKER_BUILD_VERSION=0.8.7
CARGO_MACHETE_VERSION=0.9.2

say() { printf 'setup: %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
  say "cargo is not installed. Install Rust with rustup (https://rustup.rs), then run this again." >&2
  exit 1
fi

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  say "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    say "adding rustup component $component"
    rustup component add "$component"
  fi
done

# wasm-bindgen's CLI must match the library version in Cargo.lock exactly.
bindgen_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [ -z "$bindgen_version" ]; then
  say "could not read the wasm-bindgen version from Cargo.lock" >&2
  exit 1
fi
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$bindgen_version" ]; then
  say "installing wasm-bindgen-cli $bindgen_version (a few minutes, once)"
  cargo install --quiet --force wasm-bindgen-cli --version "=$bindgen_version"
fi

if [ "$(worker-build --version 2>/dev/null | awk '{print $NF}')" != "$WORKER_BUILD_VERSION" ]; then
  say "installing worker-build $WORKER_BUILD_VERSION (a few minutes, once)"
  cargo install --quiet --force --locked worker-build --version "=$WORKER_BUILD_VERSION"
fi

if [ "$(cargo machete --version 2>/dev/null | awk '{print $NF}')" != "$CARGO_MACHETE_VERSION" ]; then
  say "installing cargo-machete $CARGO_MACHETE_VERSION (unused-dependency check; a minute, once)"
  cargo install --quiet --force --locked cargo-machete --version "=$CARGO_MACHETE_VERSION"
fi

# npm packages: install when missing or when package-lock.json changed.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm packages"
  npm ci --no-audit --no-fund
fi
# Headless Chromium for the inspector's browser test (tests/inspector.test.mjs),
# only when the tests ask for it (`setup.sh --browser`, from scripts/test.sh):
# `npm start` and deploys never need a browser. Optional: installed only as
# root with apt-get, with bounded time, never fatal. Without it that one test
# is skipped and says why.
if [ "${1:-}" = "--browser" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing chromium (headless browser for the inspector test)"
    apt_opts=(-o Acquire::Retries=1 -o Acquire::http::Timeout=30 -qq)
    if ! { timeout 300 apt-get "${apt_opts[@]}" update \
        && DEBIAN_FRONTEND=noninteractive timeout 900 apt-get "${apt_opts[@]}" install -y chromium; } >/dev/null 2>&1; then
      say "could not install chromium; the inspector's browser test will be skipped" >&2
    fi
  else
    say "chromium is missing: the inspector's browser test will be skipped (install it with: sudo apt-get install chromium)"
  fi
fi
say "toolchain ready"
