# Sourced by the build and test scripts: points worker-build at locally
# installed tools so it never tries to download them, and keeps wrangler
# from phoning home.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"
export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$(command -v wasm-bindgen || true)}"
export ESBUILD_BIN="${ESBUILD_BIN:-$root/node_modules/.bin/esbuild}"
export WASM_OPT_BIN="${WASM_OPT_BIN:-$root/node_modules/.bin/wasm-opt}"
export WRANGLER_SEND_METRICS=false
export NO_UPDATE_NOTIFIER=1
