"""Live-state figures for scripts/bench.sh (section `live`), printed as
markdown: the bundle size now, the time to swap the 5 MB state in inside
workerd (the refresh's own `duration_ms`: KV reads, sha256, decode,
complete validation, swap), and req/s and p99 at 8 connections while the
pointer moves through three states every second, as ratios to a control run
with the same writer putting an unrelated key every second (so the
writer's CPU is in both runs and the ratio is the cost of the swaps). The
writer is one long-lived Miniflare on the instance's persisted KV
(scripts/kv_local.js): `wrangler kv key put` costs 2.8 s a put
here, which made the pointer flip only every ~2 s. The swaps the isolate
made (its `ok` load log lines) are counted and printed with the writes.

    .venv/bin/python scripts/bench/live_state.py --bundle build --state5 FILE --account5 ID [--seconds 10]
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import requests  # noqa: E402

import conftest  # noqa: E402

CLI = ROOT / "target" / "debug" / "edgeflag"
BODY = '{"clientSecret":"demo-secret","flags":[],"evaluationContext":{"targeting_key":"u","country":"SE"}}'


def push(worker: conftest.Worker, state: Path, *extra: str) -> str:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "push-state.sh"), str(state), "--local", "--keep-previous",
                          "--persist-to", str(worker.state_dir), "--config", str(worker.config_path), *extra],
                         cwd=ROOT, env={"EDGEFLAG_CLI": str(CLI), "PATH": "/usr/bin:/bin:/usr/local/bin"},
                         capture_output=True, text=True, check=True, timeout=300)
    return out.stdout.strip()


class KvWriter:
    """conftest.LocalKv (scripts/kv_local.js) on the instance's STATE_KV:
    one Miniflare for every put, so a put costs milliseconds, not a
    wrangler start."""

    def __init__(self, worker: conftest.Worker, scratch: Path) -> None:
        self.state_dir = worker.state_dir
        try:
            self.kv = conftest.LocalKv(scratch)
        except RuntimeError as e:
            raise SystemExit(f"live_state: {e}")

    def put(self, key: str, path: Path) -> float:
        """Puts the file's bytes at `key`; returns the put's own ms."""
        try:
            return self.kv.put(self.state_dir, "STATE_KV", key, path.read_bytes())
        except RuntimeError as e:
            raise SystemExit(f"live_state: put {key}: {e}")

    def close(self) -> None:
        self.kv.close()


def kv_loads(worker: conftest.Worker, etags: set[str]) -> tuple[int, int]:
    """The isolate's KV loads so far: (refreshes, of which swaps to one of `etags`)."""
    dec = json.JSONDecoder()
    refreshes = swaps = 0
    for line in worker.log_tail(10_000_000).splitlines():
        if '"event":"state_load"' in line:
            x = dec.raw_decode(line[line.index("{"):])[0]
            if x.get("source") == "kv":
                refreshes += 1
                swaps += x.get("result") == "ok" and x.get("etag") in etags
    return refreshes, swaps


def serving(worker: conftest.Worker) -> str | None:
    r = requests.get(worker.url("/v1/state:etag"), timeout=10)
    return r.json().get("etag") if r.status_code == 200 else None


def wait_serving(worker: conftest.Worker, etag: str) -> None:
    for _ in range(240):
        requests.post(worker.url("/v1/flags:resolve"), data=BODY, timeout=30)
        if serving(worker) == etag:
            return
        time.sleep(0.25)
    raise SystemExit(f"live_state: {etag} never served")


def swap_ms(worker: conftest.Worker, etag: str) -> int:
    dec = json.JSONDecoder()
    for _ in range(40):  # wrangler writes its log a moment later
        for line in reversed(worker.log_tail(20000).splitlines()):
            if '"event":"state_load"' in line:
                x = dec.raw_decode(line[line.index("{"):])[0]
                if x.get("etag") == etag and x.get("result") == "ok":
                    return int(x["duration_ms"])
        time.sleep(0.25)
    raise SystemExit(f"live_state: no ok load line for {etag}:\n{worker.log_tail(30)}")


def wrk(worker: conftest.Worker, seconds: int, lua: Path) -> tuple[float, float]:
    out = subprocess.run(["wrk", "-t1", "-c8", f"-d{seconds}s", "--latency", "-s", str(lua),
                          worker.url("/v1/flags:resolve")], capture_output=True, text=True, check=True,
                         timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    if "Non-2xx" in out:
        raise SystemExit(f"live_state: failed requests under load:\n{out}")
    return rps, p99


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default="build")
    ap.add_argument("--state5", required=True)
    ap.add_argument("--account5", required=True)
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()

    build = ROOT / args.bundle
    print("## Live state (wrangler dev, STATE_REFRESH_SECONDS=1, straight at the Worker's workerd)")
    print()
    print("| bundle file | raw bytes | gzip -9 bytes |")
    print("|---|---:|---:|")
    for f in ("index_bg.wasm", "index.js", "worker/shim.mjs"):
        data = (build / f).read_bytes()
        print(f"| {f} | {len(data)} | {len(gzip.compress(data, 9))} |")
    print()

    tmp = Path(tempfile.mkdtemp(prefix="edgeflag-bench-live-"))
    bundle = conftest.snapshot_bundle(build, tmp / "bundle")
    worker = conftest.launch_worker(tmp / "wrangler", {"STATE_REFRESH_SECONDS": "1"}, bundle=bundle)
    (tmp / "kv").mkdir()
    writer = KvWriter(worker, tmp / "kv")
    try:
        rows = []
        demo = ROOT / "src" / "demo_state.json"
        for i in range(2):
            e5 = push(worker, Path(args.state5), "--account", args.account5)
            wait_serving(worker, e5)
            rows.append(("5 MB state", Path(args.state5).stat().st_size, swap_ms(worker, e5)))
            ed = push(worker, demo)
            wait_serving(worker, ed)
            rows.append(("demo state", demo.stat().st_size, swap_ms(worker, ed)))
        print("| swapped in | state file bytes | load + verify + validate + swap, ms (in workerd) |")
        print("|---|---:|---:|")
        for name, size, ms in rows:
            print(f"| {name} | {size} | {ms} |")
        print()

        # Three demo-sized states and their pointers, written once. Three,
        # not two: a refresh is due 1 s after the last one was claimed, so
        # refreshes come a little less often than the writes and now and
        # then two writes fall between two refreshes; with A/B that reads
        # A→B→A, "unchanged", and the swap is lost. With A→B→C each refresh
        # after a write swaps.
        pointers = {}
        names = ("a", "b", "c")
        for name in names:
            state = json.loads(demo.read_text())
            if name != "a":
                state["flags"]["flags/welcome-banner"]["variants"][1]["value"]["message"] = f"Welcome, {name}!"
            path = tmp / f"{name}.json"
            path.write_text(json.dumps(state))
            subprocess.run([str(CLI), "convert", "--state", str(path), "--to", "envelope", "--out",
                            str(tmp / f"{name}.blob"), "--pointer", str(tmp / f"{name}.ptr")], check=True)
            pointers[name] = json.loads((tmp / f"{name}.ptr").read_text())["etag"]
            writer.put(f"state:blob:{pointers[name]}", tmp / f"{name}.blob")
        writer.put("state:current", tmp / "a.ptr")
        wait_serving(worker, pointers["a"])
        lua = tmp / "resolve.lua"
        lua.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                       f"wrk.body = [[{BODY}]]\n")


        def run(key_for: callable) -> dict:
            """wrk at 8 connections while the writer puts key_for(i) once a
            second, on a fixed schedule from one second before wrk starts."""
            stop = threading.Event()
            done: list[tuple[float, float]] = []  # (when it landed, its ms)
            before = kv_loads(worker, set(pointers.values()))

            def write() -> None:
                t0 = time.monotonic()
                for i in range(args.seconds + 30):  # bounded; stop ends it first
                    delay = t0 + i - time.monotonic()
                    if stop.wait(max(delay, 0)):
                        break
                    key, path = key_for(i)
                    ms = writer.put(key, path)
                    done.append((time.monotonic(), ms))

            t = threading.Thread(target=write)
            t.start()
            time.sleep(1.0)
            started = time.monotonic()
            try:
                rps, p99 = wrk(worker, args.seconds, lua)
            finally:
                ended = time.monotonic()
                stop.set()
                t.join(timeout=60)
            time.sleep(1.5)  # the last flip's refresh, and wrangler's log
            gaps = [b[0] - a[0] for a, b in zip(done, done[1:])]
            return {
                "rps": rps, "p99": p99, "writes": len(done),
                # Refreshes run on requests: a write after wrk stopped is never swapped in.
                "during": sum(started <= at <= ended for at, _ in done),
                "interval": sum(gaps) / len(gaps) if gaps else 0.0,
                "put_ms": sorted(ms for _, ms in done)[len(done) // 2] if done else 0.0,
                **dict(zip(("refreshes", "swaps"),
                           (b - a for a, b in zip(before, kv_loads(worker, set(pointers.values())))))),
            }

        control = run(lambda i: ("bench:unrelated", tmp / "a.ptr"))
        swaps = run(lambda i: ("state:current", tmp / f"{names[(i + 1) % 3]}.ptr"))
        print(f"| 8 connections, {args.seconds} s | req/s | p99 ms | KV writes (during wrk) | mean s between writes"
              " | median put ms | refreshes | swaps in the isolate |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, r in (("control (writer puts an unrelated key)", control),
                        ("pointer moving A→B→C→A every second", swaps)):
            print(f"| {name} | {r['rps']:.0f} | {r['p99']:.2f} | {r['writes']} ({r['during']}) | {r['interval']:.2f}"
                  f" | {r['put_ms']:.1f} | {r['refreshes']} | {r['swaps']} |")
        print(f"| ratio (swaps / control) | {swaps['rps'] / control['rps']:.2f} | {swaps['p99'] / control['p99']:.2f}"
              " | | | | | |")
        print()
        print(f"The pointer moved {swaps['writes']} times, every {swaps['interval']:.2f} s on average,"
              f" {swaps['during']} of them while wrk ran; the isolate refreshed {swaps['refreshes']} times and swapped"
              f" {swaps['swaps']} times (STATE_REFRESH_SECONDS=1: a refresh is due 1 s after the previous one was"
              " claimed, by a request, so refreshes come a little less often than once a second and none after wrk"
              " stops). Every swap is a full one: pointer read, blob read, sha256, decode, validation, swap, in the"
              " isolate's refresh.")
        print()
    finally:
        writer.close()
        worker.stop()


if __name__ == "__main__":
    main()
