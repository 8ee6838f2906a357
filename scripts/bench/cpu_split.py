"""Where a resolve's CPU goes in the isolate, roughly: workerd CPU per
request for GET /healthz (routing, a JSON answer, no body, no resolve)
against POST /v1/flags:resolve (one flag, demo state), on one `wrangler dev`
instance of build/, wrk -t1 -c8 straight at its workerd, alternating rounds.
The difference is the resolve route's own cost (body read, request JSON,
resolve, response JSON, telemetry recording); the core resolve with its
JSON is about 10 µs natively (bench.sh cold's breakdown).

    .venv/bin/python scripts/bench/cpu_split.py [--rounds 3] [--seconds 6]

Needs wrk (`bash scripts/setup.sh --bench`) and a built build/.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import conftest  # noqa: E402

BODY = ('{"flags":["flags/welcome-banner"],"clientSecret":"demo-secret","apply":false,'
        '"evaluationContext":{"country":"SE","targeting_key":"user-1"}}')


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=6)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgeflag-cpu-split-"))
    bundle = conftest.snapshot_bundle(ROOT / "build", tmp / "bundle")
    worker = conftest.launch_worker(tmp / "wrangler", bundle=bundle)
    try:
        port = int(worker.base_url.rsplit(":", 1)[1])
        pids = [p for p in conftest.live_group_members(worker.proc.pid) if port in conftest._listening_ports(p)]
        if not pids:
            raise SystemExit("cpu_split: no workerd listening on the worker's port")
        tick = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:
            fields = Path(f"/proc/{pids[0]}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick

        lua = tmp / "post.lua"
        lua.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [[{BODY}]]\n')
        routes = (("GET /healthz", [f"{worker.base_url}/healthz"]),
                  ("POST /v1/flags:resolve", ["-s", str(lua), f"{worker.base_url}/v1/flags:resolve"]))
        print("| round | route | req/s | workerd CPU µs/req |")
        print("|---:|---|---:|---:|")
        per: dict[str, list[float]] = {}
        for rnd in range(1, args.rounds + 1):
            for name, wrk_args in routes:
                before = cpu()
                out = subprocess.run(["wrk", "-t1", "-c8", f"-d{args.seconds}s", *wrk_args],
                                     capture_output=True, text=True, check=True, timeout=args.seconds + 60).stdout
                used = cpu() - before
                n = int(next(line for line in out.splitlines() if "requests in" in line).split()[0])
                per.setdefault(name, []).append(used / n * 1e6)
                print(f"| {rnd} | {name} | {n / args.seconds:.0f} | {used / n * 1e6:.0f} |")
        diffs = [r - h for h, r in zip(per[routes[0][0]], per[routes[1][0]])]
        print()
        print(f"resolve route minus /healthz, per round: {', '.join(f'{d:.0f}' for d in diffs)} µs")
    finally:
        worker.stop()


if __name__ == "__main__":
    main()
