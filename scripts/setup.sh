#!/usr/bin/env bash
# Installs what building, running and testing the edgeflag Worker needs.
#
#   bash scripts/setup.sh            # Rust wasm target, wasm-bindgen-cli, worker-build, npm ci
#   bash scripts/setup.sh --e2e      # ... plus .venv/ with tests/e2e/requirements.txt,
#                                    #     .venv-ofrep/ with tests/e2e/ofrep/requirements.txt, promtool (apt)
#   bash scripts/setup.sh --bench    # ... plus wrk (apt)
#   bash scripts/setup.sh --rust     # only the pinned Rust toolchain and its wasm target
#                                    # (scripts/test.sh runs this first, then the rest
#                                    # beside cargo test: two rustups must not race)
#
# Idempotent and cached: everything lands in the (gitignored) repo-local
# .tools/, node_modules/, .venv/ and .venv-ofrep/, and each step is skipped when what it
# would install is already there at the wanted version. Needs only rustup,
# Node >= 20 + npm and python3 on the machine; no GitHub access (wasm-bindgen
# comes from crates.io instead of worker-build's GitHub download).
#
# Other scripts source the exported tool locations with:
#   eval "$(bash scripts/setup.sh --print-env)"
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

WANT_E2E=0
WANT_BENCH=0
PRINT_ENV=0
ONLY_RUST=0
for arg in "$@"; do
    case "$arg" in
        --e2e) WANT_E2E=1 ;;
        --bench) WANT_BENCH=1 ;;
        --print-env) PRINT_ENV=1 ;;
        --rust) ONLY_RUST=1 ;;
        -h | --help)
            sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "setup: unknown argument '$arg' (try --help)" >&2
            exit 2
            ;;
    esac
done

log() { echo "setup: $*" >&2; }
die() {
    echo "setup: ERROR: $*" >&2
    exit 1
}

# Version of a package as resolved in Cargo.lock (first match).
lock_version() {
    awk -v n="$1" '$0 == "name = \"" n "\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock
}

[ -f Cargo.lock ] || die "Cargo.lock missing; the wasm-bindgen CLI must match its wasm-bindgen version"
WASM_BINDGEN_VERSION=$(lock_version wasm-bindgen)
[ -n "$WASM_BINDGEN_VERSION" ] || die "no wasm-bindgen in Cargo.lock"
# worker-build must share major.minor with the `worker` crate; using the exact
# locked `worker` version keeps the JS shim in step with the library.
WORKER_BUILD_VERSION=${WORKER_BUILD_VERSION:-$(lock_version worker)}
[ -n "$WORKER_BUILD_VERSION" ] || die "no worker crate in Cargo.lock"

TOOLS=$ROOT/.tools
WASM_BINDGEN_ROOT=$TOOLS/wasm-bindgen-$WASM_BINDGEN_VERSION
WORKER_BUILD_ROOT=$TOOLS/worker-build-$WORKER_BUILD_VERSION

if [ "$PRINT_ENV" = 1 ]; then
    # worker-build honours <TOOL>_BIN overrides (WASM_BINDGEN_BIN, ESBUILD_BIN,
    # WASM_OPT_BIN); we only override wasm-bindgen (its default download is
    # from GitHub). esbuild is fetched by worker-build from the npm registry,
    # and wasm-opt is disabled in Cargo.toml's wasm-pack metadata.
    echo "export WASM_BINDGEN_BIN='$WASM_BINDGEN_ROOT/bin/wasm-bindgen'"
    echo "export WORKER_BUILD_BIN='$WORKER_BUILD_ROOT/bin/worker-build'"
    echo "export PATH='$WORKER_BUILD_ROOT/bin:$WASM_BINDGEN_ROOT/bin:$ROOT/node_modules/.bin':\"\$PATH\""
    exit 0
fi

t_start=$SECONDS
did=()

# --- Rust: pinned toolchain + wasm target ----------------------------------
command -v rustup >/dev/null || die "rustup not found (install Rust via rustup first)"
command -v cargo >/dev/null || die "cargo not found"
TOOLCHAIN=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
[ -n "$TOOLCHAIN" ] || die "cannot read channel from rust-toolchain.toml"
if ! rustup toolchain list | grep -q "^$TOOLCHAIN"; then
    log "installing Rust toolchain $TOOLCHAIN"
    rustup toolchain install "$TOOLCHAIN" --profile minimal -c clippy -c rustfmt -t wasm32-unknown-unknown
    did+=("rust $TOOLCHAIN")
fi
if ! rustup target list --installed --toolchain "$TOOLCHAIN" | grep -qx wasm32-unknown-unknown; then
    log "adding wasm32-unknown-unknown to $TOOLCHAIN"
    rustup target add --toolchain "$TOOLCHAIN" wasm32-unknown-unknown
    did+=("wasm32 target")
fi
for comp in clippy rustfmt; do
    if ! rustup component list --installed --toolchain "$TOOLCHAIN" | grep -q "^$comp"; then
        log "adding $comp to $TOOLCHAIN"
        rustup component add --toolchain "$TOOLCHAIN" "$comp"
        did+=("$comp")
    fi
done

if [ "$ONLY_RUST" = 1 ]; then
    log "Rust $TOOLCHAIN with wasm32-unknown-unknown in place${did[*]:+ (installed: ${did[*]})}"
    exit 0
fi

# --- wasm-bindgen-cli and worker-build, from source -------------------------------
# Both are build-time tools that run for well under a second per build, so
# they are compiled without optimisation (opt-level 0: about 95 s for both
# on 2 cores, against about 270 s at their default opt-level 3; wasm-bindgen
# then takes 0.7 s instead of 0.2 s on our bundle) in one shared, throwaway
# target dir so their common dependencies compile once.
# Not --locked: the CLI's own lockfile can name crates newer than a lagging
# index; a fresh resolve of the same CLI version is what we want.
tool_install() { # CRATE VERSION ROOT [cargo install args...]
    local crate=$1 version=$2 root=$3 t=$SECONDS
    shift 3
    log "cargo install $crate $version -> ${root#"$ROOT"/} (unoptimised; about a minute)"
    CARGO_TARGET_DIR=$TOOLS/build \
        CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_DEBUG=false \
        CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_INCREMENTAL=false \
        cargo install --quiet "$crate" --version "=$version" --root "$root" --force "$@"
    did+=("$crate $version ($((SECONDS - t))s)")
}
installed_tool=0
if [ "$("$WASM_BINDGEN_ROOT/bin/wasm-bindgen" --version 2>/dev/null || true)" != "wasm-bindgen $WASM_BINDGEN_VERSION" ]; then
    tool_install wasm-bindgen-cli "$WASM_BINDGEN_VERSION" "$WASM_BINDGEN_ROOT"
    installed_tool=1
fi
# worker-build downloads esbuild over native-tls whatever its features say;
# its default rustls-tls feature only adds rustls and ring to compile.
if [ "$("$WORKER_BUILD_ROOT/bin/worker-build" --version 2>/dev/null || true)" != "$WORKER_BUILD_VERSION" ]; then
    tool_install worker-build "$WORKER_BUILD_VERSION" "$WORKER_BUILD_ROOT" --no-default-features
    installed_tool=1
fi
[ "$installed_tool" = 0 ] || rm -rf "$TOOLS/build"

# --- npm (wrangler, pinned in package-lock.json) -----------------------------
command -v node >/dev/null || die "node not found (Node >= 20 needed)"
command -v npm >/dev/null || die "npm not found"
NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]')
[ "$NODE_MAJOR" -ge 20 ] || die "Node >= 20 needed, found $(node -v)"
LOCK_SUM=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -x node_modules/.bin/wrangler ] || [ "$(cat node_modules/.edgeflag-lock.sha256 2>/dev/null || true)" != "$LOCK_SUM" ]; then
    log "npm ci"
    t=$SECONDS
    npm ci --no-audit --no-fund --loglevel=error >&2
    echo "$LOCK_SUM" >node_modules/.edgeflag-lock.sha256
    did+=("npm ci ($((SECONDS - t))s)")
fi

# --- apt helper -----------------------------------------------------------------
APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found; install manually: $*"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    if [ "$APT_UPDATED" = 0 ]; then
        $sudo apt-get update -qq >&2
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >&2
    did+=("apt: $*")
}

# --- --e2e: Python venv ----------------------------------------------------------
if [ "$WANT_E2E" = 1 ]; then
    command -v python3 >/dev/null || die "python3 not found"
    if [ ! -x .venv/bin/python ]; then
        if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
            apt_install python3-venv
        fi
        log "creating .venv"
        python3 -m venv .venv
        did+=(".venv")
    fi
    REQ_SUM=$(sha256sum tests/e2e/requirements.txt | cut -d' ' -f1)
    if [ "$(cat .venv/.edgeflag-req.sha256 2>/dev/null || true)" != "$REQ_SUM" ]; then
        log "pip install -r tests/e2e/requirements.txt"
        t=$SECONDS
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/e2e/requirements.txt >&2
        echo "$REQ_SUM" >.venv/.edgeflag-req.sha256
        did+=("pip e2e requirements ($((SECONDS - t))s)")
    fi
    # The published Python OFREP client needs a newer openfeature-sdk than
    # the Confidence SDK in .venv pins, so it gets a venv of its own.
    if [ ! -x .venv-ofrep/bin/python ]; then
        log "creating .venv-ofrep"
        python3 -m venv .venv-ofrep
        did+=(".venv-ofrep")
    fi
    OFREP_SUM=$(sha256sum tests/e2e/ofrep/requirements.txt | cut -d' ' -f1)
    if [ "$(cat .venv-ofrep/.edgeflag-req.sha256 2>/dev/null || true)" != "$OFREP_SUM" ]; then
        log "pip install -r tests/e2e/ofrep/requirements.txt (.venv-ofrep)"
        t=$SECONDS
        .venv-ofrep/bin/python -m pip install --quiet --disable-pip-version-check -r tests/e2e/ofrep/requirements.txt >&2
        echo "$OFREP_SUM" >.venv-ofrep/.edgeflag-req.sha256
        did+=("pip OFREP client requirements ($((SECONDS - t))s)")
    fi
fi

# --- --e2e: promtool (the e2e suite checks /metrics with it) -----------------------
if [ "$WANT_E2E" = 1 ] && ! command -v promtool >/dev/null; then
    apt_install prometheus
fi

# --- --bench: wrk ----------------------------------------------------------------------
if [ "$WANT_BENCH" = 1 ] && ! command -v wrk >/dev/null; then
    apt_install wrk
fi

if [ ${#did[@]} -eq 0 ]; then
    log "everything already in place (wasm-bindgen $WASM_BINDGEN_VERSION, worker-build $WORKER_BUILD_VERSION)"
else
    log "done in $((SECONDS - t_start))s:"
    for d in "${did[@]}"; do log "  - $d"; done
fi
