#!/usr/bin/env python3
"""Tail latency with every request on record, for scripts/bench.sh (section `tail`).

  tail.py run --port PORT --conns C --secs S --head H --tail T
              [--timeline FILE] [--log FILE --log-out FILE] [--pid PID]
      C keep-alive connections, each a closed loop (send, read the whole
      response, send the next) for S seconds, every request with a fresh
      targeting key (H + n + T). Every request's start and end
      (time.monotonic_ns, plus the wall-clock offset) goes to FILE when
      given. Prints one JSON line: requests, req/s, p50/p99/p99.9/max ms,
      requests over 100 and 250 ms, non-200 answers, the workerd CPU per
      request (with --pid) and the worst stall windows (periods in which
      no request completed).
      With --log, new lines of that file (wrangler's output) are copied to
      --log-out prefixed by the same clock, so stalls can be lined up with
      what the Worker logged (queue batches, consumer lines).

Unlike wrk's summary, nothing is sampled or corrected away: a request that
waited two seconds is in the file as two seconds. Closed loops still mean a
stalled isolate delays the requests that would have been sent meanwhile
(coordinated omission); the stall windows show how long nothing completed.
Standard library only; every request has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time

TIMEOUT_S = 10.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def percentile(sorted_ms: list[float], p: float) -> float:
    if not sorted_ms:
        return 0.0
    k = min(len(sorted_ms) - 1, max(0, int(round(p / 100.0 * len(sorted_ms) + 0.5)) - 1))
    return sorted_ms[k]


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        elif name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
            length = -1
    if length > 0:
        await reader.readexactly(length)
    elif length < 0:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def connection(port: int, head: str, tail: str, deadline: int, conn: int, out: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    try:
        while time.monotonic_ns() < deadline:
            body = f"{head}c{conn}-{n}{tail}".encode()
            n += 1
            req = (
                b"POST /v1/flags:resolve HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            start = time.monotonic_ns()
            writer.write(req)
            try:
                status = await asyncio.wait_for(read_response(reader), TIMEOUT_S)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
                out.append((start, time.monotonic_ns(), 0))
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            out.append((start, time.monotonic_ns(), status))
    finally:
        writer.close()


def follow(path: str, dest: str, stop: threading.Event) -> None:
    """Copies lines appended to `path` into `dest`, each with the monotonic ms it was seen."""
    with open(path, "rb") as src, open(dest, "w", encoding="utf-8") as dst:
        src.seek(0, os.SEEK_END)
        buf = b""
        while not stop.is_set():
            chunk = src.read()
            if not chunk:
                time.sleep(0.005)
                continue
            buf += chunk
            *lines, buf = buf.split(b"\n")
            t = time.monotonic_ns() / 1e6
            for line in lines:
                dst.write(f"{t:.1f} {line.decode(errors='replace')}\n")


def stalls(records: list, top: int = 3) -> list[dict]:
    """The longest periods in which no request completed."""
    ends = sorted(r[1] for r in records)
    gaps = sorted(((b - a, a) for a, b in zip(ends, ends[1:])), reverse=True)[:top]
    t0 = min((r[0] for r in records), default=0)
    return [{"at_ms": round((a - t0) / 1e6, 1), "ms": round(g / 1e6, 1)} for g, a in gaps]


async def run(args: argparse.Namespace) -> dict:
    deadline = time.monotonic_ns() + int(args.secs * 1e9)
    records: list = []
    c0 = cpu_ticks(args.pid) if args.pid else 0
    t0 = time.monotonic_ns()
    await asyncio.gather(
        *(connection(args.port, args.head, args.tail, deadline, i, records) for i in range(args.conns))
    )
    elapsed = (time.monotonic_ns() - t0) / 1e9
    c1 = cpu_ticks(args.pid) if args.pid else 0
    ms = sorted((e - s) / 1e6 for s, e, _ in records)
    if args.timeline:
        offset = time.time_ns() - time.monotonic_ns()
        with open(args.timeline, "w", encoding="utf-8") as f:
            f.write(f"# start_ms end_ms status (monotonic; add {offset / 1e6:.1f} for Unix ms)\n")
            for s, e, st in sorted(records):
                f.write(f"{s / 1e6:.3f} {e / 1e6:.3f} {st}\n")
    n = len(ms)
    return {
        "requests": n,
        "rps": round(n / elapsed, 1) if elapsed else 0,
        "p50": round(percentile(ms, 50), 2),
        "p99": round(percentile(ms, 99), 2),
        "p999": round(percentile(ms, 99.9), 2),
        "max": round(ms[-1], 2) if ms else 0,
        "over100": sum(1 for x in ms if x > 100),
        "over250": sum(1 for x in ms if x > 250),
        "non200": sum(1 for r in records if r[2] != 200),
        "cpu_us": round((c1 - c0) * 1e6 / CLK_TCK / n, 1) if args.pid and n else None,
        "stalls": stalls(records),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--conns", type=int, default=8)
    r.add_argument("--secs", type=float, default=10)
    r.add_argument("--head", required=True)
    r.add_argument("--tail", required=True)
    r.add_argument("--pid", type=int, default=0)
    r.add_argument("--timeline")
    r.add_argument("--log")
    r.add_argument("--log-out")
    args = p.parse_args()
    stop = threading.Event()
    follower = None
    if args.log and args.log_out:
        follower = threading.Thread(target=follow, args=(args.log, args.log_out, stop), daemon=True)
        follower.start()
    try:
        result = asyncio.run(run(args))
    finally:
        stop.set()
        if follower:
            follower.join(timeout=2)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
