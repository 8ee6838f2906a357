#!/usr/bin/env python3
"""Shows the keep-alive race in wrangler dev's proxy that made e2e POSTs fail
with a 503 "Your worker restarted mid-request" when nothing had restarted.

    .venv/bin/python scripts/wrangler_proxy_race.py [--from 4.970] [--to 5.000] [--step 0.001] [--routes a,b]

Needs a built bundle (scripts/build-worker.sh). Starts one `wrangler dev`
instance through the e2e harness, then for each idle gap in the range sends
one resolve after that long an idle pause, on three routes side by side:

  proxy-fresh      through wrangler's dev proxy (--port), a new client
                   connection per request: only the proxy's own pooled
                   connection to the Worker idles;
  proxy-keepalive  through the proxy over one reused client connection, as
                   most HTTP clients (and SDKs) do;
  direct-keepalive straight to the Worker's own workerd over one reused
                   connection;
  direct-fresh     straight to the Worker's own workerd, a new connection
                   per request: what the e2e tests do.

The proxy keeps a pooled connection to the Worker's workerd, and both ends
drop it after 5 s idle (kj's HttpClientSettings.idleTimeout and
HttpServerSettings.pipelineTimeout); the Worker's side closes first. A request
the proxy writes in between is lost before it reaches the Worker, and
wrangler 4.86's ProxyWorker reports that as a restart. A client that reuses
its own connection to workerd meets the same 5 s close. Expect failures at
gaps just under 5 s on every route but direct-fresh, where no connection is
ever reused. Bounded: one request per gap and route, about 5 s each, 10 s
timeout per request.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import conftest  # noqa: E402
import requests  # noqa: E402

BODY = {"clientSecret": "demo-secret", "evaluationContext": {"targeting_key": "race", "country": "SE"}}


def sweep(url: str, gaps: list[float], keepalive: bool, out: list) -> None:
    # workerd ignores a request's `Connection: close`: a fresh connection per
    # request takes closing it on the client side.
    session = requests.Session() if keepalive else conftest.fresh_session()
    session.post(url, json=BODY, timeout=10)  # the connection the next gap idles on
    for gap in gaps:
        time.sleep(gap)
        try:
            r = session.post(url, json=BODY, timeout=10)
            out.append((gap, r.status_code, r.text[:80] if r.status_code != 200 else ""))
        except requests.RequestException as e:
            out.append((gap, "error", str(e)[:80]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="lo", type=float, default=4.970)
    ap.add_argument("--to", dest="hi", type=float, default=5.000)
    ap.add_argument("--step", type=float, default=0.001)
    ap.add_argument("--routes", default="proxy-fresh,proxy-keepalive,direct-keepalive,direct-fresh")
    args = ap.parse_args()
    n = int(round((args.hi - args.lo) / args.step)) + 1
    if not 1 <= n <= 200 or args.lo <= 0:
        ap.error("the range must hold 1 to 200 positive gaps")
    gaps = [args.lo + i * args.step for i in range(n)]

    # A SIGTERM unwinds through the finally below, so wrangler is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="edgeflag-proxy-race-"))
    conftest._session_bundle = conftest.snapshot_bundle(REPO / "build", tmp / "bundle")
    worker = conftest.launch_worker(tmp / "worker")
    print(f"proxy {worker.proxy_url}, Worker's workerd {worker.base_url}; {n} gaps {args.lo:.3f}-{args.hi:.3f} s")
    routes = {
        "proxy-fresh": (worker.proxy_url, False),
        "proxy-keepalive": (worker.proxy_url, True),
        "direct-keepalive": (worker.base_url, True),
        "direct-fresh": (worker.base_url, False),
    }
    routes = {name: routes[name] for name in args.routes.split(",")}
    results: dict[str, list] = {name: [] for name in routes}
    try:
        threads = [
            threading.Thread(target=sweep, args=(base + "/v1/flags:resolve", gaps, keepalive, results[name]))
            for name, (base, keepalive) in routes.items()
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        log = worker.log_path.read_text(errors="replace")
    finally:
        worker.stop()
    for route, rows in results.items():
        bad = [r for r in rows if r[1] != 200]
        print(f"{route:16} {len(rows) - len(bad)}/{len(rows)} answered 200")
        for gap, status, text in bad:
            print(f"{'':16} after {gap:.3f} s idle: {status} {text!r}")
    print(f"reloads in wrangler's log: {log.count('Reloading local server')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
