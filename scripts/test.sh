#!/usr/bin/env bash
# THE test command (CI runs exactly this via .ci/run):
#
#   bash scripts/test.sh
#
# 1. scripts/setup.sh --rust                    the pinned toolchain and wasm target
# 2. cargo test                                 all native tests
#    cargo clippy --all-targets -- -D warnings
#      beside them, in the background:
#    scripts/setup.sh --e2e                     wasm-bindgen-cli, worker-build, npm ci, .venv, promtool
# 3. scripts/build-worker.sh                    the wasm bundle in build/, in the background, beside
#    cargo clippy on the wasm32 lib             (src/worker/ only compiles there)
# 4. scripts/check_deploy.py                    wrangler deploy --dry-run of that bundle (offline)
# 5. pytest tests/e2e -n 2 --dist loadfile      the bundle under wrangler dev (workerd), two test
#                                               files at a time (the none_bundle fixture also builds
#                                               one with EDGEFLAG_STATE=none into target/e2e-none/,
#                                               when stale)
#
# Steps run side by side where neither waits on the other: each ends in a
# single-threaded stretch (a link, a download) the other fills. A background
# step's output is kept in target/test-logs/ and printed when it is joined.
# Stops at the first failing step and says which one it was.
set -euo pipefail
cd "$(dirname "$0")/.."

STEP="(none)"
T0=$SECONDS
T_STEP=$SECONDS
LOGS=target/test-logs
declare -A BG_PID BG_T0
step() {
    [ "$STEP" = "(none)" ] || echo "test.sh: ok: $STEP ($((SECONDS - T_STEP))s)"
    STEP=$1
    T_STEP=$SECONDS
    echo
    echo "==> test.sh: $STEP"
}
# background NAME CMD...: runs CMD with its output in $LOGS/NAME.log.
background() {
    local name=$1
    shift
    mkdir -p "$LOGS"
    echo "test.sh: started in the background: $name"
    # Its own process group (setsid), so a failed run can stop all of it.
    setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
    BG_PID[$name]=$!
    BG_T0[$name]=$SECONDS
}
# join NAME: waits for it, prints its output, and fails the run if it failed.
join() {
    local name=$1 rc=0
    wait "${BG_PID[$name]}" || rc=$?
    unset "BG_PID[$name]"
    echo
    echo "==> test.sh: $name (background, output follows)"
    cat "$LOGS/$name.log"
    if [ $rc -ne 0 ]; then
        STEP=$name
        return $rc
    fi
    echo "test.sh: ok: $name ($((SECONDS - BG_T0[$name]))s, in the background)"
}
on_exit() {
    local rc=$?
    # A failed foreground step leaves background ones running: stop them.
    for name in "${!BG_PID[@]}"; do
        kill -- "-${BG_PID[$name]}" 2>/dev/null || true
        wait "${BG_PID[$name]}" 2>/dev/null || true
        echo "test.sh: stopped the background step $name ($LOGS/$name.log)" >&2
    done
    [ $rc -eq 0 ] || echo "test.sh: FAILED at: $STEP (exit $rc, after $((SECONDS - T0))s)" >&2
}
trap on_exit EXIT

step "setup --rust"
bash scripts/setup.sh --rust

background "setup --e2e" bash scripts/setup.sh --e2e

step "cargo test"
cargo test

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

join "setup --e2e"

# Different cargo build locks (wasm32 release vs wasm32 debug check); they
# meet only on the CLI's target/debug, where cargo makes one wait.
background "build worker" bash scripts/build-worker.sh

step "cargo clippy --lib --target wasm32-unknown-unknown -- -D warnings"
cargo clippy --lib --target wasm32-unknown-unknown -- -D warnings

join "build worker"

step "check deploy: wrangler deploy --dry-run"
python3 scripts/check_deploy.py

step "e2e: pytest tests/e2e"
# The fixture would build again; the bundle was just built above.
EDGEFLAG_E2E_SKIP_BUILD=1 timeout 1800 .venv/bin/python -m pytest tests/e2e -v -p no:cacheprovider \
    -n 2 --dist loadfile

echo "test.sh: ok: $STEP ($((SECONDS - T_STEP))s)"
echo "test.sh: all steps passed in $((SECONDS - T0))s"
