#!/usr/bin/env bash
# edgeflag benchmarks, printed as markdown tables in one run.
#
#   bash scripts/bench.sh                     # every section
#   bash scripts/bench.sh native size         # only some: native size workerd tail ofrep cold telemetry sticky scale live code code_cpu
#   SKIP_BUILD=1 bash scripts/bench.sh ...    # reuse the bundles in target/bench/
#
# Sections (one function each):
#   bench_live        live state (scripts/bench/live_state.py): bundle size now, the
#                     time to swap the 5 MB state in inside workerd, and req/s
#                     and p99 at 8 connections while the pointer flips, as
#                     ratios to a run without swaps.
#   bench_native      `cargo bench --bench resolve` (scripts/bench/resolve.rs): one
#                     thread, no JSON/HTTP; Snapshot::load times; resolve
#                     throughput for 1, 10 and all flags on the conformance,
#                     demo and a large synthetic state (scripts/bench/synth.rs);
#                     JSON parse/write per request; OFREP single and bulk
#                     (context, resolve, write, ETag) per request.
#   bench_size        the Worker bundle (what wrangler uploads: index_bg.wasm,
#                     index.js, worker/shim.mjs), raw and gzip -9, for
#                     edgeflag (demo and 5 MB state) and the baseline.
#   bench_workerd     edgeflag (demo state) and scripts/bench/baseline/ (a Rust Worker
#                     that parses the request JSON and returns a fixed answer)
#                     under workerd: wrk at 1, 8 and 32 connections; req/s,
#                     p50/p99, workerd CPU per request, edgeflag/baseline
#                     ratios; workerd RSS after 10,000 requests.
#   bench_tail        tail latency (scripts/bench/tail.py records every
#                     request): baseline and edgeflag (demo) side by side,
#                     TAIL_ROUNDS rounds at TAIL_CONNS connections; p50, p99,
#                     p99.9, max, requests over 100/250 ms, longest stall,
#                     CPU/req, and edgeflag/baseline ratios per round.
#   bench_code        (not in the default run: one wasm32 release build per
#                     CODE_VARIANTS setting, several minutes) wasm size per
#                     release-profile setting, and twiggy's size by crate.
#   bench_code_cpu    (not in the default run) workerd CPU per resolve of each
#                     CODE_CPU_VARIANTS build (CODE_VARIANTS syntax) against
#                     the release profile as committed, CODE_CPU_ROUNDS
#                     alternating rounds of wrk -c8, as ratios.
#   bench_ofrep       OFREP single and bulk evaluation on edgeflag (demo state)
#                     under workerd, bulk also with OFREP_BULK_APPLY=false:
#                     wrk at 1, 8 and 32 connections; req/s, p50/p99, workerd
#                     CPU per request, and req/s and CPU as ratios to the
#                     baseline (bench_workerd's figures when it ran in the
#                     same invocation, else measured here).
#   bench_cold_start  fresh workerd -> first resolve, sent straight to the
#                     Worker's workerd as soon as it listens, for the
#                     baseline, edgeflag with the demo state, the real
#                     3-flag state (../shared/states/resolver_state.pb) and a
#                     generated 5 MB state (scripts/bench/gen_state.rs); first
#                     a breakdown: wasm compile/instantiate in deno
#                     (scripts/bench/wasm_cold.mjs), state decode + index and
#                     the first resolve's JSON natively (scripts/bench/cold_load.rs).
#   bench_telemetry   queue messages per 1,000 resolves, from the Worker's
#                     /metrics after the workerd section's load (or after
#                     its own wrk run when that section did not run).
#   bench_sticky      the sticky resolve by KV layout (scripts/bench/sticky.py):
#                     units stored in edgeflag's layout (one list) next to
#                     the reference worker's (list + value read), nothing
#                     stored, and a flag without sticky data; STICKY_UNITS
#                     units each, 8 connections, straight at workerd.
#   bench_scale       the telemetry pipeline simulated for 10, 1,000 and 20,000
#                     isolates (tests/telemetry_scale.rs: real checkpoint sizes
#                     and interval policy; queue, consumer, Durable Object and
#                     KV rates). Native, no Worker; about 10 s.
#
# How the Worker is reached. `wrangler dev` (4.86) runs two workerd
# processes in its process group: a dev proxy listening on --port and
# --inspector-port (it caps throughput near 1,000 req/s), and the one running
# our Worker, started with `--socket-addr=entry=127.0.0.1:0` (a kernel-chosen
# port it reports to wrangler over --control-fd, never printed). We find that
# second workerd as the workerd in wrangler's process group whose command
# line does not bind the proxy port, list its listening ports with
# `ss -Hltnp` (entry, inspector, debug port), skip the inspector (it answers
# GET /json/version) and take the port that answers HTTP. wrk hits that port
# directly; CPU is utime+stime of that PID from /proc/<pid>/stat, memory its
# VmRSS/VmHWM.
#
# Hygiene: servers listen on 127.0.0.1 only, each wrangler runs in its own
# process group (setsid) and is stopped by that group's id on exit; every
# wait loop and wrk run is bounded. Scratch files (states, bundle copies,
# wrk scripts, logs) go to target/bench/. Building the bundles rebuilds
# build/ through scripts/build-worker.sh and leaves it as the default (demo
# state) build.
#
# Time on 2 cores: about 8 minutes on a fresh machine (setup.sh installing
# the tools in the background while the native bench compiles, then three
# wasm builds, then about 3 minutes of measuring); about 3 minutes when
# target/bench/ has bundles whose inputs did not change.
#
# Environment:
#   DURATION=10        seconds per wrk run          CONNS="1 8 32"
#   BENCH_SECS=1       seconds per native row       COLD_RUNS=5
#   SKIP_BUILD=1       never build; use what target/bench/ has
#   STICKY_UNITS=2000  requests per row of the sticky section
#   TAIL_SECS=8 TAIL_ROUNDS=3 TAIL_CONNS="8 32"   the tail section
#   TAIL_VARS="NAME:VALUE ..."   extra vars for edgeflag in the tail section
#   TAIL_NO_CONSUMER=1           edgeflag in the tail section without its queue consumer (experiment)
#   PIN=1              pin workerd to CPU 1 and wrk to CPU 0 (2+ cores)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-10}
CONNS=${CONNS:-"1 8 32"}
COLD_RUNS=${COLD_RUNS:-5}
SKIP_BUILD=${SKIP_BUILD:-0}
PIN=${PIN:-0}
READY_TIMEOUT=${READY_TIMEOUT:-90}
TAIL_SECS=${TAIL_SECS:-8}
TAIL_ROUNDS=${TAIL_ROUNDS:-3}
TAIL_CONNS=${TAIL_CONNS:-"8 32"}
TAIL_VARS=${TAIL_VARS:-}
TAIL_NO_CONSUMER=${TAIL_NO_CONSUMER:-0}
MEM_REQUESTS=10000
SCRATCH=$ROOT/target/bench
T0=$SECONDS
CLK_TCK=$(getconf CLK_TCK)
mkdir -p "$SCRATCH"

log() { echo "bench: [$((SECONDS - T0))s] $*" >&2; }
die() {
    echo "bench: ERROR: $*" >&2
    exit 1
}

# --- process bookkeeping ---------------------------------------------------------
STARTED=()
stop_group() {
    local pgid=$1
    kill -0 "$pgid" 2>/dev/null || return 0
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pgid" 2>/dev/null || break
        sleep 0.2
    done
    kill -KILL -- "-$pgid" 2>/dev/null || true
    # The group may outlive its leader briefly; wait for its workerds too.
    for _ in $(seq 1 25); do
        pgrep -g "$pgid" >/dev/null 2>&1 || break
        sleep 0.2
    done
}
cleanup() {
    local p
    for p in "${STARTED[@]}"; do stop_group "$p"; done
    [ -z "$SETUP_PID" ] || stop_group "$SETUP_PID"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- small helpers -----------------------------------------------------------------
now_ms() { echo $(($(date +%s%N) / 1000000)); }

free_port() {
    local p used
    used=$(ss -Htan | awk '{n = split($4, a, ":"); print a[n]}' | sort -u)
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 30000))
        grep -qx "$p" <<<"$used" || {
            echo "$p"
            return 0
        }
    done
    die "no free port found"
}

# Inputs of a bundle, so an unchanged one is not rebuilt.
inputs_hash() {
    {
        find "$@" -type f ! -path '*/target/*' ! -path '*/build/*' -print0 | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-16
}

gz_size() { gzip -9c "$1" | wc -c; }

lock_version() { # PACKAGE LOCKFILE
    awk -v n="$1" '$0 == "name = \"" n "\"" { getline; gsub(/version = |"/, ""); print; exit }' "$2"
}

# N / 1024 with one decimal: bytes -> KB, kB -> MB.
div1024() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1024 }'; }

# --- tools ---------------------------------------------------------------------------
# On a fresh machine setup.sh compiles two tools and downloads the rest
# (about two minutes); start_tools runs it in the background while the
# native bench compiles, and ensure_tools waits for it before anything is
# measured or needs the tools.
TOOLS_READY=0
SETUP_PID=""
SETUP_LOG=$SCRATCH/setup.log
start_tools() {
    [ "$TOOLS_READY" = 1 ] || [ -n "$SETUP_PID" ] && return 0
    log "scripts/setup.sh --bench in the background (log: ${SETUP_LOG#"$ROOT"/})"
    setsid bash scripts/setup.sh --bench </dev/null >"$SETUP_LOG" 2>&1 &
    SETUP_PID=$!
}
ensure_tools() {
    [ "$TOOLS_READY" = 1 ] && return 0
    if [ -n "$SETUP_PID" ]; then
        log "waiting for scripts/setup.sh --bench"
        wait "$SETUP_PID" || {
            cat "$SETUP_LOG" >&2
            die "scripts/setup.sh --bench failed"
        }
        SETUP_PID=""
        grep -v '^setup: everything already' "$SETUP_LOG" >&2 || true
    else
        bash scripts/setup.sh --bench
    fi
    eval "$(bash scripts/setup.sh --print-env)"
    command -v wrk >/dev/null || die "wrk missing after setup --bench"
    TOOLS_READY=1
}

# --- builds ----------------------------------------------------------------------------
STATE_5MB=$SCRATCH/state-5mb.pb
ACCOUNT_5MB=bench-account
# The real 3-flag state of the shared fixtures (it carries no account).
STATE_REAL=$ROOT/../shared/states/resolver_state.pb
ACCOUNT_REAL=bench-account
REAL_SECRET=mkjJruAATQWjeY7foFIWfVAcBWnci2YF

gen_5mb_state() {
    if [ -f "$STATE_5MB" ] && [ "$STATE_5MB" -nt scripts/bench/synth.rs ] && [ "$STATE_5MB" -nt scripts/bench/gen_state.rs ]; then
        return 0
    fi
    log "generating a 5 MB state -> ${STATE_5MB#"$ROOT"/}"
    # The dev profile: it shares its compiled crates with the validating CLI
    # that build-worker.sh builds, where release would cost a separate
    # optimised build (about 35 s); generating takes 2-3 s either way.
    cargo run --quiet --example gen_state -- \
        --flags 200 --segments 10 --clients 5 --target-bytes 5000000 --format pb --out "$STATE_5MB" >&2
}

# build_edgeflag NAME [STATE ACCOUNT]: bundle in $SCRATCH/worker-NAME/build.
build_edgeflag() {
    local name=$1 state=${2:-} account=${3:-} dir=$SCRATCH/worker-$1 stamp
    stamp=$(inputs_hash src proto build.rs Cargo.toml Cargo.lock ${state:+"$state"})
    if [ -f "$dir/build/worker/shim.mjs" ] && { [ "$SKIP_BUILD" = 1 ] || [ "$(cat "$dir/stamp" 2>/dev/null)" = "$stamp" ]; }; then
        return 0
    fi
    [ "$SKIP_BUILD" = 1 ] && die "SKIP_BUILD=1 but $dir has no bundle"
    ensure_tools
    log "building edgeflag ($name) with scripts/build-worker.sh"
    if [ -n "$state" ]; then
        EDGEFLAG_STATE=$state EDGEFLAG_ACCOUNT=$account bash scripts/build-worker.sh >&2
    else
        (unset EDGEFLAG_STATE EDGEFLAG_ACCOUNT && bash scripts/build-worker.sh >&2)
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    cp -r build "$dir/build"
    echo "$stamp" >"$dir/stamp"
}

build_baseline() {
    local stamp
    stamp=$(inputs_hash scripts/bench/baseline/src scripts/bench/baseline/Cargo.toml scripts/bench/baseline/Cargo.lock)
    if [ -f scripts/bench/baseline/build/worker/shim.mjs ] && { [ "$SKIP_BUILD" = 1 ] || [ "$(cat "$SCRATCH/baseline.stamp" 2>/dev/null)" = "$stamp" ]; }; then
        return 0
    fi
    [ "$SKIP_BUILD" = 1 ] && die "SKIP_BUILD=1 but scripts/bench/baseline/build has no bundle"
    # One wasm-bindgen CLI (Cargo.lock's version, from setup.sh) builds both.
    local ours theirs
    ours=$(lock_version wasm-bindgen Cargo.lock)
    theirs=$(lock_version wasm-bindgen scripts/bench/baseline/Cargo.lock)
    [ "$ours" = "$theirs" ] || die "wasm-bindgen is $ours in Cargo.lock but $theirs in scripts/bench/baseline/Cargo.lock;" \
        "run: (cd scripts/bench/baseline && cargo update -p wasm-bindgen --precise $ours)"
    ensure_tools
    log "building scripts/bench/baseline with worker-build (wasm-bindgen: $WASM_BINDGEN_BIN)"
    # edgeflag's target dir: the crates both Workers use compile once.
    (cd scripts/bench/baseline && CARGO_TARGET_DIR=$ROOT/target "$WORKER_BUILD_BIN" --release >&2)
    echo "$stamp" >"$SCRATCH/baseline.stamp"
}

BUILT=0
build_all() {
    [ "$BUILT" = 1 ] && return 0
    gen_5mb_state
    build_edgeflag 5mb "$STATE_5MB" "$ACCOUNT_5MB"
    build_edgeflag real "$STATE_REAL" "$ACCOUNT_REAL"
    build_edgeflag demo
    # build/ is the default (demo) build afterwards, whatever was rebuilt.
    if ! cmp -s build/index_bg.wasm "$SCRATCH/worker-demo/build/index_bg.wasm" 2>/dev/null; then
        rm -rf build && cp -r "$SCRATCH/worker-demo/build" build
    fi
    build_baseline
    BUILT=1
}

# --- workers under wrangler dev ----------------------------------------------------------
# Targets: NAME -> config, script, request body prefix/suffix (the targeting
# key goes between), and the request used for readiness.
DEMO_SECRET=demo-secret
DEMO_FLAG=flags/welcome-banner
target_config() { # NAME -> "CONFIG SCRIPT"
    case $1 in
        baseline) echo "scripts/bench/baseline/wrangler.toml scripts/bench/baseline/build/worker/shim.mjs" ;;
        edgeflag-demo) echo "wrangler.toml $SCRATCH/worker-demo/build/worker/shim.mjs" ;;
        edgeflag-5mb) echo "wrangler.toml $SCRATCH/worker-5mb/build/worker/shim.mjs" ;;
        edgeflag-real) echo "wrangler.toml $SCRATCH/worker-real/build/worker/shim.mjs" ;;
        code-*) echo "wrangler.toml ${CODE_SHIM[$1]}" ;;
        *) die "unknown target $1" ;;
    esac
}
body_head() {
    case $1 in
        baseline | edgeflag-demo | code-*)
            printf '{"flags":["%s"],"clientSecret":"%s","apply":false,"evaluationContext":{"country":"SE","targeting_key":"user-' \
                "$DEMO_FLAG" "$DEMO_SECRET"
            ;;
        edgeflag-real)
            printf '{"flags":["flags/tutorial-feature"],"clientSecret":"%s","apply":false,"evaluationContext":{"country":"SE","targeting_key":"user-' \
                "$REAL_SECRET"
            ;;
        edgeflag-5mb)
            printf '{"flags":["flags/bench-flag-00000"],"clientSecret":"bench-secret-0","apply":false,"evaluationContext":{"country":"SE","targeting_key":"user-'
            ;;
    esac
}
BODY_TAIL='"}}'
body() { printf '%s%s%s' "$(body_head "$1")" "$2" "$BODY_TAIL"; }

# Extra `--var NAME:VALUE` arguments for the next start_worker.
W_VARS=()
# Set by start_worker.
W_PGID=""
W_PORT=""
W_LOG=""
start_worker() { # NAME [RUN-DIR-SUFFIX [KV-SEED-JSON]]
    local name=$1 config script port iport dir
    read -r config script <<<"$(target_config "$name")"
    config=${W_CONFIG:-$config} # an experiment's edited copy
    [ -f "$script" ] || die "$name: $script missing (build first)"
    dir=$SCRATCH/run-$name${2:+-$2}
    rm -rf "$dir"
    mkdir -p "$dir"
    if [ -n "${3:-}" ]; then # sticky assignments, into local KV before it starts
        WRANGLER_SEND_METRICS=false CI=true timeout 120 node_modules/.bin/wrangler kv bulk put "$3" \
            --config "$config" --binding MATERIALIZATIONS_KV --local --persist-to "$dir/state" >"$dir/seed.log" 2>&1 ||
            die "$name: seeding KV failed: $(tail -5 "$dir/seed.log")"
    fi
    # --env-file keeps a developer's .dev.vars out; a throwaway token key.
    (
        umask 077
        echo "RESOLVE_TOKEN_KEY=$(head -c 32 /dev/urandom | base64)" >"$dir/secrets.env"
    )
    port=$(free_port)
    iport=$(free_port)
    while [ "$iport" = "$port" ]; do iport=$(free_port); done
    W_LOG=$dir/wrangler.log
    WRANGLER_SEND_METRICS=false WRANGLER_LOG_PATH=$dir NO_COLOR=1 FORCE_COLOR=0 CI=true \
        setsid node_modules/.bin/wrangler dev "$script" --config "$config" \
        --ip 127.0.0.1 --port "$port" --inspector-port "$iport" \
        --persist-to "$dir/state" --env-file "$dir/secrets.env" \
        --show-interactive-dev-session=false ${W_VARS[@]+"${W_VARS[@]}"} </dev/null >"$W_LOG" 2>&1 &
    W_PGID=$!
    W_PORT=$port
    STARTED+=("$W_PGID")
}

stop_worker() {
    stop_group "$W_PGID"
    local keep=() p
    for p in "${STARTED[@]}"; do [ "$p" = "$W_PGID" ] || keep+=("$p"); done
    STARTED=("${keep[@]}")
}

# post PORT NAME KEY -> "HTTP_CODE SECONDS"
post() {
    curl -s -o /dev/null -m 5 -w '%{http_code} %{time_total}' -X POST \
        -H 'content-type: application/json' --data "$(body "$2" "$3")" \
        "http://127.0.0.1:$1/v1/flags:resolve" 2>/dev/null || true
}

# Waits until the proxy port answers anything; echoes the HTTP code.
wait_answer() { # NAME
    local deadline=$((SECONDS + READY_TIMEOUT)) code
    while [ "$SECONDS" -lt "$deadline" ]; do
        kill -0 "$W_PGID" 2>/dev/null || {
            tail -20 "$W_LOG" >&2
            die "$1: wrangler dev exited"
        }
        read -r code _ <<<"$(post "$W_PORT" "$1" ready)"
        if [ -n "$code" ] && [ "$code" != 000 ]; then
            echo "$code"
            return 0
        fi
        sleep 0.05
    done
    tail -20 "$W_LOG" >&2
    die "$1: no answer within ${READY_TIMEOUT}s"
}

# Echoes "PID PORT" of the workerd running the Worker (see the header).
find_workerd() { # NAME
    local pid port cmd ports
    for _ in $(seq 1 50); do
        for pid in $(pgrep -g "$W_PGID" -x workerd || true); do
            cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
            case $cmd in *"entry=127.0.0.1:$W_PORT "*) continue ;; esac
            ports=$(ss -Hltnp 2>/dev/null | awk -v p="pid=$pid," 'index($0, p) { n = split($4, a, ":"); print a[n] }' | sort -u)
            for port in $ports; do
                curl -s -m 2 "http://127.0.0.1:$port/json/version" 2>/dev/null | grep -q '"Browser"' && continue
                read -r code _ <<<"$(post "$port" "$1" probe)"
                if [ -n "$code" ] && [ "$code" != 000 ]; then
                    echo "$pid $port"
                    return 0
                fi
            done
        done
        sleep 0.2
    done
    die "$1: could not find the Worker's workerd process and port"
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

# wrk script: one body per request, each with a fresh targeting key.
write_lua() { # NAME FILE
    local head
    head=$(body_head "$1")
    cat >"$2" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local head = [[$head]]
local tail = [[$BODY_TAIL]]
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, head .. n .. tail)
end
EOF
}

# Exactly N requests over 8 keep-alive connections (wrk cannot stop after
# a count: thread:stop() still waits out -d). Echoes the status counts.
send_n() { # NAME PORT N
    timeout 180 node -e '
        const [url, n, head, tail] = process.argv.slice(1);
        let next = 0;
        const codes = {};
        async function loop() {
            while (next < Number(n)) {
                const k = next++;
                const r = await fetch(url, { method: "POST", headers: { "content-type": "application/json" }, body: head + "mem-" + k + tail });
                await r.arrayBuffer();
                codes[r.status] = (codes[r.status] || 0) + 1;
            }
        }
        Promise.all(Array.from({ length: 8 }, loop)).then(
            () => console.log(Object.entries(codes).map(([c, k]) => k + "x" + c).join(",")),
            (e) => { console.log("error: " + e.message); process.exit(1); });
    ' "http://127.0.0.1:$2/v1/flags:resolve" "$3" "$(body_head "$1")" "$BODY_TAIL"
}

# wrk output -> "RPS REQUESTS P50_MS P99_MS NON2XX ERRORS"
parse_wrk() {
    awk '
        function ms(v) {
            if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
            if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
            if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
            return v
        }
        /Requests\/sec:/ { rps = $2 }
        / requests in / { reqs = $1 }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /Socket errors:/ { gsub(",", ""); errs = $4 + $6 + $8 + $10 }
        END { printf "%s %s %s %s %d %d\n", rps, reqs, p50, p99, non2xx, errs }
    ' "$1"
}

WRK_PREFIX=()
[ "$PIN" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ] && WRK_PREFIX=(taskset -c 0)

# --- sections ----------------------------------------------------------------------------
bench_native() {
    # The harness prints its own "## Native core" section.
    # Release has panic=abort; a bench target is built with unwind, and with
    # the bin target in the same build both lib copies would be written to
    # the same libedgeflag.{so,rlib} (cdylib names carry no hash), racing.
    # Unwind for the whole bench profile builds the lib once (cargo warns
    # that the setting is "ignored"; the effect is the single build).
    CARGO_PROFILE_BENCH_PANIC=unwind timeout 1800 cargo bench --quiet --bench resolve --no-run
    # Nothing else may run while the rows are timed.
    [ -z "$SETUP_PID" ] || ensure_tools
    CARGO_PROFILE_BENCH_PANIC=unwind timeout 1800 cargo bench --quiet --bench resolve
    echo
}

bench_size() {
    build_all
    echo "## Bundle size (what wrangler uploads; Workers limit: 3 MB gzip free, 10 MB paid)"
    echo
    echo "| bundle | wasm raw | wasm gzip | js raw | js gzip | total raw | total gzip |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    local label dir wasm js_raw js_gz f
    for label in "edgeflag (demo state):$SCRATCH/worker-demo/build" \
        "edgeflag (5 MB state):$SCRATCH/worker-5mb/build" \
        "baseline:scripts/bench/baseline/build"; do
        dir=${label#*:}
        wasm=$dir/index_bg.wasm
        [ -f "$wasm" ] || {
            echo "| ${label%%:*} | (not built) | | | | | |"
            continue
        }
        js_raw=0
        js_gz=0
        for f in "$dir/index.js" "$dir/worker/shim.mjs"; do
            [ -f "$f" ] || continue
            js_raw=$((js_raw + $(wc -c <"$f")))
            js_gz=$((js_gz + $(gz_size "$f")))
        done
        local w_raw w_gz
        w_raw=$(wc -c <"$wasm")
        w_gz=$(gz_size "$wasm")
        echo "| ${label%%:*} | $(div1024 "$w_raw") KB | $(div1024 "$w_gz") KB | $(div1024 "$js_raw") KB | $(div1024 "$js_gz") KB | $(div1024 $((w_raw + js_raw))) KB | $(div1024 $((w_gz + js_gz))) KB |"
    done
    echo
    local big=$SCRATCH/worker-5mb/build/index_bg.wasm
    if [ -f "$big" ] && [ "$(wc -c <"$big")" -lt "$(wc -c <"$STATE_5MB")" ]; then
        echo "> The 5 MB-state wasm is smaller than the state itself: this build does not embed EDGEFLAG_STATE (nothing in the Worker references it yet, so LTO drops it)."
        echo
    fi
}

# Fills R_<target>_<conns> with "RPS P50 P99 CPU_US NON2XX".
declare -A R
declare -A MEM
# wrk at each of $CONNS connections against workerd PID on PORT with the
# wrk script LUA; R[KEY.c] = "RPS P50 P99 CPU_US NON2XX ERRORS".
wrk_rows() { # NAME PID PORT LUA KEY
    local name=$1 pid=$2 port=$3 lua=$4 key=$5 c c0 c1 out rps reqs p50 p99 non2xx errs cpu_us
    for c in $CONNS; do
        # A short unmeasured run first: JIT, connection setup.
        "${WRK_PREFIX[@]}" wrk -t1 -c"$c" -d2s --timeout 5s -s "$lua" "http://127.0.0.1:$port/v1/flags:resolve" >/dev/null 2>&1 || true
        out=$SCRATCH/run-$name/wrk-$key-c$c.txt
        log "$name: $key wrk -c$c for ${DURATION}s"
        c0=$(cpu_ticks "$pid")
        "${WRK_PREFIX[@]}" wrk -t1 -c"$c" -d"${DURATION}s" --timeout 5s --latency -s "$lua" \
            "http://127.0.0.1:$port/v1/flags:resolve" >"$out" 2>&1 || true
        c1=$(cpu_ticks "$pid")
        read -r rps reqs p50 p99 non2xx errs <<<"$(parse_wrk "$out")"
        cpu_us=$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.1f", (n > 0 ? t * 1e6 / hz / n : 0) }')
        R[$key.$c]="$rps $p50 $p99 $cpu_us $non2xx $errs"
    done
}

run_load() { # NAME
    local name=$1 code found pid port lua=$SCRATCH/run-$1/load.lua
    start_worker "$name"
    code=$(wait_answer "$name")
    found=$(find_workerd "$name")
    read -r pid port <<<"$found"
    log "$name: wrangler pgid $W_PGID, proxy :$W_PORT, workerd pid $pid on :$port (first answer HTTP $code)"
    if [ "$PIN" = 1 ] && [ ${#WRK_PREFIX[@]} -gt 0 ]; then
        taskset -a -cp 1 "$pid" >/dev/null
    fi
    write_lua "$name" "$lua"

    MEM[$name.idle]=$(status_kb "$pid" VmRSS)
    log "$name: $MEM_REQUESTS requests for the memory figure"
    MEM[$name.sent]=$(send_n "$name" "$port" "$MEM_REQUESTS" || echo failed)
    MEM[$name.rss]=$(status_kb "$pid" VmRSS)
    MEM[$name.code]=$code

    wrk_rows "$name" "$pid" "$port" "$lua" "$name"
    MEM[$name.hwm]=$(status_kb "$pid" VmHWM)
    if [ "$name" = edgeflag-demo ]; then
        read_telemetry "$name"
        TELEMETRY_LOAD="the workerd section's edgeflag run ($MEM_REQUESTS requests at 8 connections, then wrk at $CONNS connections, each with a 2 s warm-up, ${DURATION}s measured)"
    fi
    stop_worker
}

bench_workerd() {
    build_all
    ensure_tools
    run_load baseline
    run_load edgeflag-demo
    echo "## Under workerd (wrangler dev 4.86, wrk -t1 straight at the Worker's workerd, ${DURATION}s per row)"
    echo
    if [ "${MEM[edgeflag-demo.code]}" != 200 ]; then
        echo "> edgeflag answered resolves with HTTP ${MEM[edgeflag-demo.code]}, not 200: its rows measure that answer, not resolving."
        echo
    fi
    echo "| worker | connections | req/s | p50 ms | p99 ms | workerd CPU µs/req | non-2xx | socket errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    local name c rps p50 p99 cpu non2xx errs
    for name in baseline edgeflag-demo; do
        for c in $CONNS; do
            read -r rps p50 p99 cpu non2xx errs <<<"${R[$name.$c]}"
            echo "| $name | $c | $rps | $p50 | $p99 | $cpu | $non2xx | $errs |"
        done
    done
    echo
    echo "edgeflag / baseline (req/s below 1 and latency/CPU above 1 are what resolving costs):"
    echo
    echo "| connections | req/s | p50 | p99 | CPU/req |"
    echo "|---:|---:|---:|---:|---:|"
    local b e
    for c in $CONNS; do
        read -r -a b <<<"${R[baseline.$c]}"
        read -r -a e <<<"${R[edgeflag-demo.$c]}"
        awk -v c="$c" -v b1="${b[0]}" -v b2="${b[1]}" -v b3="${b[2]}" -v b4="${b[3]}" \
            -v e1="${e[0]}" -v e2="${e[1]}" -v e3="${e[2]}" -v e4="${e[3]}" '
            function r(x, y) { return (y > 0) ? sprintf("%.2f", x / y) : "n/a" }
            BEGIN { printf "| %s | %s | %s | %s | %s |\n", c, r(e1, b1), r(e2, b2), r(e3, b3), r(e4, b4) }'
    done
    echo
    echo "| worker | RSS idle | RSS after ${MEM_REQUESTS} requests | peak RSS (VmHWM) after all runs |"
    echo "|---|---:|---:|---:|"
    for name in baseline edgeflag-demo; do
        echo "| $name | $(div1024 "${MEM[$name.idle]:-0}") MB | $(div1024 "${MEM[$name.rss]:-0}") MB (${MEM[$name.sent]:-?}) | $(div1024 "${MEM[$name.hwm]:-0}") MB |"
    done
    echo
}

# wrk script for OFREP: PATH, a fresh targeting key per request.
write_ofrep_lua() { # FILE PATH
    cat >"$1" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $DEMO_SECRET"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "$2", nil, '{"context":{"country":"SE","targetingKey":"user-' .. n .. '"}}')
end
EOF
}

OFREP_SINGLE=/ofrep/v1/evaluate/flags/welcome-banner.message
OFREP_BULK=/ofrep/v1/evaluate/flags
bench_ofrep() {
    build_edgeflag demo
    build_baseline
    ensure_tools
    local pid port path code key c b e dir=$SCRATCH/run-edgeflag-demo-ofrep
    # The baseline's rows: bench_workerd's when it ran, else measured here.
    if [ -z "${R[baseline.${CONNS%% *}]:-}" ]; then
        start_worker baseline
        wait_answer baseline >/dev/null
        read -r pid port <<<"$(find_workerd baseline)"
        write_lua baseline "$SCRATCH/run-baseline/load.lua"
        wrk_rows baseline "$pid" "$port" "$SCRATCH/run-baseline/load.lua" baseline
        stop_worker
    fi
    start_worker edgeflag-demo ofrep
    wait_answer edgeflag-demo >/dev/null
    read -r pid port <<<"$(find_workerd edgeflag-demo)"
    log "edgeflag-demo (OFREP): wrangler pgid $W_PGID, workerd pid $pid on :$port"
    write_ofrep_lua "$dir/single.lua" "$OFREP_SINGLE"
    write_ofrep_lua "$dir/bulk.lua" "$OFREP_BULK"
    echo "## OFREP under workerd (wrk -t1 straight at the Worker's workerd, ${DURATION}s per row, demo state)"
    echo
    echo "Single: \`POST $OFREP_SINGLE\`; bulk: \`POST $OFREP_BULK\` (every flag of the client, ETag"
    echo "hashed over the body). Each request has a fresh targeting key. Ratios are to the baseline Worker"
    echo "(parses the request JSON, returns a fixed answer) at the same connection count. \`ofrep-bulk-noapply\`"
    echo "is bulk with \`OFREP_BULK_APPLY=false\` (resolves recorded, no exposure events)."
    echo
    for path in "$OFREP_SINGLE" "$OFREP_BULK"; do
        code=$(curl -s -o /dev/null -m 5 -w '%{http_code}' -X POST -H 'content-type: application/json' \
            -H "authorization: Bearer $DEMO_SECRET" --data '{"context":{"targetingKey":"probe"}}' \
            "http://127.0.0.1:$port$path" || true)
        if [ "$code" != 200 ]; then
            echo "> $path answered HTTP $code, not 200: its rows measure that answer."
            echo
        fi
    done
    wrk_rows edgeflag-demo-ofrep "$pid" "$port" "$dir/single.lua" ofrep-single
    wrk_rows edgeflag-demo-ofrep "$pid" "$port" "$dir/bulk.lua" ofrep-bulk
    stop_worker
    # Bulk again with exposures off: what recording them costs.
    W_VARS=(--var OFREP_BULK_APPLY:false)
    start_worker edgeflag-demo ofrep-noapply
    W_VARS=()
    wait_answer edgeflag-demo >/dev/null
    read -r pid port <<<"$(find_workerd edgeflag-demo)"
    wrk_rows edgeflag-demo-ofrep-noapply "$pid" "$port" "$dir/bulk.lua" ofrep-bulk-noapply
    stop_worker
    echo "| route | connections | req/s | p50 ms | p99 ms | workerd CPU µs/req | non-2xx | req/s ÷ baseline | CPU/req ÷ baseline |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for key in baseline ofrep-single ofrep-bulk ofrep-bulk-noapply; do
        for c in $CONNS; do
            read -r -a e <<<"${R[$key.$c]}"
            read -r -a b <<<"${R[baseline.$c]}"
            awk -v k="$key" -v c="$c" -v e1="${e[0]}" -v e2="${e[1]}" -v e3="${e[2]}" -v e4="${e[3]}" -v e5="${e[4]}" \
                -v b1="${b[0]}" -v b4="${b[3]}" '
                function r(x, y) { return (y > 0) ? sprintf("%.2f", x / y) : "n/a" }
                BEGIN { printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", k, c, e1, e2, e3, e4, e5, r(e1, b1), r(e4, b4) }'
        done
    done
    echo
}

# Echoes "PID PORT..." of the Worker's workerd once it listens on its
# entry, inspector and debug ports, without sending the Worker anything.
wait_workerd_ports() { # NAME
    local deadline=$((SECONDS + READY_TIMEOUT)) pid cmd ports
    while [ "$SECONDS" -lt "$deadline" ]; do
        kill -0 "$W_PGID" 2>/dev/null || {
            tail -20 "$W_LOG" >&2
            die "$1: wrangler dev exited"
        }
        for pid in $(pgrep -g "$W_PGID" -x workerd || true); do
            cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
            case $cmd in *"entry=127.0.0.1:$W_PORT "*) continue ;; esac
            ports=$(ss -Hltnp 2>/dev/null | awk -v p="pid=$pid," 'index($0, p) { n = split($4, a, ":"); print a[n] }' | sort -u)
            if [ "$(wc -w <<<"$ports")" -ge 3 ]; then
                echo "$pid" $ports
                return 0
            fi
        done
        sleep 0.01
    done
    tail -20 "$W_LOG" >&2
    die "$1: the Worker's workerd did not listen within ${READY_TIMEOUT}s"
}

# deno (PyPI's redistribution of its binary, into .venv): a V8 as recent
# as workerd's, to time wasm compilation, which workerd's frozen clocks and
# node 20's older V8 (no wasm exnref) cannot.
DENO_VERSION=2.9.8
ensure_deno() {
    if [ ! -x .venv/bin/deno ] || ! .venv/bin/deno --version 2>/dev/null | grep -q "^deno $DENO_VERSION "; then
        [ -x .venv/bin/python ] || bash scripts/setup.sh --e2e >&2
        log "pip install deno==$DENO_VERSION (into .venv)"
        timeout 600 .venv/bin/python -m pip install --quiet --disable-pip-version-check "deno==$DENO_VERSION" >&2 ||
            die "installing deno failed"
    fi
}

# Where a cold isolate's first resolve goes, step by step: the wasm
# compile and instantiate of each bundle (deno), then decoding and indexing
# each state and the first resolve's JSON (natively).
cold_breakdown() {
    ensure_deno
    local v8 wasms=(
        "baseline=scripts/bench/baseline/build/index_bg.wasm"
        "edgeflag-demo=$SCRATCH/worker-demo/build/index_bg.wasm"
        "edgeflag-real=$SCRATCH/worker-real/build/index_bg.wasm"
        "edgeflag-5mb=$SCRATCH/worker-5mb/build/index_bg.wasm"
    )
    v8=$(.venv/bin/deno --version | awk '/^v8/ { print $2 }')
    echo "## Cold start breakdown"
    echo
    echo "wasm compile and instantiate (deno $DENO_VERSION, V8 $v8; ${COLD_RUNS:-15} fresh compiles of each bundle's index_bg.wasm in one process, median [min-max]; stub imports, so no Rust code runs). Lazy is V8's default (workerd's too): functions compile on their first call, which the first resolve then pays; eager compiles the whole module up front."
    echo
    RUNS=${COLD_RUNS:-15} timeout 600 .venv/bin/deno run --allow-read --allow-env scripts/bench/wasm_cold.mjs "${wasms[@]}"
    echo
    MODE=eager RUNS=${COLD_RUNS:-15} timeout 600 .venv/bin/deno run --v8-flags=--no-wasm-lazy-compilation --allow-read \
        --allow-env scripts/bench/wasm_cold.mjs "${wasms[@]}"
    echo
    echo "State decode + index, natively (\`cargo run --release --example cold_load\`; the isolate runs the same code as wasm, slower):"
    echo
    timeout 900 cargo run --quiet --release --example cold_load -- "${COLD_RUNS:-15}" 2>/dev/null || echo "(cold_load failed)"
    echo
}

bench_cold_start() {
    build_all
    ensure_tools
    cold_breakdown
    echo "## Cold start (${COLD_RUNS} fresh workerd processes each, median [min-max])"
    echo
    echo "| worker | state | HTTP | workerd spawn -> listening ms | first resolve ms | workerd spawn -> first answer ms | next resolve ms | wrangler start -> first answer ms |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    local name state i t0 code secs t1 up found pid ports port start_ticks listen_up next
    for name in baseline edgeflag-demo edgeflag-real edgeflag-5mb; do
        case $name in
            baseline) state="none" ;;
            edgeflag-demo) state="demo" ;;
            edgeflag-real) state="real 3-flag ($(div1024 "$(wc -c <"$STATE_REAL")") KB pb)" ;;
            edgeflag-5mb) state="$(div1024 "$(wc -c <"$STATE_5MB")") KB pb" ;;
        esac
        local a_listen=() a_first=() a_spawn=() a_next=() a_total=()
        for i in $(seq 1 "$COLD_RUNS"); do
            t0=$(now_ms)
            start_worker "$name" cold
            found=$(wait_workerd_ports "$name")
            listen_up=$(awk '{ print $1 }' /proc/uptime)
            read -r pid ports <<<"$found"
            # The first resolve goes straight to workerd: the inspector is
            # skipped by asking it, and the debug port answers no HTTP, so
            # only the entry port's answer reaches the Worker.
            code=000
            secs=""
            for port in $ports; do
                curl -s -m 2 "http://127.0.0.1:$port/json/version" 2>/dev/null | grep -q '"Browser"' && continue
                read -r code secs <<<"$(post "$port" "$name" "cold-$i")"
                [ -n "$code" ] && [ "$code" != 000 ] && break
            done
            t1=$(now_ms)
            up=$(awk '{ print $1 }' /proc/uptime)
            if [ -z "$code" ] || [ "$code" = 000 ]; then
                tail -20 "$W_LOG" >&2
                log "$name: no answer (run $i)"
                stop_worker
                continue
            fi
            start_ticks=$(awk '{ print $22 }' "/proc/$pid/stat")
            a_listen+=("$(awk -v u="$listen_up" -v s="$start_ticks" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", (u - s / hz) * 1000 }')")
            a_first+=("$(awk -v s="$secs" 'BEGIN { printf "%.1f", s * 1000 }')")
            a_spawn+=("$(awk -v u="$up" -v s="$start_ticks" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", (u - s / hz) * 1000 }')")
            read -r _ next <<<"$(post "$port" "$name" "warm-$i")"
            a_next+=("$(awk -v s="$next" 'BEGIN { printf "%.1f", s * 1000 }')")
            a_total+=($((t1 - t0)))
            stop_worker
        done
        echo "| $name | $state | $code | $(spread "${a_listen[@]}") | $(spread "${a_first[@]}") | $(spread "${a_spawn[@]}") | $(spread "${a_next[@]}") | $(spread "${a_total[@]}") |"
    done
    echo
    echo "first resolve: curl's time for the first request the Worker gets, sent straight to its workerd as soon as that listens (no warm-up request before it); it includes instantiating what the isolate defers (wasm functions compile on first call) and loading the embedded state. workerd spawn: the process start time in /proc (10 ms ticks). wrangler start -> first answer adds wrangler's own start-up."
    echo
}

# "median [min-max]" of the arguments.
spread() {
    [ $# -gt 0 ] || {
        echo "n/a"
        return
    }
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%s [%s-%s]", m, a[1], a[NR] }'
}

# Waits (bounded) until the consumer has counted every resolve, then sets
# TELEMETRY="RESOLVES CHECKPOINTS" from /metrics: the consumer's count of
# resolves and of checkpoints (one per Queue message).
TELEMETRY=""
TELEMETRY_LOAD=""
read_telemetry() { # NAME
    local metrics=$SCRATCH/run-$1-metrics.txt resolves=0 checkpoints=0 prev=-1 i
    for i in $(seq 1 40); do
        sleep 1
        curl -s -m 5 -H "Authorization: ClientSecret $DEMO_SECRET" "http://127.0.0.1:$W_PORT/metrics" >"$metrics" || true
        resolves=$(awk '/^edgeflag_requests_total\{route="resolve",status="2xx"\}/ { print $2 }' "$metrics")
        checkpoints=$(awk '/^edgeflag_checkpoints_total / { print $2 }' "$metrics")
        resolves=${resolves:-0}
        checkpoints=${checkpoints:-0}
        [ "$resolves" = "$prev" ] && [ "$resolves" != 0 ] && break
        prev=$resolves
    done
    TELEMETRY="$resolves $checkpoints"
}

bench_telemetry() {
    # Queue messages per 1,000 resolves under sustained load. The workerd
    # section's edgeflag run is that load, so its count is reused when it
    # ran; alone, this section puts 8 connections on the Worker for
    # DURATION seconds.
    if [ -z "$TELEMETRY" ]; then
        build_all
        ensure_tools
        local name=edgeflag-demo lua=$SCRATCH/run-edgeflag-demo-telemetry/load.lua found pid port out
        start_worker "$name" telemetry
        wait_answer "$name" >/dev/null
        found=$(find_workerd "$name")
        read -r pid port <<<"$found"
        write_lua "$name" "$lua"
        out=$SCRATCH/run-$name-telemetry/wrk.txt
        log "$name: wrk -c8 for ${DURATION}s (telemetry)"
        wrk -t1 -c8 -d"${DURATION}s" --timeout 5s -s "$lua" "http://127.0.0.1:$port/v1/flags:resolve" >"$out" 2>&1 || true
        read_telemetry "$name"
        TELEMETRY_LOAD="wrk at 8 connections for ${DURATION}s"
        stop_worker
    fi
    local resolves checkpoints
    read -r resolves checkpoints <<<"$TELEMETRY"
    echo "## Telemetry"
    echo
    echo "Load: $TELEMETRY_LOAD."
    echo
    echo "| resolves counted by /metrics | queue messages (checkpoints) | messages per 1,000 requests |"
    echo "|---:|---:|---:|"
    awk -v r="$resolves" -v c="$checkpoints" 'BEGIN { printf "| %d | %d | %.2f |\n", r, c, (r > 0 ? c * 1000 / r : 0) }'
    echo
    echo "One message per checkpoint (about one per second of traffic, per isolate), not one per request."
    echo
}

bench_sticky() {
    build_edgeflag demo
    ensure_tools
    local name=edgeflag-demo units=${STICKY_UNITS:-2000} seed=$SCRATCH/sticky-seed.json found pid port out
    python3 scripts/bench/sticky.py seed --units "$units" --out "$seed"
    log "$name: seeding $((2 * units)) sticky keys, then $units requests per row"
    start_worker "$name" sticky "$seed"
    wait_answer "$name" >/dev/null
    found=$(find_workerd "$name")
    read -r pid port <<<"$found"
    out=$SCRATCH/run-$name-sticky/rows.md
    python3 scripts/bench/sticky.py run --port "$port" --pid "$pid" --units "$units" --conns 8 >"$out" ||
        log "sticky: some resolves failed or gave another variant (see above)"
    stop_worker
    echo "## Sticky resolves by KV layout (local KV under wrangler dev, 8 connections straight at workerd, $units units per row, each once)"
    echo
    cat "$out"
    echo
    echo "Reference-layout keys (value only, as the Confidence worker writes them) cost a bulk value read after the listing; edgeflag's own keys carry the variant in metadata, so the listing answers. Local KV is on disk next to workerd: on Cloudflare each read is a network round trip, so the gap is larger there."
    echo
}

# Tail latency (scripts/bench/tail.py: every request's start and end on
# record). Baseline and edgeflag run side by side; each round loads one,
# then the other, at each of $TAIL_CONNS connections. TAIL_VARS
# ("NAME:VALUE ...") go to edgeflag only, for experiments that switch one
# suspect off (e.g. FLAG_LOGS_INTERVAL_MS); the timelines and wrangler's
# output, time-stamped on the client's clock, stay in target/bench/run-*-tail/.
bench_tail() {
    build_edgeflag demo
    build_baseline
    ensure_tools
    local name c round pid port pgid dir head results=$SCRATCH/tail-results.jsonl
    declare -A T_PID T_PORT T_PGID T_LOG
    for name in baseline edgeflag-demo; do
        if [ "$name" = edgeflag-demo ] && [ -n "$TAIL_VARS" ]; then
            local v
            W_VARS=()
            for v in $TAIL_VARS; do W_VARS+=(--var "$v"); done
        fi
        if [ "$name" = edgeflag-demo ] && [ "$TAIL_NO_CONSUMER" = 1 ]; then
            # The experiment: the producer still sends, nothing consumes in
            # this isolate (no [[queues.consumers]] table).
            W_CONFIG=$SCRATCH/wrangler-no-consumer.toml
            python3 - wrangler.toml "$W_CONFIG" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
out, n = re.subn(r"(?ms)^\[\[queues\.consumers\]\].*?(?=^\[|\Z)", "", text)
assert n == 1, n
open(sys.argv[2], "w").write(out)
PY
        fi
        start_worker "$name" tail
        W_VARS=()
        W_CONFIG=
        wait_answer "$name" >/dev/null
        read -r pid port <<<"$(find_workerd "$name")"
        T_PID[$name]=$pid
        T_PORT[$name]=$port
        T_PGID[$name]=$W_PGID
        T_LOG[$name]=$W_LOG
        log "$name (tail): wrangler pgid $W_PGID, workerd pid $pid on :$port"
    done
    : >"$results"
    for name in baseline edgeflag-demo; do # warm-up, unmeasured
        python3 scripts/bench/tail.py run --port "${T_PORT[$name]}" --conns 8 --secs 2 \
            --head "$(body_head "$name")" --tail "$BODY_TAIL" >/dev/null
    done
    for round in $(seq 1 "$TAIL_ROUNDS"); do
        for c in $TAIL_CONNS; do
            for name in baseline edgeflag-demo; do
                dir=$SCRATCH/run-$name-tail
                log "tail round $round: $name -c$c for ${TAIL_SECS}s"
                python3 scripts/bench/tail.py run --port "${T_PORT[$name]}" --pid "${T_PID[$name]}" \
                    --conns "$c" --secs "$TAIL_SECS" --head "$(body_head "$name")" --tail "$BODY_TAIL" \
                    --timeline "$dir/timeline-r$round-c$c.txt" --log "${T_LOG[$name]}" \
                    --log-out "$dir/log-r$round-c$c.txt" |
                    python3 -c 'import json, sys; d = json.load(sys.stdin); d.update(worker=sys.argv[1], conns=int(sys.argv[2]), round=int(sys.argv[3])); print(json.dumps(d))' \
                        "$name" "$c" "$round" >>"$results"
            done
        done
    done
    for name in baseline edgeflag-demo; do
        W_PGID=${T_PGID[$name]}
        stop_worker
    done
    echo "## Tail latency under sustained load (scripts/bench/tail.py, every request recorded, ${TAIL_SECS}s per row, straight at workerd)"
    echo
    echo "Each round loads the baseline, then edgeflag (demo state), at each connection count; closed-loop keep-alive"
    echo "connections, a fresh targeting key per request.${TAIL_VARS:+ edgeflag vars: \`$TAIL_VARS\`.}$([ "$TAIL_NO_CONSUMER" != 1 ] || echo " edgeflag runs with no queue consumer (TAIL_NO_CONSUMER=1).") Ratios are edgeflag ÷ baseline in the same round; stall: the longest time in which no request completed."
    echo
    python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| round | conns | worker | req/s | p50 ms | p99 ms | p99.9 ms | max ms | > 100 ms | > 250 ms | non-200 | CPU µs/req | longest stall ms |")
print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    stall = r["stalls"][0]["ms"] if r["stalls"] else 0
    print(f"| {r['round']} | {r['conns']} | {r['worker']} | {r['rps']} | {r['p50']} | {r['p99']} | {r['p999']} | {r['max']} | {r['over100']} | {r['over250']} | {r['non200']} | {r['cpu_us']} | {stall} |")
print()
print("edgeflag ÷ baseline (targets: p99 ≤ 1.3, max ≤ 3, no request over 250 ms when the baseline has none; req/s ≥ 0.9, CPU ≤ 1.15):")
print()
print("| round | conns | req/s | p99 | p99.9 | max | CPU/req | > 250 ms (edgeflag / baseline) |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
by = {(r["round"], r["conns"], r["worker"]): r for r in rows}
def q(a, b):
    return f"{a / b:.2f}" if a is not None and b else "n/a"
for (rnd, c, w), e in by.items():
    if w != "edgeflag-demo" or (rnd, c, "baseline") not in by:
        continue
    b = by[(rnd, c, "baseline")]
    print(f"| {rnd} | {c} | {q(e['rps'], b['rps'])} | {q(e['p99'], b['p99'])} | {q(e['p999'], b['p999'])} | {q(e['max'], b['max'])} | {q(e['cpu_us'], b['cpu_us'])} | {e['over250']} / {b['over250']} |")
PY
    echo
    echo "What shares the isolate with requests, each synchronous stretch natively (\`cargo run --release --example flush_cost\`, demo-like exposure events; wasm is slower):"
    echo
    echo "| stretch | time |"
    echo "|---|---:|"
    timeout 900 cargo run --quiet --release --example flush_cost 2>/dev/null || echo "| (flush_cost failed) | |"
    echo
}

# What the wasm code is made of (twiggy, by crate, on a build that keeps
# its name section) and the release profile settings one at a time: each
# variant is scripts/build-worker.sh (demo state) into target/bench/code/
# with one CARGO_PROFILE_RELEASE_* override (its own fingerprint: the
# normal build stays cached), or with EDGEFLAG_CARGO_FEATURES=wasm-json-states,
# which puts the JSON state decoders (native only since issue 14) back in.
# A variant of several settings joins them with commas. Sizes are of the
# bundle's index_bg.wasm; "code" is that minus the embedded state's bytes.
CODE_TARGET_KB=700
CODE_JSON=EDGEFLAG_CARGO_FEATURES=wasm-json-states
CODE_VARIANTS=${CODE_VARIANTS:-"CARGO_PROFILE_RELEASE_STRIP=false $CODE_JSON CARGO_PROFILE_RELEASE_STRIP=false,$CODE_JSON CARGO_PROFILE_RELEASE_OPT_LEVEL=s CARGO_PROFILE_RELEASE_OPT_LEVEL=3 CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_PANIC=unwind"}
# Builds one CODE_VARIANTS entry (unless SKIP_BUILD=1 and it is there) and
# echoes "DIR LABEL RAW GZIP CODE" (sizes in bytes), or fails.
code_build() { # VARIANT
    local v=$1 b label vars state raw
    b=${SCRATCH#"$ROOT"/}/code/${v//[=,\"*]/-}
    label=${v//CARGO_PROFILE_RELEASE_/}
    label=${label//EDGEFLAG_CARGO_CONFIG=profile.release.package./}
    label=${label//$CODE_JSON/JSON state decoders in (feature wasm-json-states)}
    label=${label//,/ + }
    label=${label,,}
    label=${label//_/-}
    vars=${v//,/ }
    mkdir -p "$SCRATCH/code"
    if [ "$SKIP_BUILD" != 1 ] || [ ! -f "$b/index_bg.wasm" ]; then
        log "code: scripts/build-worker.sh with ${vars} -> $b"
        timeout 1800 env ${vars/#current/_BENCH_CODE=1} EDGEFLAG_OUT_DIR="$b" bash scripts/build-worker.sh >"$b.log" 2>&1 ||
            return 1
    fi
    raw=$(wc -c <"$b/index_bg.wasm")
    # The state build-worker.sh embedded (its log names the file).
    state=$(sed -n 's/^build-worker: .* embedding \(.*\)$/\1/p' "$b.log" | tail -1)
    echo "$b ${label// /_} $raw $(gz_size "$b/index_bg.wasm") $((raw - $(wc -c <"${state:-/dev/null}")))"
}

bench_code() {
    ensure_tools
    local twiggy=$ROOT/.tools/twiggy/bin/twiggy dir=$SCRATCH/code v b label raw gz code
    if [ ! -x "$twiggy" ]; then
        log "cargo install twiggy (into .tools/twiggy)"
        timeout 1200 cargo install --quiet --locked --root "$ROOT/.tools/twiggy" twiggy >&2 || die "installing twiggy failed"
    fi
    local rows=()
    for v in current $CODE_VARIANTS; do
        if ! read -r b label raw gz code <<<"$(code_build "$v")" || [ -z "$code" ]; then
            rows+=("| $v | build failed (see target/bench/code/*.log) | | | |")
            continue
        fi
        rows+=("| ${label//_/ } | $(div1024 "$raw") KB | $(div1024 "$gz") KB | $(div1024 "$code") KB | $(awk -v c="$code" -v t="$CODE_TARGET_KB" 'BEGIN { printf "%.2f", c / 1024 / t }') |")
    done
    echo "## Code size (the bundle's index_bg.wasm, demo state; release profile: opt-level z, lto, codegen-units 1, panic abort, strip)"
    echo
    echo "| setting changed from the release profile | wasm raw | wasm gzip | code (raw minus embedded state) | code ÷ ${CODE_TARGET_KB} KB target |"
    echo "|---|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
    echo
    local nostrip=$dir/CARGO_PROFILE_RELEASE_STRIP-false json=$dir/CARGO_PROFILE_RELEASE_STRIP-false-${CODE_JSON//=/-}
    if [ -f "$nostrip/index_bg.wasm" ] && [ -f "$json/index_bg.wasm" ]; then
        echo "By crate (twiggy shallow sizes of the strip=false builds, which add the name section), as shipped and with the JSON state decoders put back:"
        echo
        python3 scripts/bench/wasm_crates.py "$twiggy" "$nostrip/index_bg.wasm" --compare "with JSON decoders=$json/index_bg.wasm"
        echo
    elif [ -f "$nostrip/index_bg.wasm" ]; then
        echo "By crate (twiggy shallow sizes of the strip=false build, which adds the name section):"
        echo
        python3 scripts/bench/wasm_crates.py "$twiggy" "$nostrip/index_bg.wasm"
        echo
    fi
}

# CPU per resolve of code variants under workerd: each CODE_CPU_VARIANTS
# entry (CODE_VARIANTS syntax; built by code_build) serves the demo state
# in its own wrangler dev; wrk -c8 straight at its workerd, after a 2 s
# warm-up, for DURATION seconds; rounds alternate the variants, so load
# from elsewhere on the machine spreads over all of them. Ratios are to
# `current` (the release profile as committed) in the same run.
# A per-package opt-level (EDGEFLAG_CARGO_CONFIG=profile.release.package.
# edgeflag.opt-level=...) builds keep the wasm name section (strip is not
# applied; 2026-12-02, cargo 1.95), so their sizes are not comparable; and
# under fat LTO the root crate's level governs the merged module anyway.
CODE_CPU_VARIANTS=${CODE_CPU_VARIANTS:-"CARGO_PROFILE_RELEASE_OPT_LEVEL=s EDGEFLAG_WASM_OPT=-Oz"}
CODE_CPU_ROUNDS=${CODE_CPU_ROUNDS:-3}
declare -A CODE_SHIM
bench_code_cpu() {
    ensure_tools
    local v b label raw gz code names=() r name found pid port c0 c1 out rps reqs cpu lua
    declare -A info cpus rpss
    for v in current $CODE_CPU_VARIANTS; do
        [ "$v" != current ] || [ ${#names[@]} -eq 0 ] || continue
        read -r b label raw gz code <<<"$(code_build "$v")" || die "code_cpu: building $v failed (see $SCRATCH/code/*.log)"
        name=code-${#names[@]}
        names+=("$name")
        CODE_SHIM[$name]=$b/worker/shim.mjs
        info[$name]="$label $raw $gz $code"
    done
    for r in $(seq 1 "$CODE_CPU_ROUNDS"); do
        for name in "${names[@]}"; do
            start_worker "$name"
            wait_answer "$name" >/dev/null
            found=$(find_workerd "$name")
            read -r pid port <<<"$found"
            lua=$SCRATCH/run-$name/load.lua
            write_lua "$name" "$lua"
            "${WRK_PREFIX[@]}" wrk -t1 -c8 -d2s --timeout 5s -s "$lua" "http://127.0.0.1:$port/v1/flags:resolve" >/dev/null 2>&1 || true
            out=$SCRATCH/run-$name/wrk-r$r.txt
            log "code_cpu: round $r, ${info[$name]%% *}: wrk -c8 for ${DURATION}s"
            c0=$(cpu_ticks "$pid")
            "${WRK_PREFIX[@]}" wrk -t1 -c8 -d"${DURATION}s" --timeout 5s -s "$lua" "http://127.0.0.1:$port/v1/flags:resolve" >"$out" 2>&1 || true
            c1=$(cpu_ticks "$pid")
            read -r rps reqs _ _ _ _ <<<"$(parse_wrk "$out")"
            cpu=$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.1f", (n > 0 ? t * 1e6 / hz / n : 0) }')
            cpus[$name]="${cpus[$name]:-} $cpu"
            rpss[$name]="${rpss[$name]:-} $rps"
            stop_worker
        done
    done
    echo "## CPU per resolve by code variant (demo state, wrk -c8 straight at workerd, ${DURATION}s, ${CODE_CPU_ROUNDS} alternating rounds)"
    echo
    echo "| variant | code (raw minus embedded state) | wasm gzip | workerd CPU µs/req by round | median | ÷ current | req/s median | ÷ current |"
    echo "|---|---:|---:|---|---:|---:|---:|---:|"
    local base_cpu base_rps
    median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
    base_cpu=$(median <<<"${cpus[code-0]}")
    base_rps=$(median <<<"${rpss[code-0]}")
    for name in "${names[@]}"; do
        read -r label raw gz code <<<"${info[$name]}"
        awk -v l="${label//_/ }" -v code="$code" -v gz="$gz" -v rounds="${cpus[$name]# }" -v c="$(median <<<"${cpus[$name]}")" \
            -v bc="$base_cpu" -v q="$(median <<<"${rpss[$name]}")" -v bq="$base_rps" 'BEGIN {
                printf "| %s | %.1f KB | %.1f KB | %s | %.1f | %.3f | %.0f | %.3f |\n", l, code / 1024, gz / 1024, rounds, c, c / bc, q, q / bq }'
    done
    echo
}

bench_live() {
    # The bundle in build/ (what `wrangler dev` and the e2e tests run), a
    # private wrangler dev via the e2e harness, and the 5 MB state.
    gen_5mb_state
    [ -f build/edgeflag-build.json ] || bash scripts/build-worker.sh >&2
    cargo build --quiet --bin edgeflag
    log "live: swap times and load with pointer flips (scripts/bench/live_state.py)"
    .venv/bin/python scripts/bench/live_state.py --bundle build --state5 "$STATE_5MB" --account5 "$ACCOUNT_5MB" \
        --seconds "${LIVE_SECONDS:-10}"
}

bench_scale() {
    echo "## Telemetry at scale (simulated)"
    echo
    log "cargo test --test telemetry_scale (simulation)"
    cargo test --quiet --test telemetry_scale -- --nocapture 2>/dev/null | grep -E '^(\||[0-9]+ requests/s)'
    echo
}

# --- main ------------------------------------------------------------------------------------
SECTIONS=("$@")
[ ${#SECTIONS[@]} -gt 0 ] || SECTIONS=(native size workerd tail ofrep cold telemetry sticky scale live)
echo "# edgeflag benchmarks ($(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo '+dirty'))"
echo
echo "Machine: $(nproc) cores, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), load average $(cut -d' ' -f1-3 /proc/loadavg) at start."
echo
case "${SECTIONS[*]}" in native | scale | "native scale" | "scale native") ;; *) start_tools ;; esac
for s in "${SECTIONS[@]}"; do
    case $s in
        native) bench_native ;;
        size) bench_size ;;
        workerd) bench_workerd ;;
        cold | cold_start) bench_cold_start ;;
        telemetry) bench_telemetry ;;
        ofrep) bench_ofrep ;;
        sticky) bench_sticky ;;
        scale) bench_scale ;;
        tail) bench_tail ;;
        code) bench_code ;;
        code_cpu) bench_code_cpu ;;
        live) bench_live ;;
        *) die "unknown section '$s' (native size workerd ofrep cold telemetry sticky scale live tail code code_cpu)" ;;
    esac
done
log "done in $((SECONDS - T0))s"
