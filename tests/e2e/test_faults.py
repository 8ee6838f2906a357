"""Platform faults, injected into the shipping bundle through EDGEFLAG_FAULTS
(a var production never sets), each with its defined outcome:

- sticky reads failing or slow: the sticky flag resolves as
  RESOLVE_REASON_MATERIALIZATION_NOT_SUPPORTED with no variant, the other
  flags exactly as without a store, nothing stored is overwritten (nor a
  guess written), edgeflag_sticky_read_failures_total counts it; a slow read
  is cut off by the 2 s pair budget;
- sticky writes failing: retried once; counted ok / retried / failed; the
  caller got its assignment either way;
- the Queue refusing sends: the checkpoint is kept and resent, every resolve
  is counted once and reaches the flag-log sink once, the failed sends are
  counted;
- state pointer or blob reads failing: the serving state keeps serving,
  /readyz stays 200, each failed refresh is counted fetch_failed, and the
  refresh after the fault clears loads the pushed state (the interval is the
  only retry delay);
- a malformed EDGEFLAG_FAULTS: refused whole (nothing injected), named on
  /healthz and in the log.

One wrangler dev instance per fault config; counts in EDGEFLAG_FAULTS are per
isolate, which wrangler dev runs one of.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from conftest import REPO, REQUEST_TIMEOUT, LocalKv, Worker, fresh_session, launch_worker, parse_prometheus, poll, push_fast
from test_telemetry import Sink, assert_metrics_exact, assert_sink_attribution, assigned_entries, load_through_sink

DEMO = REPO / "src" / "demo_state.json"
SECRET = "demo-secret"
AUTH = {"Authorization": f"ClientSecret {SECRET}"}
STICKY_FLAG = "flags/pricing-experiment"
STICKY_MAT = "materializations/pricing-experiment"
STICKY_RULE = "flags/pricing-experiment/rules/premium-ab"
# The pair budget is 2 s; the response may take that plus the resolve.
SLOW_BOUND_SECONDS = 3.5


def enc(s: str) -> str:
    return s.replace("%", "%25").replace(":", "%3A")


def sticky_key(unit: str) -> str:
    return f"mat:{enc(unit)}:{enc(STICKY_MAT)}:{enc(STICKY_RULE)}"


def stored(kv: LocalKv, worker_dir: Path, unit: str) -> list[dict]:
    """The instance's stored assignments of `unit` (its state in worker_dir/state)."""
    return kv.list(worker_dir / "state", "MATERIALIZATIONS_KV", f"mat:{enc(unit)}:")


def metrics(http: requests.Session, worker: Worker) -> dict[str, float]:
    r = http.get(worker.url("/metrics?consistent=1"), headers=AUTH, timeout=REQUEST_TIMEOUT)
    assert r.status_code == 200, r.text
    return parse_prometheus(r.text)


def wait_metric(http: requests.Session, worker: Worker, name: str, value: float) -> dict[str, float]:
    """Polls (bounded, ~30 s: the flush interval, the consumer's batch
    timeout, the aggregator) until `name` reaches `value`; then it must be
    exactly that."""
    m = poll(lambda: (lambda m: m if m.get(name, 0.0) >= value else None)(metrics(http, worker)), 60, 0.5)
    assert m, f"{name} did not reach {value} within ~30 s:\n{worker.log_tail()}"
    assert m[name] == value, f"{name} = {m[name]}, expected {value}"
    return m


def resolve_body(unit: str) -> dict:
    # Premium: the sticky rule's segment; apply=false: only resolving.
    ctx = {"targeting_key": unit, "plan": "premium", "email": "buyer@customer.test", "country": "SE"}
    return {"clientSecret": SECRET, "flags": [], "evaluationContext": ctx, "apply": False}


def without_store(cli: Path, body: dict) -> list[dict]:
    """What `edgeflag resolve` answers for `body` (sticky reads: "not stored")."""
    r = subprocess.run([str(cli), "resolve", "--state", str(DEMO)], input=json.dumps(body),
                       capture_output=True, text=True, timeout=30, check=True)
    return json.loads(r.stdout)["resolvedFlags"]


def healthz_faults(http: requests.Session, worker: Worker) -> str | None:
    r = http.get(worker.url("/healthz"), timeout=REQUEST_TIMEOUT)
    assert r.status_code == 200, r.text
    assert "faultsError" not in r.json(), r.json()
    return r.json().get("faults")


def launch(tmp: Path, faults: str, **vars: str) -> Worker:
    return launch_worker(tmp, vars={"EDGEFLAG_FAULTS": faults, **vars})


def seed(kv: LocalKv, tmp: Path, unit: str, variant: str) -> None:
    """A stored assignment in the reference worker's layout (value only), so
    reading it needs both the listing and a value read; written before the
    instance starts on the same state."""
    kv.put(tmp / "state", "MATERIALIZATIONS_KV", sticky_key(unit), variant)
    kv.release(tmp / "state")


# --- Sticky reads ---------------------------------------------------------------------


def check_failed_reads(
    kv: LocalKv, tmp: Path, worker: Worker, cli: Path, seeded: str, fresh: str, bound: float | None
) -> None:
    with fresh_session() as http:
        assert healthz_faults(http, worker) == worker.vars["EDGEFLAG_FAULTS"]
        for unit in (seeded, fresh):
            body = resolve_body(unit)
            t0 = time.monotonic()
            resp = http.post(worker.url("/v1/flags:resolve"), json=body, timeout=REQUEST_TIMEOUT)
            took = time.monotonic() - t0
            assert resp.status_code == 200, resp.text
            if bound is not None:
                assert took < bound, f"a slow sticky read held the response {took:.2f} s (bound {bound} s)"
            got = {f["flag"]: f for f in resp.json()["resolvedFlags"]}
            # No variant: the SDK serves its default; not applied.
            assert got[STICKY_FLAG] == {"flag": STICKY_FLAG, "reason": "RESOLVE_REASON_MATERIALIZATION_NOT_SUPPORTED"}
            # Every other flag exactly as `edgeflag resolve` answers.
            others = [f for f in without_store(cli, body) if f["flag"] != STICKY_FLAG]
            assert [f for f in resp.json()["resolvedFlags"] if f["flag"] != STICKY_FLAG] == others
            assert any(f["reason"] == "RESOLVE_REASON_MATCH" for f in got.values()), got
        wait_metric(http, worker, "edgeflag_sticky_read_failures_total", 2)
        m = metrics(http, worker)
        assert m.get('edgeflag_sticky_writes_total{result="ok"}') == 0, m
    # Nothing written: the seeded value stands, the fresh unit has nothing.
    assert kv.get(tmp / "state", "MATERIALIZATIONS_KV", sticky_key(seeded)) == b"flags/pricing-experiment/variants/discount"
    assert [k["name"] for k in stored(kv, tmp, seeded)] == [sticky_key(seeded)]
    assert stored(kv, tmp, fresh) == []


def test_failing_sticky_reads_are_not_supported_write_nothing_and_are_counted(
    built_worker, tmp_path_factory: pytest.TempPathFactory, cli: Path, local_kv: LocalKv
) -> None:
    tmp = tmp_path_factory.mktemp("fault-sticky-read")
    seeded, fresh = f"seeded-{uuid.uuid4().hex}", f"fresh-{uuid.uuid4().hex}"
    seed(local_kv, tmp, seeded, "flags/pricing-experiment/variants/discount")
    worker = launch(tmp, "sticky_read=fail")
    try:
        check_failed_reads(local_kv, tmp, worker, cli, seeded, fresh, bound=None)
    finally:
        worker.stop()


def test_slow_sticky_reads_are_cut_off_within_the_budget(
    built_worker, tmp_path_factory: pytest.TempPathFactory, cli: Path, local_kv: LocalKv
) -> None:
    tmp = tmp_path_factory.mktemp("fault-sticky-slow")
    seeded, fresh = f"seeded-{uuid.uuid4().hex}", f"fresh-{uuid.uuid4().hex}"
    seed(local_kv, tmp, seeded, "flags/pricing-experiment/variants/discount")
    # Each attempt waits 2.5 s before reaching KV: past the 1 s attempt
    # timeout, so both attempts time out and the 2 s pair budget ends it.
    worker = launch(tmp, "sticky_read=slow:2500")
    try:
        check_failed_reads(local_kv, tmp, worker, cli, seeded, fresh, bound=SLOW_BOUND_SECONDS)
    finally:
        worker.stop()


# --- Sticky writes --------------------------------------------------------------------


def test_failing_sticky_writes_are_retried_once_and_counted(
    built_worker, tmp_path_factory: pytest.TempPathFactory, local_kv: LocalKv
) -> None:
    """The first 3 write attempts of the isolate fail: unit A's write fails
    both attempts (not stored), unit B's first attempt fails and its retry
    stores it, unit C's first attempt stores it."""
    tmp = tmp_path_factory.mktemp("fault-sticky-write")
    worker = launch(tmp, "sticky_write=fail:3")
    units = {name: f"{name}-{uuid.uuid4().hex}" for name in ("a", "b", "c")}
    try:
        with fresh_session() as http:
            assert healthz_faults(http, worker) == "sticky_write=fail:3"
            want = {"a": (0, 0, 1), "b": (0, 1, 1), "c": (1, 1, 1)}  # ok, retried, failed after each
            for name, unit in units.items():
                resp = http.post(worker.url("/v1/flags:resolve"), json=resolve_body(unit), timeout=REQUEST_TIMEOUT)
                assert resp.status_code == 200, resp.text
                sticky = next(f for f in resp.json()["resolvedFlags"] if f["flag"] == STICKY_FLAG)
                # The caller gets its assignment whatever the write does.
                assert sticky["reason"] == "RESOLVE_REASON_MATCH" and sticky["variant"], sticky
                ok, retried, failed = want[name]
                # One write per resolve, after the response: wait for its count.
                total = ok + retried + failed
                m = poll(
                    lambda: (lambda m: m if sum(m.get(f'edgeflag_sticky_writes_total{{result="{r}"}}', 0)
                                                for r in ("ok", "retried", "failed")) >= total else None)(
                        metrics(http, worker)),
                    60, 0.5,
                )
                assert m, f"the write of unit {name} was not counted within ~30 s:\n{worker.log_tail()}"
                got = tuple(m[f'edgeflag_sticky_writes_total{{result="{r}"}}'] for r in ("ok", "retried", "failed"))
                assert got == want[name], f"after unit {name}: (ok, retried, failed) = {got}, expected {want[name]}"
                keys = stored(local_kv, tmp, unit)
                if name == "a":
                    assert keys == [], keys
                else:
                    assert [k["name"] for k in keys] == [sticky_key(unit)], keys
                    assert keys[0].get("metadata") == {"v": sticky["variant"]}, keys
    finally:
        worker.stop()
    log = worker.log_path.read_text(errors="replace")
    assert "sticky write failed twice" in log and "sticky write failed, retrying once" in log


# --- The Queue --------------------------------------------------------------------------

QUEUE_FAILS = 3


def test_a_refusing_queue_loses_and_duplicates_nothing(built_worker, tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("fault-queue")
    run = load_through_sink(tmp, Sink(), 40, 40, 2, 4, vars={"EDGEFLAG_FAULTS": f"queue_send=fail:{QUEUE_FAILS}"})
    exp, m = run.exp, run.consistent
    # Every resolve counted exactly once; nothing dropped.
    assert_metrics_exact(m, exp)
    assert_metrics_exact(run.metrics, exp)
    assert m.get("edgeflag_queue_sends_total", result="failed") == QUEUE_FAILS, m.text
    assert m.get("edgeflag_queue_sends_total", result="ok") >= 1, m.text
    assert m.get("edgeflag_duplicate_checkpoints_total") == 0
    # Every applied resolve reached the sink, once.
    entries = assert_sink_attribution(run.bodies, exp)
    dups = {rid: len(fas) for rid, fas in entries.items() if len(fas) != 1}
    assert not dups, f"{len(dups)} resolveIds delivered more than once: {list(dups.items())[:5]}"
    assert set(assigned_entries(run.bodies)) == set(exp.applied)
    assert run.log_text.count("queue send failed, kept for the next flush") == QUEUE_FAILS, run.log_text[-4000:]


# --- The state source ---------------------------------------------------------------------

BLOB_FAILS = 2  # failed refreshes; each is two read attempts


def state_load_lines(worker: Worker) -> list[dict]:
    dec = json.JSONDecoder()
    return [dec.raw_decode(line[line.index("{"):])[0]
            for line in worker.log_tail(1_000_000).splitlines() if '"event":"state_load"' in line]


@pytest.mark.parametrize("site", ["state_blob", "state_pointer"])
def test_a_failing_state_source_keeps_the_serving_state(
    built_worker, tmp_path_factory: pytest.TempPathFactory, cli: Path, local_kv: LocalKv, site: str
) -> None:
    tmp = tmp_path_factory.mktemp(f"fault-{site}")
    other = json.loads(DEMO.read_text())
    for flag in other["flags"].values():
        for v in flag.get("variants", []):
            if isinstance(v.get("value"), dict) and "message" in v["value"]:
                v["value"]["message"] = "pushed: " + v["value"]["message"]
    (tmp / "pushed.json").write_text(json.dumps(other))
    worker = launch(tmp, f"{site}=fail:{2 * BLOB_FAILS}", STATE_REFRESH_SECONDS="1")
    try:
        with fresh_session() as http:
            first = http.get(worker.url("/readyz"), timeout=REQUEST_TIMEOUT)
            assert first.status_code == 200, first.text
            serving = first.json()["etag"]
            pushed = push_fast(local_kv, worker.state_dir, tmp / "pushed.json")
            assert pushed != serving
            seen: list[str] = []
            t0 = time.monotonic()

            def step() -> bool:
                r = http.get(worker.url("/readyz"), timeout=REQUEST_TIMEOUT)
                # Ready throughout: a failed load never unreadies.
                assert r.status_code == 200, r.text
                seen.append(r.json()["etag"])
                return seen[-1] == pushed

            assert poll(step, 120, 0.25), f"{pushed} never served:\n{worker.log_tail()}"
            took = time.monotonic() - t0
            # The old state served until the new one did, never after.
            first_new = seen.index(pushed)
            assert set(seen[:first_new]) == {serving} and set(seen[first_new:]) == {pushed}, seen
            kv_lines = [x for x in state_load_lines(worker) if x["source"] == "kv"]
            results = [x["result"] for x in kv_lines]
            assert results[-(BLOB_FAILS + 1):] == ["fetch_failed"] * BLOB_FAILS + ["ok"], results
            assert all(f"EDGEFLAG_FAULTS {site}=fail" in x["reason"] for x in kv_lines[-(BLOB_FAILS + 1):-1])
            # Each refresh is due 1 s after the last: no backoff past that.
            assert took < (BLOB_FAILS + 1) * 1.0 + 4.0, f"the state took {took:.1f} s to load after the fault cleared"
            wait_metric(http, worker, 'edgeflag_state_loads_total{source="kv",result="fetch_failed"}', BLOB_FAILS)
            # The successful load is counted in a later checkpoint than the
            # failures (it ran in another request's waitUntil): wait for it
            # too, then the failures must still be exactly BLOB_FAILS.
            m = wait_metric(http, worker, 'edgeflag_state_loads_total{source="kv",result="ok"}', 1)
            assert m['edgeflag_state_loads_total{source="kv",result="fetch_failed"}'] == BLOB_FAILS, m
    finally:
        worker.stop()


# --- A malformed config ---------------------------------------------------------------------


def test_a_malformed_fault_config_injects_nothing_and_says_so(
    built_worker, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Refused whole: the valid entry beside the bad one is not injected
    either, /healthz names the error, and the worker log says it."""
    worker = launch(tmp_path_factory.mktemp("fault-malformed"), "sticky_read=fail,queue_send=explode")
    try:
        with fresh_session() as http:
            r = http.get(worker.url("/healthz"), timeout=REQUEST_TIMEOUT)
            assert r.status_code == 200, r.text
            # The value as set, and why none of it is in force.
            assert r.json()["faults"] == "sticky_read=fail,queue_send=explode", r.json()
            assert r.json()["faultsError"] == \
                'EDGEFLAG_FAULTS "queue_send=explode": unknown action "explode" (fail, slow:MS)', r.json()
            # sticky_read=fail would make this MATERIALIZATION_NOT_SUPPORTED.
            resp = http.post(worker.url("/v1/flags:resolve"), json=resolve_body(f"fresh-{uuid.uuid4().hex}"),
                             timeout=REQUEST_TIMEOUT)
            assert resp.status_code == 200, resp.text
            sticky = next(f for f in resp.json()["resolvedFlags"] if f["flag"] == STICKY_FLAG)
            assert sticky["reason"] == "RESOLVE_REASON_MATCH" and sticky["variant"], sticky
        assert poll(lambda: "queue_send=explode" in worker.log_tail(10_000) and "no fault is injected" in worker.log_tail(10_000),
                    20, 0.25), worker.log_tail()
    finally:
        worker.stop()
