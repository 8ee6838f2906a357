#!/usr/bin/env bash
# Builds the Worker bundle into build/ (build/worker/shim.mjs + index_bg.wasm)
# with worker-build --release, prints the bundle size raw and gzipped, and
# writes edgeflag-build.json beside it (the embedded state's etag, file hashes).
#
#   bash scripts/build-worker.sh
#
# Env: EDGEFLAG_STATE (state file to embed; default src/demo_state.json),
# EDGEFLAG_ACCOUNT (account, for formats that carry none),
# EDGEFLAG_OUT_DIR (bundle directory, relative to the repo; default build,
# which wrangler.toml serves; another keeps build/ as it is, e.g. for a
# bundle with another state: `wrangler dev DIR/worker/shim.mjs`),
# EDGEFLAG_CARGO_FEATURES (cargo features of the wasm build; bench.sh only),
# EDGEFLAG_CARGO_CONFIG (space-separated cargo `--config KEY=VALUE` entries
# for the wasm build, e.g. profile.release.package.edgeflag.opt-level=3;
# bench.sh only: cargo ignores CARGO_PROFILE_*_PACKAGE_* variables).
# EDGEFLAG_WASM_OPT (wasm-opt flags, e.g. -Oz: binaryen's optimizer, npm
# binaryen@132.0.0 installed into .tools/ on first use, run over the
# bundle's wasm after the build; bench.sh only).
# Run scripts/setup.sh first (this script does it if the tools are missing).
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(bash scripts/setup.sh --print-env)"
if [ ! -x "$WASM_BINDGEN_BIN" ] || [ ! -x "$WORKER_BUILD_BIN" ]; then
    bash scripts/setup.sh
fi

# The embedded state: EDGEFLAG_STATE (any format the CLI reads; the demo
# state by default), validated by the native CLI before the Worker is
# built, so an invalid state fails the build with every problem listed.
# JSON is converted to the protobuf envelope (which carries the account),
# so the isolate decodes protobuf. build.rs is told the etag of the bytes
# it embeds as validated (EDGEFLAG_STATE_VALIDATED), which lets the Worker
# inflate segment bitsets on first use instead of all on its first
# request, and the etag of the source file to serve (EDGEFLAG_STATE_ETAG):
# the one `edgeflag validate` prints for it, however it was converted.
src=${EDGEFLAG_STATE:-src/demo_state.json}
if [ "$src" = none ]; then
    # No embedded state: the Worker serves 503 until KV (or the CDN) gives
    # it one. build.rs knows the value.
    echo "build-worker: embedding no state (EDGEFLAG_STATE=none)"
    export EDGEFLAG_STATE=none
    unset EDGEFLAG_STATE_VALIDATED EDGEFLAG_STATE_ETAG
    etag=none
else
echo "build-worker: embedding $src${EDGEFLAG_ACCOUNT:+ (account $EDGEFLAG_ACCOUNT)}"
# The CLI is built without the build-time state, which it does not need.
env -u EDGEFLAG_STATE -u EDGEFLAG_ACCOUNT -u EDGEFLAG_STATE_VALIDATED -u EDGEFLAG_STATE_ETAG \
    cargo build --quiet --bin edgeflag
cli=target/debug/edgeflag
validate() { # FILE -> the report on stdout, or every problem and exit 1
    local report
    if ! report=$("$cli" validate --state "$1" 2>&1); then
        echo "$report" >&2
        echo "build-worker: ERROR: $1 does not validate; not building" >&2
        exit 1
    fi
    echo "$report"
}
field() { awk -v k="$1" '$1 == k { print $2; exit }'; }
report=$(validate "$src")
etag=$(field etag <<<"$report")
format=$(field format <<<"$report")
[ -n "$etag" ] && [ -n "$format" ] || {
    echo "build-worker: ERROR: no etag or format in the validate report:" >&2
    echo "$report" >&2
    exit 1
}
case $format in
    pb | envelope)
        embedded=$src
        embedded_etag=$etag
        ;;
    *)
        mkdir -p target/embedded-state
        # One file per source, so bundles of different states do not
        # overwrite each other's converted state.
        embedded=target/embedded-state/$(printf '%s' "$src" | cksum | cut -d' ' -f1).pb
        # Converting is byte-stable (canonical encoding), but costs time:
        # convert only when the source, the account or the converter changed.
        stamp="$etag ${EDGEFLAG_ACCOUNT-} $(cksum <"$cli")"
        if [ ! -f "$embedded" ] || [ "$(cat "$embedded.source" 2>/dev/null)" != "$stamp" ]; then
            rm -f "$embedded.source"
            "$cli" convert --state "$src" --to envelope --out "$embedded" ${EDGEFLAG_ACCOUNT:+--account "$EDGEFLAG_ACCOUNT"}
            echo "$stamp" >"$embedded.source"
        fi
        embedded_etag=$(validate "$embedded" | field etag)
        ;;
esac
echo "build-worker: $src validated ($format, etag $etag); embedding $embedded"
EDGEFLAG_STATE=$(realpath "$embedded")
export EDGEFLAG_STATE EDGEFLAG_STATE_VALIDATED=$embedded_etag EDGEFLAG_STATE_ETAG=$etag
[ -n "${EDGEFLAG_ACCOUNT+x}" ] && export EDGEFLAG_ACCOUNT
fi

out=${EDGEFLAG_OUT_DIR:-build}
out=${out%/}
echo "build-worker: worker-build --release --out-dir $out (wasm-bindgen: $WASM_BINDGEN_BIN)"
rm -f "$out/edgeflag-build.json" # no manifest until the new bundle is whole
start=$SECONDS
# EDGEFLAG_CARGO_FEATURES: cargo features for the wasm build (bench.sh
# `code` builds one with wasm-json-states to measure the JSON decoders).
cargo_args=()
[ -z "${EDGEFLAG_CARGO_FEATURES:-}" ] || cargo_args+=(--features "$EDGEFLAG_CARGO_FEATURES")
read -r -a cargo_config <<<"${EDGEFLAG_CARGO_CONFIG:-}" # no globbing: keys may hold "*"
for c in ${cargo_config[@]+"${cargo_config[@]}"}; do cargo_args+=(--config "$c"); done
"$WORKER_BUILD_BIN" --release --out-dir "$out" ${cargo_args[@]+. "${cargo_args[@]}"}
echo "build-worker: built in $((SECONDS - start))s"
if [ -n "${EDGEFLAG_WASM_OPT:-}" ]; then
    # The features rustc and wasm-bindgen emit, so wasm-opt accepts the
    # module and adds none beyond them.
    start=$SECONDS
    # Installed on first use only: no CI run or deployment needs it.
    wasm_opt=.tools/binaryen-132.0.0/node_modules/.bin/wasm-opt
    [ -x "$wasm_opt" ] || npm install --no-save --no-audit --no-fund --loglevel=error \
        --prefix .tools/binaryen-132.0.0 binaryen@132.0.0 >&2
    "$wasm_opt" $EDGEFLAG_WASM_OPT --enable-bulk-memory --enable-bulk-memory-opt \
        --enable-nontrapping-float-to-int --enable-exception-handling --enable-reference-types \
        --enable-multivalue --enable-sign-ext --enable-mutable-globals \
        "$out/index_bg.wasm" -o "$out/index_bg.wasm.opt"
    mv "$out/index_bg.wasm.opt" "$out/index_bg.wasm"
    echo "build-worker: wasm-opt $EDGEFLAG_WASM_OPT in $((SECONDS - start))s"
fi

[ -f "$out/worker/shim.mjs" ] || {
    echo "build-worker: ERROR: $out/worker/shim.mjs missing after build" >&2
    exit 1
}
# wasm-bindgen's own name section (debug names of its adapters): not code.
python3 scripts/strip_wasm_names.py "$out/index_bg.wasm"

size_line() {
    local f=$1
    printf 'build-worker:   %-28s %9d bytes raw %9d bytes gzip\n' "${f#"$out"/}" "$(wc -c <"$f")" "$(gzip -9c "$f" | wc -c)"
}
echo "build-worker: bundle (what wrangler uploads):"
total_raw=0
total_gz=0
for f in "$out/index.js" "$out/index_bg.wasm" "$out/worker/shim.mjs"; do
    [ -f "$f" ] || continue
    size_line "$f"
    total_raw=$((total_raw + $(wc -c <"$f")))
    total_gz=$((total_gz + $(gzip -9c "$f" | wc -c)))
done
printf 'build-worker:   %-28s %9d bytes raw %9d bytes gzip\n' "total" "$total_raw" "$total_gz"

# What this bundle is, for whoever runs it: the e2e harness copies the bundle,
# checks the copy against these hashes, and only calls an instance ready once
# it serves this state etag. Written last, so a manifest means a whole build.
python3 - "$src" "$etag" "$out" <<'PY' >"$out/edgeflag-build.json"
import hashlib, json, sys
files = ["index.js", "index_bg.wasm", "worker/shim.mjs"]
print(json.dumps({
    "stateSource": sys.argv[1],
    "stateEtag": sys.argv[2],
    "sha256": {f: hashlib.sha256(open(f"{sys.argv[3]}/{f}", "rb").read()).hexdigest() for f in files},
}, indent=2))
PY
echo "build-worker: wrote $out/edgeflag-build.json (state etag $etag)"
