#!/usr/bin/env bash
# Fuzzes every target in fuzz/ for SECONDS each (default 60) with libFuzzer.
#   bash scripts/fuzz.sh [seconds-per-target]
# Installs what is missing (a nightly toolchain; cargo-fuzz into
# .tools/cargo-fuzz), builds once, runs each target on its committed corpus
# (fuzz/corpus/<t>/ and fuzz/regressions/<t>/, read-only: new inputs go to
# fuzz/target/corpus/<t>/), and exits non-zero if any target crashed,
# naming the crash input. Each finding should be fixed and its input kept
# under fuzz/regressions/<t>/, which `cargo test` (tests/fuzz_corpora.rs) replays.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SECS=${1:-60}
[[ $SECS =~ ^[0-9]+$ && $SECS -gt 0 ]] || { echo "usage: $0 [seconds-per-target]" >&2; exit 2; }
log() { echo "fuzz: $*" >&2; }

if ! rustup toolchain list | grep -q '^nightly'; then
    log "installing the nightly toolchain (cargo-fuzz needs -Z sanitizer flags)"
    rustup toolchain install nightly --profile minimal
fi
TOOLS=$ROOT/.tools/cargo-fuzz
if ! "$TOOLS/bin/cargo-fuzz" --version >/dev/null 2>&1; then
    # A CLI that runs for a moment per invocation: unoptimised builds faster.
    log "cargo install cargo-fuzz -> .tools/cargo-fuzz (unoptimised; about a minute)"
    CARGO_TARGET_DIR=$ROOT/.tools/build CARGO_PROFILE_RELEASE_OPT_LEVEL=0 \
        CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_DEBUG=false \
        cargo install --quiet cargo-fuzz --locked --root "$TOOLS"
    rm -rf "$ROOT/.tools/build"
fi
export PATH=$TOOLS/bin:$PATH

cd "$ROOT/fuzz"
# -a: debug assertions, so an arithmetic overflow is a crash, not a wrap.
FUZZ_FLAGS=(-O -a)
log "building the targets (nightly, address sanitizer)"
cargo +nightly fuzz build "${FUZZ_FLAGS[@]}"
mapfile -t TARGETS < <(cargo +nightly fuzz list)

failed=()
for t in "${TARGETS[@]}"; do
    scratch=target/corpus/$t
    mkdir -p "$scratch" "artifacts/$t"
    dirs=("$scratch" "corpus/$t")
    [ -d "regressions/$t" ] && dirs+=("regressions/$t")
    log "$t: ${SECS}s"
    start=$SECONDS
    if cargo +nightly fuzz run "${FUZZ_FLAGS[@]}" "$t" "${dirs[@]}" -- \
        -max_total_time="$SECS" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
        >"target/fuzz-$t.log" 2>&1; then
        log "$t: ok ($((SECONDS - start))s; $(grep -o 'stat::number_of_executed_units: *[0-9]*' "target/fuzz-$t.log" | grep -o '[0-9]*$' || echo '?') runs)"
    else
        failed+=("$t")
        log "$t: CRASHED; log: fuzz/target/fuzz-$t.log"
        grep -E '^(==[0-9]+==|thread .* panicked|SUMMARY)' "target/fuzz-$t.log" | head -5 >&2 || true
        for a in $(grep -o "artifacts/$t/[a-z]*-[0-9a-f]*" "target/fuzz-$t.log" | sort -u); do
            log "  crash input: fuzz/$a  (reproduce: cd fuzz && cargo +nightly fuzz run -O -a $t $a)"
        done
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    log "crashed: ${failed[*]}"
    exit 1
fi
log "all ${#TARGETS[@]} targets ran ${SECS}s without a crash"
