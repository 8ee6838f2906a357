#!/usr/bin/env bash
# Builds the Worker bundle into build/ (build/worker/shim.mjs + index_bg.wasm)
# with worker-build --release, then prints the bundle size raw and gzipped.
#
#   bash scripts/build-worker.sh
#
# Env passed through to the crate's build.rs: EDGEFLAG_STATE, EDGEFLAG_ACCOUNT.
# Run scripts/setup.sh first (this script does it if the tools are missing).
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(bash scripts/setup.sh --print-env)"
if [ ! -x "$WASM_BINDGEN_BIN" ] || [ ! -x "$WORKER_BUILD_BIN" ]; then
    bash scripts/setup.sh
fi

# Passed through untouched (exported only when set, so build.rs can tell
# "unset" from "empty").
for v in EDGEFLAG_STATE EDGEFLAG_ACCOUNT; do
    if [ -n "${!v+x}" ]; then
        export "${v?}"
        echo "build-worker: $v=${!v}"
    fi
done

echo "build-worker: worker-build --release (wasm-bindgen: $WASM_BINDGEN_BIN)"
start=$SECONDS
"$WORKER_BUILD_BIN" --release
echo "build-worker: built in $((SECONDS - start))s"

[ -f build/worker/shim.mjs ] || {
    echo "build-worker: ERROR: build/worker/shim.mjs missing after build" >&2
    exit 1
}
size_line() {
    local f=$1
    printf 'build-worker:   %-28s %9d bytes raw %9d bytes gzip\n' "${f#build/}" "$(wc -c <"$f")" "$(gzip -9c "$f" | wc -c)"
}
echo "build-worker: bundle (what wrangler uploads):"
total_raw=0
total_gz=0
for f in build/index.js build/index_bg.wasm build/worker/shim.mjs; do
    [ -f "$f" ] || continue
    size_line "$f"
    total_raw=$((total_raw + $(wc -c <"$f")))
    total_gz=$((total_gz + $(gzip -9c "$f" | wc -c)))
done
printf 'build-worker:   %-28s %9d bytes raw %9d bytes gzip\n' "total" "$total_raw" "$total_gz"
