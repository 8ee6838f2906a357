"""Telemetry end to end: never lost, never mixed, never double-counted.

Real workerd (`wrangler dev` with its local Queue and KV) in front of a
flag-log sink run here, in-process, on 127.0.0.1. Every figure asserted is
derived from what the test itself sent and received:

* the resolves' responses say which flags resolved with which reason, which
  were applied (`shouldApply`) and under which `resolveId`;
* the sink records every POST the queue consumer makes, and what it answered;
* `GET /metrics` is the cumulative snapshot the MetricsAggregator Durable
  Object mirrors to KV; `GET /metrics?consistent=1` asks the object.

Nothing is retried on the client side: a request that fails in transport
would make the expected counts unknowable, so it fails the test instead.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

from conftest import DEFAULT_SECRETS, REQUEST_TIMEOUT, Bundle, Worker, assert_error, fresh_session, launch_worker, poll

RESOLVE = "/v1/flags:resolve"
WEB_SECRET = "demo-secret"
STG_SECRET = "demo-staging-secret"
BAD_SECRET = "no-such-secret"
CREDENTIAL = {
    WEB_SECRET: "clients/demo/credentials/web",
    STG_SECRET: "clients/demo/credentials/staging",
}
METRICS_AUTH = {"Authorization": f"ClientSecret {WEB_SECRET}"}

# Bounds (seconds / counts).
LOAD_TIMEOUT = 120  # the whole load phase of one test
DRAIN_TIMEOUT = 90  # queue drained into KV and the sink
POLL_INTERVAL = 1.0
SETTLE_SECONDS = 3.0  # after the expected figures are reached: nothing more may arrive
SINK_STOP_TIMEOUT = 10


# --- The flag-log sink -----------------------------------------------------------


@dataclass
class Post:
    status: int  # what the sink answered
    path: str
    content_type: str
    body: bytes
    headers: str  # every request header, as received


class Sink:
    """A flag-log endpoint on 127.0.0.1: records every POST; answers 500 to
    the first `fail_first` of them, 200 to the rest."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.posts: list[Post] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = self._read_body()
                with sink._lock:
                    status = 500 if len(sink.posts) < sink.fail_first else 200
                    sink.posts.append(Post(status, self.path, self.headers.get("Content-Type", ""), body, str(self.headers)))
                reply = b"{}" if status == 200 else b'{"error":"sink told to fail"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def _read_body(self) -> bytes:
                if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
                    length = int(self.headers.get("Content-Length") or 0)
                    return self.rfile.read(length) if length > 0 else b""
                chunks = []
                for _ in range(100_000):  # bounded: a body is far fewer chunks
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()  # the CRLF after the last chunk
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(chunks)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/clientFlagLogs:write"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    def snapshot(self) -> list[Post]:
        with self._lock:
            return list(self.posts)

    def bodies(self) -> list[bytes]:
        return [p.body for p in self.snapshot()]

    def headers(self) -> list[str]:
        return [p.headers for p in self.snapshot()]

    def accepted(self) -> list[dict]:
        """Bodies of the POSTs the sink answered 200, decoded."""
        return [json.loads(p.body) for p in self.snapshot() if p.status == 200]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(SINK_STOP_TIMEOUT)
        if self._thread.is_alive():
            raise RuntimeError("sink thread did not stop")


# --- Load -------------------------------------------------------------------------


@dataclass
class Sent:
    key: str
    secret: str
    status: int
    body: dict


@dataclass
class Plan:
    """What to send: (targeting key, client secret, evaluation context)."""

    items: list[tuple[str, str, dict]] = field(default_factory=list)


def make_plan(n_web: int, n_stg: int, n_bad: int) -> Plan:
    """Distinct targeting keys `web-N` / `stg-N` / `bad-N`, interleaved;
    contexts vary so that several reasons, rules and the sticky (KV-reading,
    so awaiting) pricing rule all occur under concurrency. Failed resolves
    are placed in the first half: a later successful resolve must carry them
    to the Queue (see test_failed_resolves_alone_reach_metrics)."""
    countries = ["SE", "US", "NO", "DE", "FI"]
    versions = ["1.4.0", "2.0.0", "2.7.1"]

    def context(key: str, i: int) -> dict:
        ctx: dict[str, Any] = {"targeting_key": key, "country": countries[i % 5], "app": {"version": versions[i % 3]}}
        if i % 4 == 0:
            ctx["plan"] = "premium"
        if i % 8 == 0:
            ctx["email"] = f"{key}@example.com"
        return ctx

    good: list[tuple[str, str, dict]] = []
    for i in range(max(n_web, n_stg)):
        if i < n_web:
            key = f"web-{i}"
            good.append((key, WEB_SECRET, context(key, i)))
        if i < n_stg:
            key = f"stg-{i}"
            good.append((key, STG_SECRET, context(key, i + 1)))
    plan = Plan(list(good))
    half = len(good) // 2
    for j in range(n_bad):
        key = f"bad-{j}"
        pos = (j + 1) * half // (n_bad + 1)
        plan.items.insert(pos + j, (key, BAD_SECRET, {"targeting_key": key}))
    return plan


def run_load(worker: Worker, plan: Plan, connections: int) -> tuple[list[Sent], float]:
    """Sends the plan from `connections` threads, each with its own
    keep-alive session. Returns the results in plan order and the wall time."""
    results: list[Sent | None] = [None] * len(plan.items)
    errors: list[str] = []
    next_index = 0
    lock = threading.Lock()
    deadline = time.monotonic() + LOAD_TIMEOUT

    def client() -> None:
        nonlocal next_index
        with fresh_session() as s:
            for _ in range(len(plan.items)):  # bounded: at most every item
                with lock:
                    i = next_index
                    next_index += 1
                if i >= len(plan.items) or errors or time.monotonic() > deadline:
                    return
                key, secret, ctx = plan.items[i]
                try:
                    r = s.post(
                        worker.url(RESOLVE),
                        json={"clientSecret": secret, "evaluationContext": ctx, "apply": False},
                        timeout=REQUEST_TIMEOUT,
                    )
                    results[i] = Sent(key, secret, r.status_code, r.json())
                except (requests.RequestException, ValueError) as e:
                    with lock:
                        errors.append(f"{key}: {e!r}")
                    return

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 1)
    elapsed = time.monotonic() - t0
    assert not any(t.is_alive() for t in threads), f"load did not finish within {LOAD_TIMEOUT}s"
    assert not errors, f"{len(errors)} resolves failed in transport (expected counts unknowable): {errors[:5]}"
    missing = [plan.items[i][0] for i, r in enumerate(results) if r is None]
    assert not missing, f"{len(missing)} planned resolves were not sent (timeout?): {missing[:5]}"
    return [r for r in results if r is not None], elapsed


# --- Expectations from the responses -------------------------------------------------


@dataclass
class Expected:
    requests: int
    ok: list[Sent]
    failed: list[Sent]
    reasons: Counter  # reason -> count, failed requests as RESOLVE_REASON_ERROR
    by_credential: Counter
    # resolveId -> (credential, targeting key, {(flag, variant, rule)} applied)
    applied: dict[str, tuple[str, str, frozenset]]


def applied_flags(resolved: list[dict]) -> frozenset:
    return frozenset(
        (f["flag"], f.get("variant", ""), f.get("assignmentOrigin", "")) for f in resolved if f.get("shouldApply")
    )


def expectations(sent: list[Sent]) -> Expected:
    ok = [s for s in sent if s.status == 200]
    failed = [s for s in sent if s.status != 200]
    for s in failed:
        assert s.secret == BAD_SECRET and s.status == 401, f"unplanned failure {s.key}: {s.status} {s.body}"
    for s in ok:
        assert s.secret != BAD_SECRET, s
    reasons: Counter = Counter()
    applied: dict[str, tuple[str, str, frozenset]] = {}
    for s in ok:
        flags = s.body["resolvedFlags"]
        assert flags, f"{s.key}: no flags resolved: {s.body}"
        reasons.update(f["reason"] for f in flags)
        rid = s.body["resolveId"]
        assert rid not in applied, f"resolveId {rid} returned twice"
        # FORCE_APPLY=true (the default): every resolve is applied.
        assert applied_flags(flags), f"{s.key}: nothing applied: {s.body}"
        applied[rid] = (CREDENTIAL[s.secret], s.key, applied_flags(flags))
    reasons["RESOLVE_REASON_ERROR"] += len(failed)
    return Expected(
        requests=len(sent),
        ok=ok,
        failed=failed,
        reasons=reasons,
        by_credential=Counter(CREDENTIAL[s.secret] for s in ok),
        applied=applied,
    )


# --- /metrics -----------------------------------------------------------------------

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Metrics:
    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset], float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = SAMPLE.match(line)
            assert m, f"unparsable metrics line: {line!r}"
            labels = frozenset(LABEL.findall(m.group(2) or ""))
            self.samples[(m.group(1), labels)] = float(m.group(3))

    def get(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when the series is absent."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def series(self, name: str) -> dict[frozenset, float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}

    def resolves_by_reason(self) -> Counter:
        out: Counter = Counter()
        for labels, v in self.series("confidence_resolves_total").items():
            d = dict(labels)
            assert d.get("resolver_id") == "edgeflag", d
            if v:
                out[d["reason"]] = int(v)
        return out


def get_metrics(http: requests.Session, worker: Worker, consistent: bool = False) -> Metrics:
    path = "/metrics?consistent=1" if consistent else "/metrics"
    r = http.get(worker.url(path), headers=METRICS_AUTH, timeout=REQUEST_TIMEOUT)
    assert r.status_code == 200, r.text
    return Metrics(r.text)


# --- Sink bodies ------------------------------------------------------------------------


def assigned_entries(bodies: list[dict]) -> dict[str, list[dict]]:
    """resolveId -> every flagAssigned entry carrying it, across all bodies."""
    out: dict[str, list[dict]] = defaultdict(list)
    for b in bodies:
        for fa in b.get("flagAssigned", []):
            out[fa["resolveId"]].append(fa)
    return out


def entry_view(fa: dict) -> tuple[str, set[str], frozenset]:
    """(credential, targeting keys, {(flag, variant, rule)}) of an entry."""
    flags = fa.get("flags", [])
    return (
        fa.get("clientInfo", {}).get("clientCredential", ""),
        {f.get("targetingKey", "") for f in flags},
        frozenset((f["flag"], f.get("assignmentInfo", {}).get("variant", ""), f.get("rule", "")) for f in flags),
    )


def telemetry_sums(bodies: list[dict]) -> tuple[Counter, int]:
    """Confidence telemetryData over all bodies: resolves by reason, latency count."""
    reasons: Counter = Counter()
    latency = 0
    for b in bodies:
        td = b.get("telemetryData") or {}
        for rate in td.get("resolveRate", []):
            reasons[rate["reason"]] += int(rate.get("count", 0))
        latency += int((td.get("resolveLatency") or {}).get("count", 0))
    return reasons, latency


def flag_resolve_counts(bodies: list[dict]) -> Counter:
    """flag -> resolves counted in flagResolveInfo (over its variants)."""
    out: Counter = Counter()
    for b in bodies:
        for info in b.get("flagResolveInfo", []):
            for v in info.get("variantResolveInfo", []):
                out[info["flag"]] += int(v.get("count", 0))
    return out


def wait_drained(
    http: requests.Session, worker: Worker, sink: Sink, exp: Expected
) -> tuple[Metrics, Metrics, list[dict], float]:
    """Polls (bounded) until /metrics (the KV copy) counts every resolve and
    the sink has accepted every applied resolveId; then waits
    SETTLE_SECONDS more and returns the final state, KV copy and the
    aggregator's own (the caller asserts nothing moved on)."""
    t0 = time.monotonic()
    deadline = t0 + DRAIN_TIMEOUT
    want_ids = set(exp.applied)
    m = get_metrics(http, worker)
    bodies = sink.accepted()
    for _ in range(int(DRAIN_TIMEOUT / POLL_INTERVAL) + 1):
        got_ids = set(assigned_entries(bodies))
        counted = sum(m.resolves_by_reason().values())
        if counted >= sum(exp.reasons.values()) and want_ids <= got_ids:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(POLL_INTERVAL)
        m = get_metrics(http, worker)
        bodies = sink.accepted()
    drained_after = time.monotonic() - t0
    time.sleep(SETTLE_SECONDS)
    return get_metrics(http, worker), get_metrics(http, worker, consistent=True), sink.accepted(), drained_after


def assert_metrics_exact(m: Metrics, exp: Expected) -> None:
    got = m.resolves_by_reason()
    assert got == exp.reasons, (
        f"/metrics resolves by reason {dict(got)} != expected {dict(exp.reasons)} "
        f"(x{sum(got.values()) / max(1, sum(exp.reasons.values())):.3f} of reality)"
    )
    lat = m.get("confidence_resolve_latency_microseconds_count", resolver_id="edgeflag")
    assert lat == exp.requests, f"latency _count {lat} != {exp.requests} resolve requests"
    assert m.get("confidence_resolve_latency_microseconds_bucket", resolver_id="edgeflag", le="+Inf") == exp.requests
    for cred, n in exp.by_credential.items():
        got_n = m.get("edgeflag_credential_resolves_total", credential=cred)
        assert got_n == n, f"credential {cred}: {got_n} resolves in /metrics, {n} sent"
    other = {dict(k)["credential"]: v for k, v in m.series("edgeflag_credential_resolves_total").items()}
    assert set(other) <= set(exp.by_credential), f"resolves attributed to unknown credentials: {other}"
    assert m.get("edgeflag_requests_total", route="resolve", status="2xx") == len(exp.ok)
    assert m.get("edgeflag_requests_total", route="resolve", status="4xx") == len(exp.failed)
    assert m.get("edgeflag_requests_total", route="resolve", status="5xx") == 0
    assert m.get("edgeflag_flag_assigned_events_total") == len(exp.ok)
    for what in ("assign_events", "schemas", "checkpoints", "unattributed"):
        assert m.get("edgeflag_dropped_total", what=what) == 0, f"dropped {what}"
    assert m.get("edgeflag_malformed_messages_total") == 0


def assert_sink_attribution(bodies: list[dict], exp: Expected) -> dict[str, list[dict]]:
    """Every applied resolve reached the sink, with its flags, its own
    targeting key and its own client; nothing else did. Returns the entries."""
    entries = assigned_entries(bodies)
    unknown = set(entries) - set(exp.applied)
    assert not unknown, f"{len(unknown)} resolveIds at the sink that no response returned: {sorted(unknown)[:5]}"
    missing = set(exp.applied) - set(entries)
    assert not missing, (
        f"{len(missing)} of {len(exp.applied)} applied resolves never reached the sink: {sorted(missing)[:5]}"
    )
    for rid, fas in entries.items():
        cred, key, flags = exp.applied[rid]
        for fa in fas:
            got_cred, got_keys, got_flags = entry_view(fa)
            assert got_keys == {key}, f"{rid}: targeting keys {got_keys}, sent {key}"
            assert got_cred == cred, f"{rid} ({key}): attributed to {got_cred}, resolved with {cred}"
            prefix = key.split("-")[0]
            assert got_cred == {"web": CREDENTIAL[WEB_SECRET], "stg": CREDENTIAL[STG_SECRET]}[prefix], fa
            assert fa["clientInfo"].get("client") == "clients/demo", fa
            assert got_flags == flags, f"{rid} ({key}): sink flags {sorted(got_flags)} != applied {sorted(flags)}"
    return entries


# --- Instances -------------------------------------------------------------------------


QUEUE_LINE = re.compile(r"QUEUE edgeflag-flag-logs (\d+)/(\d+)")


def queue_batches(worker: Worker) -> list[tuple[int, int]]:
    """(acked, delivered) per consumer invocation, from wrangler's log; for
    the report only (the log format is wrangler's, not ours)."""
    try:
        text = worker.log_path.read_text(errors="replace")
    except OSError:
        return []
    return [(int(a), int(b)) for a, b in QUEUE_LINE.findall(text)]


@dataclass
class LoadRun:
    exp: Expected
    sent_seconds: float
    drained_seconds: float
    metrics: Metrics  # GET /metrics: the KV copy
    consistent: Metrics  # GET /metrics?consistent=1: the aggregator itself
    bodies: list[dict]
    posts: list[Post]
    batches: list[tuple[int, int]]
    log_text: str


def load_through_sink(
    tmp: Path,
    sink: Sink,
    web: int,
    stg: int,
    bad: int,
    connections: int,
    edit_config: Callable[[str], str] | None = None,
    vars: dict[str, str] | None = None,
) -> LoadRun:
    """A fresh instance delivering to `sink`, loaded with make_plan(web, stg,
    bad) from `connections` connections and drained; the instance and the
    sink are stopped before this returns, so the figures are final."""
    worker: Worker | None = None
    try:
        worker = launch_worker(tmp, vars={"FLAG_LOGS_ENDPOINT": sink.url, **(vars or {})}, edit_config=edit_config)
        sent, sent_seconds = run_load(worker, make_plan(web, stg, bad), connections)
        exp = expectations(sent)
        with fresh_session() as http:
            metrics, consistent, bodies, drained_seconds = wait_drained(http, worker, sink, exp)
        return LoadRun(
            exp=exp,
            sent_seconds=sent_seconds,
            drained_seconds=drained_seconds,
            metrics=metrics,
            consistent=consistent,
            bodies=bodies,
            posts=sink.snapshot(),
            batches=queue_batches(worker),
            log_text=worker.log_path.read_text(errors="replace"),
        )
    finally:
        try:
            if worker is not None:
                worker.stop()
        finally:
            sink.stop()


# Test 1's load: 2 x 1,024 distinct targeting keys + 16 failed resolves.
LOAD_WEB = 1024
LOAD_STG = 1024
LOAD_BAD = 16
LOAD_CONNECTIONS = 32


@pytest.fixture(scope="module")
def load_run(built_worker: Bundle, tmp_path_factory: pytest.TempPathFactory) -> LoadRun:
    """Test 1's load, run once for the tests that read its figures."""
    tmp = tmp_path_factory.mktemp("telemetry-load")
    return load_through_sink(tmp, Sink(), LOAD_WEB, LOAD_STG, LOAD_BAD, LOAD_CONNECTIONS)


def test_load_telemetry_is_exact(load_run: LoadRun) -> None:
    """>= 2,000 resolves from 32 connections, two clients, some failing:
    /metrics counts each exactly once, the sink gets every applied resolve
    exactly once under its own client, in far fewer queue messages than
    requests."""
    run, exp = load_run, load_run.exp
    m = run.metrics
    queue_messages = int(m.get("edgeflag_checkpoints_total"))
    sends_ok = int(m.get("edgeflag_queue_sends_total", result="ok"))
    print(
        f"\nload: {exp.requests} resolve requests ({len(exp.ok)} ok, {len(exp.failed)} failed) "
        f"from {LOAD_CONNECTIONS} connections in {run.sent_seconds:.1f}s "
        f"({exp.requests / run.sent_seconds:.0f}/s); drained {run.drained_seconds:.1f}s later\n"
        f"queue messages (checkpoints applied): {queue_messages}; queue sends ok so far: {sends_ok} "
        f"(the last send's count rides with a later checkpoint); "
        f"requests per message: {exp.requests / max(1, queue_messages):.1f}\n"
        f"consumer invocations: {len(run.batches)}; sink POSTs: {len(run.posts)}\n"
        f"resolves by reason: {dict(exp.reasons)}"
    )
    assert exp.requests >= 2000 and len(exp.failed) == LOAD_BAD
    assert {s.secret for s in exp.ok} == {WEB_SECRET, STG_SECRET}

    # /metrics: exact, by reason, by credential, by route; the KV copy is
    # the aggregator's state.
    assert_metrics_exact(m, exp)
    assert_metrics_exact(run.consistent, exp)
    assert m.get("edgeflag_duplicate_checkpoints_total") == 0, "no delivery failed, yet a checkpoint came twice"
    assert m.get("edgeflag_queue_sends_total", result="failed") == 0

    # The sink: every applied resolve exactly once, right flags, right client.
    assert all(p.status == 200 for p in run.posts)
    assert all(p.content_type.startswith("application/json") for p in run.posts), {p.content_type for p in run.posts}
    entries = assert_sink_attribution(run.bodies, exp)
    dups = {rid: len(fas) for rid, fas in entries.items() if len(fas) != 1}
    assert not dups, f"{len(dups)} resolveIds delivered more than once: {list(dups.items())[:5]}"
    # Delivery counted once per POST the sink saw.
    assert m.get("edgeflag_deliveries_total", destination="endpoint", result="ok") == len(run.posts)
    assert m.get("edgeflag_deliveries_total", destination="endpoint", result="failed") == 0

    # The aggregate telemetry the sink got adds up exactly as well.
    reasons, latency = telemetry_sums(run.bodies)
    assert reasons == exp.reasons, f"sink telemetryData reasons {dict(reasons)} != {dict(exp.reasons)}"
    assert latency == exp.requests
    per_flag = flag_resolve_counts(run.bodies)
    resolved_flags = Counter(f["flag"] for s in exp.ok for f in s.body["resolvedFlags"])
    assert per_flag == resolved_flags, f"flagResolveInfo {dict(per_flag)} != responses {dict(resolved_flags)}"

    # Batched: far fewer queue messages than requests.
    assert 0 < queue_messages <= exp.requests / 20, (
        f"{queue_messages} queue messages for {exp.requests} requests"
    )
    assert sends_ok <= queue_messages


# Test 2: the sink fails the first FAIL_FIRST POSTs. The consumer tries a
# batch 3 times in one invocation, so the first invocation fails entirely
# (the Queue redelivers its messages) and the second succeeds on its 3rd try.
FAIL_FIRST = 5
RECOVERY_WEB = 150
RECOVERY_STG = 150
RECOVERY_BAD = 4
RECOVERY_CONNECTIONS = 8


def test_failing_sink_recovers_without_double_counting(
    built_worker: Bundle, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Guaranteed: every applied resolve reaches the sink at least once
    (delivery is at-least-once: a batch the sink failed is sent again,
    whole), and /metrics counts every resolve exactly once however often
    its checkpoint is delivered (the consumer applies by checkpoint id)."""
    tmp = tmp_path_factory.mktemp("telemetry-recovery")
    run = load_through_sink(
        tmp, Sink(fail_first=FAIL_FIRST), RECOVERY_WEB, RECOVERY_STG, RECOVERY_BAD, RECOVERY_CONNECTIONS
    )
    exp, m, bodies, posts, batches = run.exp, run.metrics, run.bodies, run.posts, run.batches
    sent_seconds, drained_seconds, log_text = run.sent_seconds, run.drained_seconds, run.log_text

    failed_posts = [p for p in posts if p.status != 200]
    entries = assigned_entries(bodies)
    duplicates = sum(len(fas) - 1 for fas in entries.values())
    print(
        f"\nrecovery: {exp.requests} resolve requests in {sent_seconds:.1f}s; drained {drained_seconds:.1f}s later\n"
        f"sink POSTs: {len(posts)} ({len(failed_posts)} answered 500); "
        f"consumer invocations (acked/delivered): {batches}\n"
        f"duplicate checkpoints ignored by /metrics: {int(m.get('edgeflag_duplicate_checkpoints_total'))}; "
        f"resolveIds the sink accepted more than once: {duplicates}"
    )
    assert len(failed_posts) == FAIL_FIRST, "the sink never saw the failures it was told to give"

    # At least once, each with its own flags and client.
    assert_sink_attribution(bodies, exp)
    # Exactly once in /metrics, although deliveries failed and were redelivered.
    assert_metrics_exact(m, exp)
    assert m.get("edgeflag_deliveries_total", destination="endpoint", result="failed") == FAIL_FIRST
    assert m.get("edgeflag_deliveries_total", destination="endpoint", result="ok") == len(posts) - FAIL_FIRST
    assert m.get("edgeflag_duplicate_checkpoints_total") > 0, (
        "a whole invocation failed, so the Queue must have redelivered checkpoints; none came twice"
    )
    assert "dead letter queue" not in log_text.lower(), "messages were dead-lettered"


# Test 3: the consumer made to run several small batches at once (the copy
# of wrangler.toml takes 4 messages a batch, checkpoints come every 250 ms;
# the local broker does not limit consumer concurrency, so batches
# overlap), and the sink fails its
# first deliveries: both /metrics paths count exactly, and the sink gets
# every assignment exactly once.
SMALL_BATCH = 4


def small_batches(toml: str) -> str:
    assert "max_batch_size = 100" in toml and "max_concurrency = 1" in toml, "wrangler.toml consumer settings moved"
    return toml.replace("max_batch_size = 100", f"max_batch_size = {SMALL_BATCH}").replace(
        "max_concurrency = 1", "max_concurrency = 8"
    )


def test_concurrent_small_batches_with_failing_sink_are_exact(
    built_worker: Bundle, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("telemetry-small-batches")
    run = load_through_sink(
        tmp,
        Sink(fail_first=FAIL_FIRST),
        LOAD_WEB,
        LOAD_STG,
        LOAD_BAD,
        LOAD_CONNECTIONS,
        edit_config=small_batches,
        # Checkpoints 4x as often: enough messages for many small batches.
        vars={"FLAG_LOGS_INTERVAL_MS": "250"},
    )
    exp, m, c = run.exp, run.metrics, run.consistent
    entries = assigned_entries(run.bodies)
    print(
        f"\nsmall batches: {exp.requests} resolves in {run.sent_seconds:.1f}s from {LOAD_CONNECTIONS} connections; "
        f"drained {run.drained_seconds:.1f}s later\nconsumer invocations: {len(run.batches)} "
        f"(sizes {sorted({b for _, b in run.batches})}); sink POSTs {len(run.posts)}, "
        f"{sum(p.status != 200 for p in run.posts)} failed; "
        f"duplicate checkpoints ignored: {int(c.get('edgeflag_duplicate_checkpoints_total'))}"
    )
    assert exp.requests >= 2000
    assert len(run.batches) > 1 and all(n <= SMALL_BATCH for _, n in run.batches), run.batches
    assert sum(p.status != 200 for p in run.posts) == FAIL_FIRST
    # Exactly once in both views of the metrics, by reason.
    assert_metrics_exact(m, exp)
    assert_metrics_exact(c, exp)
    for name in ("edgeflag_checkpoints_total", "edgeflag_flag_assigned_events_total"):
        assert m.get(name) <= c.get(name), name
    assert c.get("edgeflag_duplicate_checkpoints_total") > 0, "failed deliveries must have been redelivered"
    assert c.get("edgeflag_deliveries_total", destination="endpoint", result="failed") == FAIL_FIRST
    assert c.get("edgeflag_deliveries_total", destination="endpoint", result="ok") == len(run.posts) - FAIL_FIRST
    # The sink: every applied resolve exactly once.
    assert_sink_attribution(run.bodies, exp)
    dups = {rid: len(fas) for rid, fas in entries.items() if len(fas) != 1}
    assert not dups, f"{len(dups)} resolveIds delivered more than once: {list(dups.items())[:5]}"
    assert "dead letter queue" not in run.log_text.lower(), "messages were dead-lettered"


# Test 3b: a batch of more than MAX_DELIVERY_BYTES (1 MiB) of messages is
# delivered in several requests, each from at most 1 MiB of messages, with
# every exposure exactly once. A long interval makes the load pile up into
# one checkpoint of many 120 KB messages, which the Queue hands to one
# consumer invocation. The isolate's first checkpoint waits a whole
# interval, so it holds whatever the load sent in its first BIG_INTERVAL_MS:
# 3,000 resolves (about 16 messages) take ~7 s here, and 1,700 of them (9
# messages) would still fit in 40 s at a sixth of that speed, on a machine
# busy with other tests.
BIG_WEB = 1500
BIG_STG = 1500
BIG_INTERVAL_MS = 40000


def test_large_batch_is_delivered_in_bounded_requests(
    built_worker: Bundle, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("telemetry-large-batch")
    run = load_through_sink(
        tmp, Sink(), BIG_WEB, BIG_STG, 0, LOAD_CONNECTIONS, vars={"FLAG_LOGS_INTERVAL_MS": str(BIG_INTERVAL_MS)}
    )
    exp, c = run.exp, run.consistent
    entries = assigned_entries(run.bodies)
    sizes = sorted(len(p.body) for p in run.posts)
    print(
        f"\nlarge batch: {exp.requests} resolves in {run.sent_seconds:.1f}s; drained {run.drained_seconds:.1f}s "
        f"later\nconsumer invocations: {run.batches}; sink POSTs {len(run.posts)}, JSON bytes {sizes}"
    )
    assert exp.requests == BIG_WEB + BIG_STG
    # Some invocation got more than 1 MiB of messages (9+ of 120 KB), so it
    # made more POSTs than there were invocations.
    assert max((n for _, n in run.batches), default=0) >= 9, run.batches
    assert len(run.posts) > len(run.batches), (run.batches, sizes)
    # Each POST covers at most 1 MiB of protobuf messages; its JSON is a few
    # times that, far from the whole batch in one body.
    assert all(p.status == 200 for p in run.posts)
    assert max(sizes) < 4 * 1024 * 1024, sizes
    assert c.get("edgeflag_deliveries_total", destination="endpoint", result="ok") == len(run.posts)
    assert_metrics_exact(c, exp)
    assert_sink_attribution(run.bodies, exp)
    dups = {rid: len(fas) for rid, fas in entries.items() if len(fas) != 1}
    assert not dups, f"{len(dups)} resolveIds delivered more than once: {list(dups.items())[:5]}"


# Test 4: the aggregator itself, through POST /v1/metrics:apply.
INGEST_TOKEN = "ingest-token-for-tests"


def metrics_batch(*sequences: int, isolate: bytes = b"dedup-test-iso-1", matches: int = 3) -> dict:
    """A MetricsBatch (proto3 JSON): one checkpoint per sequence, each with
    `matches` MATCH resolves and one exposure event."""
    return {
        "checkpoints": [
            {
                "isolateId": base64.b64encode(isolate).decode(),
                "sequence": str(seq),
                "createdMs": "1",
                "flagAssigned": "1",
                "counters": {"resolves": [{"reason": "RESOLVE_REASON_MATCH", "count": str(matches)}]},
            }
            for seq in sequences
        ]
    }


def test_aggregator_counts_a_checkpoint_once(built_worker: Bundle, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The same checkpoint twice, out of order, within one batch and from two
    concurrent requests: counted once, in the aggregator and in the KV copy."""
    secrets = dict(DEFAULT_SECRETS, METRICS_INGEST_TOKEN=INGEST_TOKEN)
    worker = launch_worker(tmp_path_factory.mktemp("telemetry-dedup"), secrets=secrets)
    auth = {"Authorization": f"Bearer {INGEST_TOKEN}"}
    try:
        with fresh_session() as http:

            def apply(batch: dict) -> dict:
                r = http.post(worker.url("/v1/metrics:apply"), json=batch, headers=auth, timeout=REQUEST_TIMEOUT)
                assert r.status_code == 200, r.text
                return r.json()

            # Refused without the token, or with a batch that is not one; nothing applied.
            r = http.post(worker.url("/v1/metrics:apply"), json=metrics_batch(9), timeout=REQUEST_TIMEOUT)
            assert_error(r, 401, "UNAUTHENTICATED")
            r = http.post(worker.url("/v1/metrics:apply"), data=b"{", headers=auth, timeout=REQUEST_TIMEOUT)
            assert_error(r, 400, "INVALID_ARGUMENT")
            short = metrics_batch(9, isolate=b"short")
            r = http.post(worker.url("/v1/metrics:apply"), json=short, headers=auth, timeout=REQUEST_TIMEOUT)
            assert_error(r, 400, "INVALID_ARGUMENT")

            assert apply(metrics_batch(2)) == {"applied": 1, "duplicates": 0}
            assert apply(metrics_batch(0)) == {"applied": 1, "duplicates": 0}
            assert apply(metrics_batch(2)) == {"applied": 0, "duplicates": 1}
            assert apply(metrics_batch(1, 0, 1)) == {"applied": 1, "duplicates": 2}

            # Two requests at once with the same new checkpoint.
            barrier = threading.Barrier(2)
            results: list[dict] = []
            errors: list[str] = []

            def racer() -> None:
                with fresh_session() as s:
                    barrier.wait(timeout=REQUEST_TIMEOUT)
                    try:
                        r = s.post(
                            worker.url("/v1/metrics:apply"),
                            json=metrics_batch(5),
                            headers=auth,
                            timeout=REQUEST_TIMEOUT,
                        )
                        results.append(r.json() if r.status_code == 200 else {"status": r.status_code})
                    except (requests.RequestException, ValueError) as e:
                        errors.append(repr(e))

            threads = [threading.Thread(target=racer, daemon=True) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(REQUEST_TIMEOUT + 5)
            assert not errors and len(results) == 2, (errors, results)
            assert sorted(r["applied"] for r in results) == [0, 1], results
            assert sorted(r["duplicates"] for r in results) == [0, 1], results

            def exact(m: Metrics) -> bool:
                return (
                    m.get("confidence_resolves_total", resolver_id="edgeflag", reason="RESOLVE_REASON_MATCH") == 12
                    and m.get("edgeflag_flag_assigned_events_total") == 4
                    and m.get("edgeflag_duplicate_checkpoints_total") == 4
                )

            c = get_metrics(http, worker, consistent=True)
            assert exact(c), c.text
            # The KV copy catches up within the mirror interval (plus local KV).
            kv = poll(lambda: (lambda m: m if exact(m) else None)(get_metrics(http, worker)), 20, 0.5)
            assert kv, get_metrics(http, worker).text
    finally:
        worker.stop()


PROMTOOL_UNIT_WARNING = re.compile(
    r"^confidence_resolve_latency_microseconds\b.*\bunit\b", re.IGNORECASE
)


def test_promtool_accepts_metrics(load_run: LoadRun) -> None:
    """`promtool check metrics` on test 1's /metrics body. Exit 3 (lint
    warnings) is accepted only when every complaint is the one about the
    histogram's unit in its name (Confidence's metric name)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install it with `bash scripts/setup.sh --e2e` (apt package `prometheus`)")
    assert "confidence_resolves_total" in load_run.metrics.text
    r = subprocess.run(
        [promtool, "check", "metrics"], input=load_run.metrics.text.encode(), capture_output=True, timeout=60
    )
    out = (r.stdout + r.stderr).decode(errors="replace")
    print(f"\npromtool exit {r.returncode}: {out.strip() or '(no output)'}")
    if r.returncode == 0:
        return
    assert r.returncode == 3, f"promtool check metrics failed (exit {r.returncode}):\n{out}"
    complaints = [line for line in out.splitlines() if line.strip()]
    others = [c for c in complaints if not PROMTOOL_UNIT_WARNING.search(c)]
    assert complaints and not others, f"promtool complaints besides the histogram unit one:\n{out}"


# Regression: failed resolves used to record telemetry without scheduling a
# flush, so with no later success in the isolate they never reached /metrics.
def test_failed_resolves_alone_reach_metrics(built_worker: Bundle, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Failed resolves are counted even when nothing succeeds after them."""
    worker = launch_worker(tmp_path_factory.mktemp("telemetry-failed-only"))
    try:
        with fresh_session() as http:
            for i in range(3):
                r = http.post(
                    worker.url(RESOLVE),
                    json={"clientSecret": BAD_SECRET, "evaluationContext": {"targeting_key": f"bad-{i}"}},
                    timeout=REQUEST_TIMEOUT,
                )
                assert r.status_code == 401, r.text
            # A flush is due within ~1 s, then the Queue's 1 s batch timeout
            # and the consumer's KV write (>= 1 s apart): 12 s is ample.
            deadline = time.monotonic() + 12
            m = get_metrics(http, worker)
            while m.get("confidence_resolves_total", resolver_id="edgeflag", reason="RESOLVE_REASON_ERROR") < 3:
                if time.monotonic() > deadline:
                    break
                time.sleep(POLL_INTERVAL)
                m = get_metrics(http, worker)
        assert m.get("confidence_resolves_total", resolver_id="edgeflag", reason="RESOLVE_REASON_ERROR") == 3
        assert m.get("confidence_resolve_latency_microseconds_count", resolver_id="edgeflag") == 3
    finally:
        worker.stop()
