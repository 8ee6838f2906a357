#!/usr/bin/env python3
"""The sticky resolve's cost by KV layout, for scripts/bench.sh (section `sticky`).

  sticky.py seed --units N --out seed.json
      KV entries for `wrangler kv bulk put`: N units with the demo state's
      pricing experiment stored in edgeflag's layout (value + {"v"} metadata)
      and N others in the reference worker's (value only).
  sticky.py run --port PORT --pid PID --units N --conns C
      Resolves the pricing experiment for N units of each kind (each unit
      once, so every row reads what was seeded) over C
      keep-alive connections, plus a flag without sticky data and units
      with nothing stored; prints one markdown row per kind.

Standard library only; every request has a timeout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time

FLAG = "flags/pricing-experiment"
PLAIN_FLAG = "flags/welcome-banner"
MAT = "materializations/pricing-experiment"
RULE = "flags/pricing-experiment/rules/premium-ab"
VARIANT = "flags/pricing-experiment/variants/discount"
SECRET = "demo-secret"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# kind -> (flag, unit prefix, description)
KINDS = {
    "plain": (PLAIN_FLAG, "plain", "flag without sticky data (no KV read)"),
    "fresh": (FLAG, "fresh", "sticky flag, nothing stored (1 list)"),
    "meta": (FLAG, "meta", "sticky flag, edgeflag layout (1 list)"),
    "ref": (FLAG, "ref", "sticky flag, reference layout (1 list + 1 value read)"),
}


def enc(s: str) -> str:
    return s.replace("%", "%25").replace(":", "%3A")


def seed(units: int, out: str) -> None:
    entries = []
    for i in range(units):
        k = f"mat:{enc(f'meta-{i}')}:{enc(MAT)}:{enc(RULE)}"
        entries.append({"key": k, "value": VARIANT, "metadata": {"v": VARIANT}})
        k = f"mat:{enc(f'ref-{i}')}:{enc(MAT)}:{enc(RULE)}"
        entries.append({"key": k, "value": VARIANT})
    with open(out, "w", encoding="utf-8") as f:
        json.dump(entries, f)


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def body(flag: str, unit: str) -> bytes:
    # Outside the segment on purpose: only a stored assignment matches.
    ctx = {"targeting_key": unit, "plan": "free", "country": "SE"}
    return json.dumps({"flags": [flag], "clientSecret": SECRET, "apply": False, "evaluationContext": ctx}).encode()


def run_kind(port: int, pid: int, kind: str, units: int, conns: int) -> dict:
    flag, prefix, _ = KINDS[kind]
    next_i = iter(range(units))
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []

    def loop() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine: list[float] = []
        try:
            while True:
                with lock:
                    i = next(next_i, None)
                if i is None:
                    break
                t0 = time.perf_counter()
                conn.request("POST", "/v1/flags:resolve", body(flag, f"{prefix}-{i}"), {"content-type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                mine.append((time.perf_counter() - t0) * 1000)
                if resp.status != 200:
                    failures.append(f"HTTP {resp.status}")
                elif kind in ("meta", "ref"):
                    got = json.loads(data)["resolvedFlags"][0]
                    if got.get("variant") != VARIANT:
                        failures.append(f"{prefix}-{i}: {got}")
        finally:
            conn.close()
            with lock:
                latencies.extend(mine)

    c0 = cpu_ticks(pid)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=loop) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    wall = time.perf_counter() - t0
    cpu_us = (cpu_ticks(pid) - c0) * 1e6 / CLK_TCK
    lat = sorted(latencies)
    n = len(lat)
    return {
        "n": n,
        "rps": n / wall if wall > 0 else 0,
        "p50": statistics.median(lat) if lat else 0,
        "p99": lat[min(n - 1, int(n * 0.99))] if lat else 0,
        "cpu": cpu_us / n if n else 0,
        "failures": failures,
    }


def run(port: int, pid: int, units: int, conns: int) -> int:
    # Warm-up (JIT, connections), unmeasured: units of its own.
    for i in range(50):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("POST", "/v1/flags:resolve", body(FLAG, f"warm-{i}"), {"content-type": "application/json"})
        c.getresponse().read()
        c.close()
    print("| what is resolved | requests | req/s | p50 ms | p99 ms | workerd CPU µs/req | wrong or failed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    bad = 0
    for kind, (_, _, what) in KINDS.items():
        r = run_kind(port, pid, kind, units, conns)
        bad += len(r["failures"])
        print(f"| {what} | {r['n']} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['cpu']:.0f} | {len(r['failures'])} |")
        for f in r["failures"][:3]:
            print(f"> {kind}: {f}", file=sys.stderr)
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seed")
    s.add_argument("--units", type=int, required=True)
    s.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--pid", type=int, required=True)
    r.add_argument("--units", type=int, required=True)
    r.add_argument("--conns", type=int, default=8)
    a = ap.parse_args()
    if a.cmd == "seed":
        seed(a.units, a.out)
        return 0
    return run(a.port, a.pid, a.units, a.conns)


if __name__ == "__main__":
    sys.exit(main())
