"""OFREP telemetry end to end: OFREP evaluations reach /metrics and the flag
logs at a local sink exactly like flags:resolve ones.

Rules under test (README, "OFREP"): every evaluation counts its flags by
reason; a single evaluation that succeeds is an exposure; a bulk one is an
exposure of every flag it returns with a variant unless
OFREP_BULK_APPLY=false; a 304 counts as an evaluation, not as an exposure.

Expected figures come from what the test sent and received. OFREP answers
carry no resolveId, so exposures are matched to requests by targeting key
(every exposing request uses its own)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from conftest import DEMO_SECRET, REQUEST_TIMEOUT, Worker, fresh_session, launch_worker
from test_telemetry import (
    DRAIN_TIMEOUT,
    POLL_INTERVAL,
    SETTLE_SECONDS,
    Metrics,
    Sink,
    assigned_entries,
    flag_resolve_counts,
    get_metrics,
    telemetry_sums,
)

SINGLE = "/ofrep/v1/evaluate/flags/"
BULK = "/ofrep/v1/evaluate/flags"
AUTH = {"Authorization": f"Bearer {DEMO_SECRET}"}
MATCH = "RESOLVE_REASON_MATCH"
NO_MATCH = "RESOLVE_REASON_NO_SEGMENT_MATCH"
ERROR = "RESOLVE_REASON_ERROR"


@dataclass
class Expected:
    reasons: Counter = field(default_factory=Counter)
    by_flag: Counter = field(default_factory=Counter)
    latency: int = 0  # evaluations that reached the resolver, failed ones included
    # targeting key -> {(flag, short variant)} exposed by the one request using it
    exposures: dict[str, frozenset] = field(default_factory=dict)
    routes: Counter = field(default_factory=Counter)  # (route, status class) -> requests

    def count_item(self, flag: str, item: dict) -> None:
        """One resolved flag, from its OFREP item. The contexts below never
        hit a client-default assignment, so an empty variant is no match."""
        if item.get("reason") == "DISABLED":
            return  # archived flags are not resolved
        self.reasons[MATCH if item.get("variant") else NO_MATCH] += 1
        self.by_flag[f"flags/{flag}"] += 1


def send(http: requests.Session, url: str, body: dict, headers: dict | None = None) -> requests.Response:
    # No client-side retries: a lost request would make the figures unknowable.
    return http.post(url, json=body, headers={**AUTH, **(headers or {})}, timeout=REQUEST_TIMEOUT)


def drive(http: requests.Session, base: str, bulk_apply: bool) -> Expected:
    exp = Expected()
    # Single evaluations: (flag key, context); each exposing one has its own targeting key.
    singles = [
        ("welcome-banner.message", {"targetingKey": "s-1", "country": "SE"}),
        ("welcome-banner", {"targetingKey": "s-2", "country": "US"}),
        ("search-tuning.boost", {"targetingKey": "s-3"}),
        ("pricing-experiment.price", {"targetingKey": "s-4", "plan": "premium"}),
        ("dark-mode", {"targetingKey": "s-5"}),  # no match: resolved, nothing exposed
        *[("new-checkout.enabled", {"targetingKey": f"s-nc-{i}"}) for i in range(6)],
    ]
    for key, ctx in singles:
        r = send(http, base + SINGLE + key, {"context": ctx})
        assert r.status_code == 200, r.text
        b = r.json()
        flag = key.split(".")[0]
        exp.count_item(flag, b)
        exp.latency += 1
        exp.routes["ofrep_evaluate", "2xx"] += 1
        if b["variant"]:
            exp.exposures[ctx["targetingKey"]] = frozenset({(f"flags/{flag}", b["variant"])})
    # Failures: an unknown flag resolves nothing; a missing path resolves
    # the flag but exposes nothing; a bad secret is one failed resolve.
    r = send(http, base + SINGLE + "no-such-flag", {"context": {"targetingKey": "f-1"}})
    assert r.status_code == 404, r.text
    r = send(http, base + SINGLE + "welcome-banner.nope", {"context": {"targetingKey": "f-2"}})
    assert r.status_code == 400, r.text
    exp.count_item("welcome-banner", {"variant": "default"})
    r = http.post(base + SINGLE + "welcome-banner", json={}, headers={"X-API-Key": "nope"}, timeout=REQUEST_TIMEOUT)
    assert r.status_code == 401, r.text
    exp.reasons[ERROR] += 1
    exp.latency += 3
    exp.routes["ofrep_evaluate", "4xx"] += 3

    # Bulk evaluations, each re-fetched once with its ETag (304).
    contexts = [
        {"targetingKey": "b-1", "country": "SE"},
        {"targetingKey": "b-2", "country": "US", "plan": "premium"},
        {"targetingKey": "b-3"},
        {"targetingKey": "b-4", "country": "FI", "plan": "premium", "email": "b-4@example.com"},
    ]
    for ctx in contexts:
        r = send(http, base + BULK, {"context": ctx})
        assert r.status_code == 200, r.text
        items = r.json()["flags"]
        etag = r.headers["ETag"]
        for _ in range(2):  # the 200, then the 304 for the same body
            for it in items:
                exp.count_item(it["key"], it)
            exp.latency += 1
        exposed = frozenset((f"flags/{it['key']}", it["variant"]) for it in items if it.get("variant"))
        if bulk_apply and exposed:
            exp.exposures[ctx["targetingKey"]] = exposed
        r = send(http, base + BULK, {"context": ctx}, {"If-None-Match": etag})
        assert r.status_code == 304, r.text
        exp.routes["ofrep_bulk", "2xx"] += 1
        exp.routes["ofrep_bulk", "3xx"] += 1
    return exp


def wait_drained(http: requests.Session, worker: Worker, sink: Sink, exp: Expected) -> tuple[Metrics, list[dict]]:
    """Bounded poll until /metrics counts every evaluation and the sink has
    every exposure; then SETTLE_SECONDS more, so late extras would show."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        m = get_metrics(http, worker)
        entries = assigned_entries(sink.accepted())
        done = sum(m.resolves_by_reason().values()) >= sum(exp.reasons.values()) and sum(
            len(v) for v in entries.values()
        ) >= len(exp.exposures)
        if done or time.monotonic() > deadline:
            break
        time.sleep(POLL_INTERVAL)
    time.sleep(SETTLE_SECONDS)
    return get_metrics(http, worker), sink.accepted()


def assert_exact(m: Metrics, bodies: list[dict], exp: Expected) -> None:
    assert m.resolves_by_reason() == exp.reasons, (dict(m.resolves_by_reason()), dict(exp.reasons))
    assert m.get("confidence_resolve_latency_microseconds_count", resolver_id="edgeflag") == exp.latency
    for (route, status), n in exp.routes.items():
        assert m.get("edgeflag_requests_total", route=route, status=status) == n, (route, status)
    assert m.get("edgeflag_requests_total", route="ofrep_bulk", status="4xx") == 0
    assert m.get("edgeflag_flag_assigned_events_total") == len(exp.exposures)
    # The flag logs: the same reasons and per-flag counts, and one exposure
    # per exposing request with exactly its flags, its key, its client.
    reasons, latency = telemetry_sums(bodies)
    assert +reasons == exp.reasons and latency == exp.latency, (dict(reasons), latency)
    assert flag_resolve_counts(bodies) == exp.by_flag
    entries = [fa for fas in assigned_entries(bodies).values() for fa in fas]
    assert len(entries) == len(exp.exposures), entries
    seen = Counter()
    for fa in entries:
        keys = {f.get("targetingKey", "") for f in fa["flags"]}
        assert len(keys) == 1, fa
        key = keys.pop()
        seen[key] += 1
        got = frozenset((f["flag"], f["assignmentInfo"]["variant"].rsplit("/", 1)[-1]) for f in fa["flags"])
        assert got == exp.exposures.get(key), (key, got, exp.exposures.get(key))
        assert fa["clientInfo"]["clientCredential"] == "clients/demo/credentials/web", fa
        assert fa["clientInfo"]["sdk"] == {"customId": "OFREP"}, fa
    assert set(seen) == set(exp.exposures) and set(seen.values()) == {1}, seen


@pytest.mark.parametrize("bulk_apply", [True, False], ids=["bulk-applies", "OFREP_BULK_APPLY=false"])
def test_ofrep_telemetry_is_exact(built_worker: Path, tmp_path_factory: pytest.TempPathFactory, bulk_apply: bool) -> None:
    sink = Sink()
    worker = None
    try:
        vars = {"FLAG_LOGS_ENDPOINT": sink.url}
        if not bulk_apply:
            vars["OFREP_BULK_APPLY"] = "false"
        worker = launch_worker(tmp_path_factory.mktemp("ofrep-telemetry"), vars=vars)
        with fresh_session() as http:
            exp = drive(http, worker.base_url, bulk_apply)
            assert exp.exposures and exp.reasons[NO_MATCH] and exp.reasons[MATCH]
            m, bodies = wait_drained(http, worker, sink, exp)
        assert_exact(m, bodies, exp)
    finally:
        try:
            if worker is not None:
                worker.stop()
        finally:
            sink.stop()
