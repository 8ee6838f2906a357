#!/usr/bin/env bash
# Pushes a flag state to the Worker's STATE_KV: running isolates pick it up
# within STATE_REFRESH_SECONDS, with no redeploy.
#
#   bash scripts/push-state.sh PATH [--account ID] (--local [--persist-to DIR] | --remote)
#        [--config FILE] [--keep-previous]
#
# 1. `edgeflag validate` (any format it reads): a state with problems is
#    refused with every problem named, and nothing is written.
# 2. `edgeflag convert --to envelope --pointer`: canonical bytes (the same
#    state always gives the same etag) and the pointer JSON; over 25 MiB is
#    refused.
# 3. `wrangler kv key put` of the blob state:blob:<etag>, then (only then)
#    of the pointer state:current.
# 4. The previous blob is rewritten with a 7-day TTL, so isolates still
#    reading the old pointer find it, and it is gone after (blobs are never
#    deleted under a reader). --keep-previous skips this (two fewer wrangler
#    calls; the old blob then stays until pushed over).
# Prints the etag on stdout.
#
# --local reaches the KV of `scripts/dev.sh` (same default persistence
# directory, .wrangler/state); --persist-to and --config name another
# instance's (the e2e harness's).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '4,5p' "$0" | sed 's/^#  *//' >&2
    exit 2
}
path=
account=
mode=
persist=
config=
keep_previous=
while [ $# -gt 0 ]; do
    case $1 in
        --account) account=${2:?--account needs an ID}; shift 2 ;;
        --local) mode=local; shift ;;
        --remote) mode=remote; shift ;;
        --persist-to) persist=${2:?--persist-to needs a DIR}; shift 2 ;;
        --config) config=${2:?--config needs a FILE}; shift 2 ;;
        --keep-previous) keep_previous=1; shift ;;
        -h | --help) usage ;;
        -*) echo "push-state: unknown option $1" >&2; usage ;;
        *) [ -z "$path" ] || usage; path=$1; shift ;;
    esac
done
[ -n "$path" ] && [ -n "$mode" ] || usage
[ -f "$path" ] || { echo "push-state: no such file: $path" >&2; exit 2; }
[ "$mode" = local ] || [ -z "$persist" ] || { echo "push-state: --persist-to is for --local" >&2; exit 2; }

cli=${EDGEFLAG_CLI:-}
if [ -z "$cli" ]; then
    env -u EDGEFLAG_STATE -u EDGEFLAG_ACCOUNT -u EDGEFLAG_STATE_VALIDATED -u EDGEFLAG_STATE_ETAG \
        cargo build --quiet --bin edgeflag
    cli=target/debug/edgeflag
fi
acct=()
[ -n "$account" ] && acct=(--account "$account")

if ! report=$("$cli" validate --state "$path" "${acct[@]}" 2>&1); then
    echo "$report" >&2
    echo "push-state: ERROR: $path does not validate; nothing pushed" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$cli" convert --state "$path" "${acct[@]}" --to envelope --out "$tmp/blob" --pointer "$tmp/pointer.json" 2>"$tmp/err" || {
    cat "$tmp/err" >&2
    echo "push-state: ERROR: $path not pushed" >&2
    exit 1
}
etag=$(sed -n 's/.*"etag":"\([0-9a-f]*\)".*/\1/p' "$tmp/pointer.json")
[ -n "$etag" ] || { echo "push-state: ERROR: no etag in $(cat "$tmp/pointer.json")" >&2; exit 1; }

kv=(node_modules/.bin/wrangler kv key)
where=(--binding STATE_KV)
if [ "$mode" = local ]; then
    where+=(--local)
    [ -n "$persist" ] && where+=(--persist-to "$persist")
else
    where+=(--remote)
fi
[ -n "$config" ] && where+=(--config "$config")
quiet() { # runs wrangler, showing its output only when it fails
    local out
    if ! out=$("$@" 2>&1); then
        echo "$out" >&2
        return 1
    fi
    printf '%s' "$out"
}

previous=
if [ -z "$keep_previous" ]; then
    previous=$(quiet "${kv[@]}" get state:current "${where[@]}" --text 2>/dev/null | sed -n 's/.*"etag":"\([0-9a-f]*\)".*/\1/p' || true)
fi
quiet "${kv[@]}" put "state:blob:$etag" --path "$tmp/blob" "${where[@]}" >/dev/null
quiet "${kv[@]}" put state:current --path "$tmp/pointer.json" "${where[@]}" >/dev/null
if [ -n "$previous" ] && [ "$previous" != "$etag" ]; then
    # Straight to a file: the blob is binary.
    if "${kv[@]}" get "state:blob:$previous" "${where[@]}" >"$tmp/previous" 2>/dev/null && [ -s "$tmp/previous" ]; then
        quiet "${kv[@]}" put "state:blob:$previous" --path "$tmp/previous" --ttl 604800 "${where[@]}" >/dev/null ||
            echo "push-state: warning: could not set a TTL on the previous blob $previous" >&2
    fi
fi
echo "push-state: pushed $path as $etag ($(wc -c <"$tmp/blob") bytes, $mode)" >&2
echo "$etag"
