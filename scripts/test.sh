#!/usr/bin/env bash
# THE test command (CI runs exactly this via .ci/run):
#
#   bash scripts/test.sh
#
# 1. cargo test                                 all native tests
# 2. cargo clippy --all-targets -- -D warnings
# 3. scripts/setup.sh --e2e                     wasm target, tools, npm ci, .venv, promtool
# 4. cargo clippy on the wasm32 lib             src/worker/ only compiles there
# 5. scripts/build-worker.sh                    the wasm bundle in build/
# 6. scripts/check_deploy.py                    wrangler deploy --dry-run of that bundle (offline)
# 7. pytest tests/e2e -v                        the bundle under wrangler dev (workerd)
#                                               (the none_bundle fixture also builds one with
#                                               EDGEFLAG_STATE=none into target/e2e-none/, when
#                                               stale)
#
# Stops at the first failing step and says which one it was.
set -euo pipefail
cd "$(dirname "$0")/.."

STEP="(none)"
T0=$SECONDS
T_STEP=$SECONDS
step() {
    [ "$STEP" = "(none)" ] || echo "test.sh: ok: $STEP ($((SECONDS - T_STEP))s)"
    STEP=$1
    T_STEP=$SECONDS
    echo
    echo "==> test.sh: $STEP"
}
trap 'rc=$?; [ $rc -eq 0 ] || echo "test.sh: FAILED at: $STEP (exit $rc, after $((SECONDS - T0))s)" >&2' EXIT

step "cargo test"
cargo test

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "setup --e2e"
bash scripts/setup.sh --e2e

step "cargo clippy --lib --target wasm32-unknown-unknown -- -D warnings"
cargo clippy --lib --target wasm32-unknown-unknown -- -D warnings

step "build worker"
bash scripts/build-worker.sh

step "check deploy: wrangler deploy --dry-run"
python3 scripts/check_deploy.py

step "e2e: pytest tests/e2e"
# The fixture would build again; the bundle was just built above.
EDGEFLAG_E2E_SKIP_BUILD=1 timeout 1800 .venv/bin/python -m pytest tests/e2e -v -p no:cacheprovider

echo "test.sh: ok: $STEP ($((SECONDS - T_STEP))s)"
echo "test.sh: all steps passed in $((SECONDS - T0))s"
