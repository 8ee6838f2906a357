"""Sticky assignments in either worker's KV layout, through wrangler dev.

The reference Confidence worker stores a sticky assignment's variant as the
KV value and writes no metadata; edgeflag writes the value and `{"v":
variant}` metadata. Every resolver-spec case that has `materializations`
is seeded into local KV in each layout and must resolve as its `general`
expectation says, so a switch from the reference worker keeps every
assignment. And edgeflag's own writes must be readable by the reference
worker: the variant is the raw value.

The suite's cases share one state (resolver-spec/state.json), served by
the production build (EDGEFLAG_STATE=none) from STATE_KV, where it is put
with the cases' seeds before each instance starts, with one flag added that
no case resolves: its sticky read
fails in workerd (the key prefix is longer than KV allows), which shows a
failed read resolving as MATERIALIZATION_NOT_SUPPORTED, writing nothing and being counted. Cases share unit `user1` but disagree about what KV holds for
it, and resolving writes, so cases are grouped into rounds whose seeds
agree and where no case's write changes what a later case reads; each
round gets its own instance (own KV), all rounds started in parallel.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import requests

from conftest import REPO, REQUEST_TIMEOUT, Bundle, LocalKv, Worker, fresh_session, launch_worker, poll, push_fast

SPEC = REPO.parent / "shared" / "conformance" / "resolver-spec"
# A rule no spec flag has: seeds "unit is in the materialization" with no
# variant for any rule a case reads, as another flag's write would.
INCLUSION_RULE = "flags/e2e-seed/rules/inclusion"
LAYOUTS = ("reference", "edgeflag")


def load_cases() -> list[dict]:
    cases = json.loads((SPEC / "tests.json").read_text(encoding="utf-8"))
    return [c for c in cases if c.get("materializations")]


CASES = load_cases()
STATE = json.loads((SPEC / "state.json").read_text(encoding="utf-8"))

# Reads a materialization whose KV prefix exceeds the 512-byte key limit, so
# every list of it fails (a real KV error from workerd, every time); writes
# one whose keys are fine, where a failed read taken for "not stored" would
# leave a fresh assignment.
UNREADABLE_FLAG = "flags/e2e-unreadable"
UNREADABLE_MAT = "materializations/" + "x" * 520
WRITTEN_MAT = "materializations/e2e-written"


def embedded_state() -> dict:
    state = json.loads(json.dumps(STATE))
    flag = json.loads(json.dumps(STATE["flags"]["flags/mat-read-flag"]).replace("flags/mat-read-flag", UNREADABLE_FLAG))
    flag["rules"][0]["materializationSpec"] = {"readMaterialization": UNREADABLE_MAT, "writeMaterialization": WRITTEN_MAT}
    assert UNREADABLE_FLAG not in state["flags"]
    state["flags"][UNREADABLE_FLAG] = flag
    return state


def enc(s: str) -> str:
    return s.replace("%", "%25").replace(":", "%3A")


def kv_key(unit: str, mat: str, rule: str) -> str:
    return f"mat:{enc(unit)}:{enc(mat)}:{enc(rule)}"


# --- What each case reads, writes and needs stored ----------------------------------


def segment_mats(name: str, seen: set[str]) -> set[str]:
    """Materializations a segment's targeting asks about, nested segments included."""
    if name in seen or name not in STATE["segments"]:
        return set()
    seen.add(name)
    out: set[str] = set()
    for c in (STATE["segments"][name].get("targeting") or {}).get("criteria", {}).values():
        if "materializedSegment" in c:
            out.add(c["materializedSegment"]["materializedSegment"])
        if "segment" in c:
            out |= segment_mats(c["segment"]["segment"], seen)
    return out


@dataclass
class Case:
    raw: dict
    name: str
    unit: str
    flags: set[str]
    reads: set[str]  # materializations
    writes: set[tuple[str, str]]  # (materialization, rule)
    # (unit, materialization) -> None when excluded, else {rule: variant}
    stored: dict[tuple[str, str], dict[str, str] | None] = field(default_factory=dict)

    @staticmethod
    def of(raw: dict) -> "Case":
        req = raw["resolveRequest"]
        flags = set(req.get("flags") or STATE["flags"])
        reads: set[str] = set()
        writes: set[tuple[str, str]] = set()
        for f in flags:
            for rule in STATE["flags"].get(f, {}).get("rules", []):
                spec = rule.get("materializationSpec") or {}
                if spec.get("readMaterialization"):
                    reads.add(spec["readMaterialization"])
                if spec.get("writeMaterialization"):
                    writes.add((spec["writeMaterialization"], rule["name"]))
                reads |= segment_mats(rule.get("segment", ""), set())
        case = Case(raw, raw["name"], str((req.get("evaluationContext") or {}).get("targeting_key", "")), flags, reads, writes)
        for unit, mats in raw["materializations"].items():
            for mat, entry in mats.items():
                included = entry.get("isUnitInMaterialization", False)
                case.stored[(unit, mat)] = dict(entry.get("ruleToVariant") or {}) if included else None
        return case

    def view(self, unit: str, mat: str) -> dict[str, str] | None:
        return self.stored.get((unit, mat))

    def cares(self, unit: str, mat: str) -> bool:
        return (unit, mat) in self.stored or (unit == self.unit and mat in self.reads)


def rule_flag(rule: str) -> str:
    return rule.split("/rules/")[0]


def seeds_agree(a: Case, b: Case) -> bool:
    """One KV can hold what both cases need stored."""
    for x, y in ((a, b), (b, a)):
        for (unit, mat), rules in x.stored.items():
            if not y.cares(unit, mat):
                continue
            other = y.view(unit, mat)
            if (rules is None) != (other is None):
                return False
            # A rule one case stores is seen by the other if it resolves that flag.
            for rule, variant in (rules or {}).items():
                if rule_flag(rule) in y.flags and (other or {}).get(rule) != variant:
                    return False
    return True


def write_spares(earlier: Case, later: Case) -> bool:
    """What `earlier` writes does not change what `later` reads (nor turn
    one of its keys into the other layout)."""
    for mat, rule in earlier.writes:
        if not earlier.unit or not later.cares(earlier.unit, mat):
            continue
        view = later.view(earlier.unit, mat)
        if view is None or rule_flag(rule) in later.flags:
            return False
    return True


def rounds_of(cases: list[Case]) -> list[list[Case]]:
    """Greedy: each case joins the first round it fits, after the cases
    already there (writers are placed last, so they run last)."""
    rounds: list[list[Case]] = []
    for c in sorted(cases, key=lambda c: bool(c.writes)):
        for r in rounds:
            if all(seeds_agree(p, c) and write_spares(p, c) for p in r):
                r.append(c)
                break
        else:
            rounds.append([c])
    return rounds


def seed_entries(cases: list[Case], layout: str) -> list[dict]:
    keys: dict[str, str] = {}
    for c in cases:
        for (unit, mat), rules in c.stored.items():
            if rules is None:
                continue
            for rule, variant in rules.items():
                keys[kv_key(unit, mat, rule)] = variant
            if not rules:
                keys.setdefault(kv_key(unit, mat, INCLUSION_RULE), "")
    entries = []
    for k, v in sorted(keys.items()):
        e = {"key": k, "value": v}
        if layout == "edgeflag":
            e["metadata"] = {"v": v}
        entries.append(e)
    return entries


# --- Comparing against the general expectation --------------------------------------


def json_eq(a: object, b: object) -> bool:
    """Numbers by value: the resolver writes 12.0 where the suite has 12."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_eq(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_eq(v, b[k]) for k, v in a.items())
    return a == b


def mismatches(expected: dict, actual: dict) -> list[str]:
    exp = expected["resolvedFlags"]
    act = actual.get("resolvedFlags", [])
    if len(exp) != len(act):
        return [f"{len(act)} flags resolved, expected {len(exp)}: {actual}"]
    out = []
    for e in exp:
        name = e["flag"]
        a = next((a for a in act if a.get("flag") == name), None)
        if a is None:
            out.append(f"{name} missing")
            continue
        if a.get("reason") != e["reason"]:
            out.append(f"{name}: reason {a.get('reason')}, expected {e['reason']}")
        if a.get("variant", "") != e["variant"]:
            out.append(f"{name}: variant {a.get('variant', '')!r}, expected {e['variant']!r}")
        value = a.get("value")
        ok = value in (None, {}) if e["value"] is None else json_eq(e["value"], value)
        if not ok:
            out.append(f"{name}: value {value}, expected {e['value']}")
        if "shouldApply" in e and a.get("shouldApply", False) != e["shouldApply"]:
            out.append(f"{name}: shouldApply {a.get('shouldApply', False)}, expected {e['shouldApply']}")
        if "assignmentOrigin" in e and a.get("assignmentOrigin", "") != e["assignmentOrigin"]:
            out.append(f"{name}: assignmentOrigin {a.get('assignmentOrigin', '')!r}, expected {e['assignmentOrigin']!r}")
    return out


# --- Fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spec_state(tmp_path_factory: pytest.TempPathFactory, cli: Path) -> Path:
    """The suite's state plus UNREADABLE_FLAG, as a file for push_fast."""
    path = tmp_path_factory.mktemp("spec-state") / "state.json"
    path.write_text(json.dumps(embedded_state(), sort_keys=True), encoding="utf-8")
    return path


def start_spec_worker(kv: LocalKv, tmp: Path, none_bundle: Bundle, spec_state: Path, seeds: list[dict]) -> Worker:
    """The production build on `tmp`, its KV holding `seeds` (sticky
    entries: key, value, metadata?) and the suite's state before it starts."""
    for e in seeds:
        kv.put(tmp / "state", "MATERIALIZATIONS_KV", e["key"], e["value"], metadata=e.get("metadata"))
    push_fast(kv, tmp / "state", spec_state)
    kv.release(tmp / "state")
    return launch_worker(tmp, bundle=none_bundle)


def stored(kv: LocalKv, worker: Worker, prefix: str = "") -> list[dict]:
    return kv.list(worker.state_dir, "MATERIALIZATIONS_KV", prefix)


@dataclass
class Round:
    layout: str
    cases: list[Case]
    worker: Worker
    seeded: list[dict]


ROUNDS = rounds_of([Case.of(c) for c in CASES])


@pytest.fixture(scope="module")
def results(
    none_bundle: Bundle, spec_state: Path, local_kv: LocalKv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[tuple[str, str], list[str]]]:
    """Seeds and starts one instance per (layout, round), in parallel, runs
    each round's cases in order and returns the mismatches per (layout,
    case name); every instance is stopped afterwards."""

    def start(layout: str, cases: list[Case], tmp: Path) -> Round:
        entries = seed_entries(cases, layout)
        return Round(layout, cases, start_spec_worker(local_kv, tmp, none_bundle, spec_state, entries), entries)

    # mktemp is not thread-safe: directories first, then the threads.
    jobs = [(layout, r, tmp_path_factory.mktemp(f"sticky-{layout}")) for layout in LAYOUTS for r in ROUNDS]
    started: list[Round] = []
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        for f in [pool.submit(start, *job) for job in jobs]:
            try:
                started.append(f.result())
            except BaseException as e:  # stop what did start
                errors.append(e)
    try:
        if errors:
            raise errors[0]

        def run(r: Round) -> dict[tuple[str, str], list[str]]:
            out = {}
            with fresh_session() as http:
                for c in r.cases:
                    resp = http.post(r.worker.url("/v1/flags:resolve"), json=c.raw["resolveRequest"], timeout=REQUEST_TIMEOUT)
                    if resp.status_code != 200:
                        out[(r.layout, c.name)] = [f"HTTP {resp.status_code}: {resp.text}"]
                    else:
                        out[(r.layout, c.name)] = mismatches(c.raw["expectedResult"]["general"], resp.json())
            return out

        found: dict[tuple[str, str], list[str]] = {}
        with ThreadPoolExecutor(max_workers=len(started)) as pool:
            for part in pool.map(run, started):
                found.update(part)
        yield found
    finally:
        for r in started:
            r.worker.stop()


def test_rounds_cover_every_materialization_case() -> None:
    assert len(CASES) == 20, "the suite has 20 cases with materializations"
    # The added flag stays out of every case: each names its flags.
    assert all(c["resolveRequest"].get("flags") for c in CASES)
    names = [c.name for r in ROUNDS for c in r]
    assert sorted(names) == sorted(c["name"] for c in CASES)
    # The reference layout would otherwise be tested on a trivial store.
    assert any(e for r in ROUNDS for e in seed_entries(r, "reference") if e["value"])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", [c["name"] for c in CASES])
def test_case_resolves_as_the_suite_expects(results: dict[tuple[str, str], list[str]], layout: str, name: str) -> None:
    assert (layout, name) in results
    assert results[(layout, name)] == [], f"{layout} layout, {name}"


def test_a_failed_read_is_not_supported_writes_nothing_and_is_counted(
    none_bundle: Bundle, spec_state: Path, local_kv: LocalKv, tmp_path_factory: pytest.TempPathFactory
) -> None:
    worker = start_spec_worker(local_kv, tmp_path_factory.mktemp("sticky-unreadable"), none_bundle, spec_state, [])
    try:
        with fresh_session() as http:
            body = {
                "flags": [UNREADABLE_FLAG, "flags/simple-flag"],
                "clientSecret": "test-secret",
                "evaluationContext": {"targeting_key": "user1", "country": "SE"},
            }
            resp = http.post(worker.url("/v1/flags:resolve"), json=body, timeout=REQUEST_TIMEOUT)
            assert resp.status_code == 200, resp.text
            got = {f["flag"]: f for f in resp.json()["resolvedFlags"]}
            # No variant (the SDK serves its default), not an exposure.
            assert got[UNREADABLE_FLAG] == {"flag": UNREADABLE_FLAG, "reason": "RESOLVE_REASON_MATERIALIZATION_NOT_SUPPORTED"}, got
            # The rest of the request is unaffected.
            assert got["flags/simple-flag"]["reason"] == "RESOLVE_REASON_MATCH", got
            assert got["flags/simple-flag"]["variant"] == "on", got

            # Counted: flushed to the Queue within ~1 s, then the consumer's
            # batch timeout and KV write; 15 s is ample.
            def counted() -> str | None:
                r = http.get(worker.url("/metrics"), headers={"Authorization": "ClientSecret test-secret"}, timeout=REQUEST_TIMEOUT)
                assert r.status_code == 200, r.text
                return r.text if "\nedgeflag_sticky_read_failures_total 1\n" in r.text else None

            text = poll(counted, attempts=30, interval=0.5)
            assert text, "edgeflag_sticky_read_failures_total did not reach 1 on /metrics within ~15 s"
            assert 'confidence_resolves_total{resolver_id="edgeflag",reason="RESOLVE_REASON_MATERIALIZATION_NOT_SUPPORTED"} 1\n' in text
        # By now the response's waitUntil work is long done: nothing was
        # written (taken as "not stored", the flag would have assigned and
        # stored a variant in WRITTEN_MAT).
        assert stored(local_kv, worker) == []
    finally:
        worker.stop()


def test_edgeflag_writes_the_variant_as_the_value(http: requests.Session, worker: Worker, local_kv: LocalKv) -> None:
    """What the reference worker reads (the raw value), and edgeflag's
    metadata next to it; the demo state's sticky experiment."""
    flag = "flags/pricing-experiment"
    unit = f"raw-{uuid.uuid4().hex}"
    body = {
        "flags": [flag],
        "clientSecret": "demo-secret",
        "evaluationContext": {"targeting_key": unit, "plan": "premium", "email": "buyer@customer.test"},
    }
    resp = http.post(worker.url("/v1/flags:resolve"), json=body, timeout=REQUEST_TIMEOUT)
    assert resp.status_code == 200, resp.text
    resolved = resp.json()["resolvedFlags"][0]
    assert resolved["reason"] == "RESOLVE_REASON_MATCH", resolved
    variant, rule = resolved["variant"], resolved["assignmentOrigin"]
    assert variant and rule.startswith(flag + "/rules/"), resolved
    mats = {r["name"]: r.get("materializationSpec", {}) for r in demo_flag(flag)["rules"]}
    mat = mats[rule]["writeMaterialization"]
    key = kv_key(unit, mat, rule)

    # Written after the response (waitUntil): bounded wait for the key.
    def listed() -> list[dict]:
        return stored(local_kv, worker, key)

    keys = poll(listed, attempts=20, interval=0.5)
    assert keys, f"{key} was not written within ~10 s"
    assert [k["name"] for k in keys] == [key]
    assert keys[0].get("metadata") == {"v": variant}, keys
    assert local_kv.get(worker.state_dir, "MATERIALIZATIONS_KV", key) == variant.encode()


def demo_flag(name: str) -> dict:
    demo = json.loads((REPO / "src" / "demo_state.json").read_text(encoding="utf-8"))
    flags = demo["flags"]
    if isinstance(flags, dict):
        return flags[name]
    return next(f for f in flags if f["name"] == name)
