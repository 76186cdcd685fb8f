#!/usr/bin/env bash
# Every check, in the order a failure is cheapest to find: formatting, lints,
# native tests, the wasm build, then the Miniflare integration tests against
# a real origin on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --browser
source scripts/env.sh

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

# No `cargo audit`: it needs the RustSec advisory database from GitHub,
# which this project's machines and CI cannot reach.
step "cargo machete (unused dependencies)"
cargo machete

step "cargo clippy (native)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo clippy (wasm32)"
cargo clippy --target wasm32-unknown-unknown -p fragcache -- -D warnings

step "cargo doc (broken links fail)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

step "Rust tests"
cargo test --workspace

step "wasm build"
bash scripts/build.sh

# The bundle is downloaded to every location on deploy and compiled on every
# cold start: it has a budget, and a dependency that quietly pulls in big
# tables (the `url` crate's IDNA data did, once) fails the build here.
step "wasm size budget (gzip -9 <= 400000 bytes)"
size=$(gzip -9 -c build/index_bg.wasm | wc -c)
echo "build/index_bg.wasm: $size bytes gzipped"
if [ "$size" -gt 400000 ]; then
  echo "over budget: see which crates grew (cargo tree -e normal -p fragcache)" >&2
  exit 1
fi

step "integration tests (Miniflare)"
node --test --test-concurrency=1 tests/
