"""Live-state figures for scripts/bench.sh (section `live`), printed as
markdown: the bundle size now, the time to swap the 5 MB state in inside
workerd (the refresh's own `duration_ms`: KV reads, sha256, decode,
complete validation, swap), and req/s and p99 at 8 connections while the
pointer flips between two states as fast as `wrangler kv key put` allows,
as ratios to a control run with the same writer putting an unrelated key
(so the wrangler CLI's CPU on this machine is in both runs and the ratio
is the cost of the swaps).

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
WRANGLER = ROOT / "node_modules" / ".bin" / "wrangler"
BODY = '{"clientSecret":"demo-secret","flags":[],"evaluationContext":{"targeting_key":"u","country":"SE"}}'


def kv_put(worker: conftest.Worker, key: str, path: Path) -> None:
    subprocess.run([str(WRANGLER), "kv", "key", "put", key, "--path", str(path), "--binding", "STATE_KV", "--local",
                    "--persist-to", str(worker.state_dir), "--config", str(worker.config_path)],
                   cwd=worker.config_path.parent, capture_output=True, check=True, timeout=120)


def push(worker: conftest.Worker, state: Path, *extra: str) -> str:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "push-state.sh"), str(state), "--local", "--keep-previous",
                          "--persist-to", str(worker.state_dir), "--config", str(worker.config_path), *extra],
                         cwd=ROOT, env={"EDGEFLAG_CLI": str(CLI), "PATH": "/usr/bin:/bin:/usr/local/bin"},
                         capture_output=True, text=True, check=True, timeout=300)
    return out.stdout.strip()


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

        # Two demo-sized states and their pointers, written once.
        b = json.loads(demo.read_text())
        b["flags"]["flags/welcome-banner"]["variants"][1]["value"]["message"] = "Welcome, B!"
        (tmp / "b.json").write_text(json.dumps(b))
        pointers = {}
        for name, path in (("a", demo), ("b", tmp / "b.json")):
            subprocess.run([str(CLI), "convert", "--state", str(path), "--to", "envelope", "--out",
                            str(tmp / f"{name}.blob"), "--pointer", str(tmp / f"{name}.ptr")], check=True)
            pointers[name] = json.loads((tmp / f"{name}.ptr").read_text())["etag"]
            kv_put(worker, f"state:blob:{pointers[name]}", tmp / f"{name}.blob")
        kv_put(worker, "state:current", tmp / "a.ptr")
        wait_serving(worker, pointers["a"])
        lua = tmp / "resolve.lua"
        lua.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                       f"wrk.body = [[{BODY}]]\n")

        def run(key_for: callable) -> tuple[float, float, int]:
            stop = threading.Event()
            writes = [0]

            def writer() -> None:
                i = 0
                while not stop.is_set():
                    key, path = key_for(i)
                    kv_put(worker, key, path)
                    writes[0] += 1
                    i += 1

            t = threading.Thread(target=writer)
            t.start()
            time.sleep(1.0)
            try:
                rps, p99 = wrk(worker, args.seconds, lua)
            finally:
                stop.set()
                t.join(timeout=120)
            return rps, p99, writes[0]

        control = run(lambda i: ("bench:unrelated", tmp / "a.ptr"))
        swaps = run(lambda i: ("state:current", tmp / ("b.ptr" if i % 2 == 0 else "a.ptr")))
        print(f"| 8 connections, {args.seconds} s | req/s | p99 ms | KV writes during the run |")
        print("|---|---:|---:|---:|")
        print(f"| control (writer puts an unrelated key) | {control[0]:.0f} | {control[1]:.2f} | {control[2]} |")
        print(f"| pointer flipping A/B (each write a swap) | {swaps[0]:.0f} | {swaps[1]:.2f} | {swaps[2]} |")
        print(f"| ratio (swaps / control) | {swaps[0] / control[0]:.2f} | {swaps[1] / control[1]:.2f} | |")
        print()
        print("Each `wrangler kv key put` takes seconds on this machine, so the pointer flips about every"
              f" {args.seconds / max(swaps[2], 1):.1f} s rather than every second; every flip is a full swap"
              " (pointer read, blob read, sha256, decode, validation, swap) in the isolate's refresh.")
        print()
    finally:
        worker.stop()


if __name__ == "__main__":
    main()
