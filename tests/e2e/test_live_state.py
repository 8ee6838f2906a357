"""Live flag state under `wrangler dev`: states pushed into the instance's
local STATE_KV with scripts/push-state.sh (and, for the rejections, blobs
and pointers written with `wrangler kv`) change what the running Worker
serves within STATE_REFRESH_SECONDS, with no restart.

- Alternation: 32 connections resolve continuously while two states are
  pushed in turn; every response equals `edgeflag resolve` on the state its
  x-edgeflag-state-etag names, no old-state response follows a new-state
  one, and none fails.
- Rejections (missing blob, sha256 mismatch, truncated, undecodable, JSON,
  corrupt bitset): the previous state keeps serving, /metrics counts the
  result and the worker log's JSON line names the reason.
- /readyz before the first state and after it; MAX_STATE_AGE_SECONDS.
- The recommended production build, EDGEFLAG_STATE=none (the none_bundle
  fixture): 503 with a JSON reason on every state route until the first
  push, then 200 with the pushed state's etag; and a cold isolate's
  concurrent first requests share one load.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import CLI, REPO, Bundle, LocalKv, Worker, fresh_session, launch_worker, parse_prometheus, poll, push_fast

SECRET = "demo-secret"
DEMO = REPO / "src" / "demo_state.json"
TIMEOUT = 10


@pytest.fixture(scope="module")
def states(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A (the demo state), B (the demo state with other values), and a
    copy of the demo state whose nordics bitset is corrupt gzip."""
    d = tmp_path_factory.mktemp("states")
    a = json.loads(DEMO.read_text())
    b = json.loads(DEMO.read_text())
    for flag in b["flags"].values():
        for v in flag.get("variants", []):
            if isinstance(v.get("value"), dict) and "message" in v["value"]:
                v["value"]["message"] = "state B: " + v["value"]["message"]
    (d / "a.json").write_text(json.dumps(a))
    (d / "b.json").write_text(json.dumps(b))
    return {"a": d / "a.json", "b": d / "b.json", "dir": d}


def push(worker: Worker, path: Path, *extra: str) -> str:
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "push-state.sh"), str(path), "--local",
         "--persist-to", str(worker.state_dir), "--config", str(worker.config_path), *extra],
        cwd=REPO, env=dict(os.environ, EDGEFLAG_CLI=str(CLI)), capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    etag = out.stdout.strip()
    assert len(etag) == 32, out.stdout
    return etag


def kv_put(kv: LocalKv, worker: Worker, entries: dict[str, bytes]) -> None:
    """Writes raw values into the instance's STATE_KV, in order."""
    for key, value in entries.items():
        kv.put(worker.state_dir, "STATE_KV", key, value)


def pointer_for(etag: str, blob: bytes, size: int | None = None, sha: str | None = None) -> bytes:
    return json.dumps({
        "etag": etag, "bytes": len(blob) if size is None else size,
        "sha256": sha or hashlib.sha256(blob).hexdigest(), "account": "edgeflag-demo",
        "pushedAt": "2026-01-01T00:00:00Z", "source": "test",
    }).encode()


REQUESTS = [
    {"country": c, "plan": p, "app": {"version": v}}
    for c in ("SE", "US") for p in ("premium", "free") for v in ("2.1.0", "1.0.0")
]


def body(i: int) -> dict:
    ctx = dict(REQUESTS[i % len(REQUESTS)], targeting_key=f"user-{i}")
    return {"clientSecret": SECRET, "flags": [], "evaluationContext": ctx, "apply": False}


def expected(cli: Path, state: Path, n: int) -> list[list]:
    out = []
    for i in range(n):
        r = subprocess.run([str(cli), "resolve", "--state", str(state)], input=json.dumps(body(i)),
                           capture_output=True, text=True, timeout=30, check=True)
        out.append(json.loads(r.stdout)["resolvedFlags"])
    return out


def serving(http: requests.Session, worker: Worker) -> str | None:
    r = http.get(worker.url("/v1/state:etag"), timeout=TIMEOUT)
    return r.json().get("etag") if r.status_code == 200 else None


def wait_serving(http: requests.Session, worker: Worker, etag: str) -> None:
    assert poll(lambda: serving(http, worker) == etag, 60, 0.5), f"{etag} never served:\n{worker.log_tail()}"


def loads(http: requests.Session, worker: Worker) -> dict[str, float]:
    r = http.get(worker.url("/metrics?consistent=1"), headers={"Authorization": f"ClientSecret {SECRET}"}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return {k: v for k, v in parse_prometheus(r.text).items() if k.startswith("edgeflag_state_loads_total")}


def load_count(m: dict[str, float], source: str, result: str) -> float:
    return m.get(f'edgeflag_state_loads_total{{source="{source}",result="{result}"}}', 0.0)


def state_load_lines(worker: Worker) -> list[dict]:
    """The worker's state_load log lines (JSON, after wrangler's prefix)."""
    dec = json.JSONDecoder()
    return [dec.raw_decode(line[line.index("{"):])[0]
            for line in worker.log_tail(1_000_000).splitlines() if '"event":"state_load"' in line]


LIVE = {"STATE_REFRESH_SECONDS": "1"}


@pytest.mark.parametrize("worker", [{"vars": LIVE}], indirect=True)
def test_alternating_pushes_under_load(
    worker: Worker, http: requests.Session, cli: Path, states: dict, local_kv: LocalKv
) -> None:
    n = 16
    want = {}
    etag_a = push_fast(local_kv, worker.state_dir, states["a"])
    wait_serving(http, worker, etag_a)
    want[etag_a] = expected(cli, states["a"], n)
    etag_b = None

    results: list[tuple[float, float, int, str | None, object]] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client(k: int) -> None:
        s = requests.Session()
        i = k
        for _ in range(5000):  # bounded; stop ends it long before
            if stop.is_set():
                break
            t0 = time.monotonic()
            try:
                r = s.post(worker.url("/v1/flags:resolve"), json=body(i % n), timeout=TIMEOUT)
                got = (r.status_code, r.headers.get("x-edgeflag-state-etag"), r.json().get("resolvedFlags"))
            except (requests.RequestException, ValueError) as e:
                got = (0, None, repr(e))
            with lock:
                results.append((t0, time.monotonic(), i % n, got[1], got))
            i += 32

    threads = [threading.Thread(target=client, args=(k,)) for k in range(32)]
    for t in threads:
        t.start()
    pushes: list[tuple[float, str]] = [(0.0, etag_a)]
    try:
        for path in ("b", "a", "b", "a"):
            started = time.monotonic()
            etag = push_fast(local_kv, worker.state_dir, states[path])
            if path == "b" and etag_b is None:
                etag_b = etag
                want[etag_b] = expected(cli, states["b"], n)
            pushes.append((started, etag))
            wait_serving(http, worker, etag)
            time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert etag_b and etag_b != etag_a

    failed = [r for r in results if r[4][0] != 200]
    assert not failed, f"{len(failed)} of {len(results)} requests failed, e.g. {failed[:3]}"
    assert len(results) > 200, "the clients hardly ran"
    for _, _, i, etag, (_, _, flags) in results:
        assert etag in want, f"unknown state etag {etag}"
        assert flags == want[etag][i], f"response for request {i} does not match `edgeflag resolve` on {etag}"
    # Once push k's state was seen, no response started later (and before
    # the next push) comes from the state before it.
    by_end = sorted(results, key=lambda r: r[1])
    for k in range(1, len(pushes)):
        start_k, etag_k = pushes[k]
        next_start = pushes[k + 1][0] if k + 1 < len(pushes) else float("inf")
        first_seen = next((r[1] for r in by_end if r[0] >= start_k and r[3] == etag_k), None)
        assert first_seen is not None, f"push {k} ({etag_k}) was never served"
        stale = [r for r in results if first_seen < r[0] < next_start and r[3] != etag_k]
        assert not stale, f"{len(stale)} responses from the old state after push {k} was served"
    seen = {r[3] for r in results}
    assert seen == {etag_a, etag_b}, seen


REJECTIONS = [
    # (name, result label, a phrase of the logged reason)
    ("missing", "missing_blob", "does not have"),
    ("sha", "checksum_mismatch", "sha256"),
    ("truncated", "size_mismatch", "bytes; the pointer says"),
    ("garbage", "invalid", "rejected"),
    ("bitset", "invalid", "deflate"),
    # The isolate decodes protobuf only: a JSON state is refused with the fix.
    ("json", "invalid", "edgeflag convert"),
]


@pytest.mark.parametrize("worker", [{"vars": dict(LIVE, MAX_STATE_AGE_SECONDS="3")}], indirect=True)
def test_rejected_states_keep_the_previous_one(
    worker: Worker, http: requests.Session, cli: Path, states: dict, local_kv: LocalKv
) -> None:
    etag_a = push_fast(local_kv, worker.state_dir, states["a"])
    wait_serving(http, worker, etag_a)
    d = states["dir"]
    a_blob = subprocess.run([str(cli), "convert", "--state", str(states["a"]), "--to", "envelope"],
                            capture_output=True, check=True, timeout=30).stdout
    corrupt_json = d / "corrupt.pj.json"
    subprocess.run([str(cli), "convert", "--state", str(states["a"]), "--to", "json", "--out", str(corrupt_json)],
                   check=True, timeout=30)
    pj = json.loads(corrupt_json.read_text())
    bs = next(b for b in pj["bitsets"] if b["segment"] == "segments/nordics")
    bs.pop("fullBitset", None)
    bs["gzippedBitset"] = base64.b64encode(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"not deflate" * 20).decode()
    corrupt_json.write_text(json.dumps(pj))
    corrupt = subprocess.run([str(cli), "convert", "--state", str(corrupt_json), "--account", "edgeflag-demo",
                              "--to", "envelope"], capture_output=True, check=True, timeout=30).stdout
    garbage = b"this is not a protobuf envelope" * 3
    json_state = states["a"].read_bytes()  # valid, but JSON
    fake = lambda c: c * 32  # noqa: E731
    blobs = {
        f"state:blob:{fake('2')}": a_blob,  # sha256 in its pointer is wrong
        f"state:blob:{fake('3')}": a_blob[: len(a_blob) // 2],  # truncated
        f"state:blob:{fake('4')}": garbage,
        f"state:blob:{fake('5')}": corrupt,
        f"state:blob:{fake('6')}": json_state,
    }
    pointers = {
        "missing": pointer_for(fake("1"), a_blob),
        "sha": pointer_for(fake("2"), a_blob, sha="0" * 64),
        "truncated": pointer_for(fake("3"), a_blob),
        "garbage": pointer_for(fake("4"), garbage),
        "bitset": pointer_for(fake("5"), corrupt),
        "json": pointer_for(fake("6"), json_state),
    }
    kv_put(local_kv, worker, blobs)

    for name, result, phrase in REJECTIONS:
        etag = json.loads(pointers[name])["etag"]
        kv_put(local_kv, worker, {"state:current": pointers[name]})

        # The log line names this pointer's etag and the reason ...
        def logged() -> list[dict] | None:
            http.post(worker.url("/v1/flags:resolve"), json=body(0), timeout=TIMEOUT)  # drives refresh + flush
            lines = [x for x in state_load_lines(worker) if x["source"] == "kv" and x["result"] == result]
            return lines if any(x["etag"] == etag and phrase in x["reason"] for x in lines) else None

        lines = poll(logged, 60, 0.5)
        assert lines, f"{name}: no {result} log line naming {etag}:\n{worker.log_tail()}"
        # ... and /metrics has counted at least every attempt logged so far
        # with this result (cases sharing a result: this case's included).
        def counted(n: int = len(lines)) -> bool:
            http.post(worker.url("/v1/flags:resolve"), json=body(0), timeout=TIMEOUT)
            return load_count(loads(http, worker), "kv", result) >= n

        assert poll(counted, 60, 0.5), f"{name}: {result} not counted in /metrics:\n{worker.log_tail()}"
        r = http.post(worker.url("/v1/flags:resolve"), json=body(0), timeout=TIMEOUT)
        assert r.status_code == 200 and r.headers.get("x-edgeflag-state-etag") == etag_a, (name, r.status_code)

    # The pointer has gone unconfirmed (every refresh rejected) for longer
    # than MAX_STATE_AGE_SECONDS: not ready, while still serving.
    def not_ready() -> bool:
        r = http.get(worker.url("/readyz"), timeout=TIMEOUT)
        return r.status_code == 503 and "MAX_STATE_AGE_SECONDS" in r.json()["reason"]

    assert poll(not_ready, 20, 0.5)
    assert serving(http, worker) == etag_a
    # A good pointer again confirms it: ready.
    kv_put(local_kv, worker, {"state:current": pointer_for(etag_a, a_blob)})
    assert poll(lambda: http.get(worker.url("/readyz"), timeout=TIMEOUT).status_code == 200, 40, 0.5)


@pytest.mark.parametrize("worker", [{"vars": dict(LIVE, EMBEDDED_STATE="off")}], indirect=True)
def test_readyz_before_and_after_the_first_state(worker: Worker, http: requests.Session, states: dict) -> None:
    assert http.get(worker.url("/healthz"), timeout=TIMEOUT).status_code == 200
    r = http.get(worker.url("/readyz"), timeout=TIMEOUT)
    assert r.status_code == 503, r.text
    assert r.json()["ready"] is False and "STATE_KV" in r.json()["reason"]
    r = http.post(worker.url("/v1/flags:resolve"), json=body(0), timeout=TIMEOUT)
    assert r.status_code == 503 and r.json()["error"]["code"] == "UNAVAILABLE"
    assert http.get(worker.url("/v1/state:etag"), timeout=TIMEOUT).status_code == 503

    etag = push(worker, states["a"])
    assert poll(lambda: http.get(worker.url("/readyz"), timeout=TIMEOUT).status_code == 200, 40, 0.5)
    r = http.get(worker.url("/v1/state:etag"), timeout=TIMEOUT)
    info = r.json()
    assert info["etag"] == etag and info["source"] == "kv" and info["ageSeconds"] <= 5, info
    assert info["loadedAt"].endswith("Z") and info["version"]
    assert r.headers.get("x-edgeflag-state-etag") == etag
    r = http.post(worker.url("/v1/flags:resolve"), json=body(0), timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers.get("x-edgeflag-state-etag") == etag


OFREP_AUTH = {"Authorization": f"Bearer {SECRET}"}
OFREP_CTX = {"context": {"targetingKey": "user-1", "country": "SE"}}


def test_a_none_build_is_unavailable_until_its_first_state(
    none_bundle: Bundle, http: requests.Session, states: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    worker = launch_worker(tmp_path_factory.mktemp("none-build"), LIVE, bundle=none_bundle)
    try:
        r = http.get(worker.url("/healthz"), timeout=TIMEOUT)
        assert r.status_code == 200 and r.json()["embeddedEtag"] == "none" and r.json()["serving"] is None, r.text
        r = http.get(worker.url("/readyz"), timeout=TIMEOUT)
        assert r.status_code == 503 and r.headers["Content-Type"].startswith("application/json"), r.text
        assert r.json()["ready"] is False and "EDGEFLAG_STATE=none" in r.json()["reason"], r.text
        r = http.post(worker.url("/v1/flags:resolve"), json=body(0), timeout=TIMEOUT)
        assert r.status_code == 503 and r.json()["error"]["code"] == "UNAVAILABLE", r.text
        assert "no valid flag state" in r.json()["error"]["message"], r.text
        assert "x-edgeflag-state-etag" not in r.headers
        r = http.post(worker.url("/ofrep/v1/evaluate/flags/welcome-banner"), json=OFREP_CTX, headers=OFREP_AUTH,
                      timeout=TIMEOUT)
        assert r.status_code == 503 and r.json()["errorCode"] == "GENERAL", r.text
        assert r.json()["key"] == "welcome-banner" and "no valid flag state" in r.json()["errorDetails"], r.text
        r = http.post(worker.url("/ofrep/v1/evaluate/flags"), json=OFREP_CTX, headers=OFREP_AUTH, timeout=TIMEOUT)
        assert r.status_code == 503 and r.json()["errorCode"] == "GENERAL", r.text
        assert http.get(worker.url("/v1/state:etag"), timeout=TIMEOUT).status_code == 503

        etag = push(worker, states["a"])
        assert poll(lambda: http.get(worker.url("/readyz"), timeout=TIMEOUT).status_code == 200, 40, 0.5), \
            worker.log_tail()
        r = http.get(worker.url("/readyz"), timeout=TIMEOUT)
        assert r.json()["etag"] == etag and r.json()["source"] == "kv", r.text
        r = http.post(worker.url("/v1/flags:resolve"), json=body(0), timeout=TIMEOUT)
        assert r.status_code == 200 and r.headers.get("x-edgeflag-state-etag") == etag, r.text
        assert r.json()["resolvedFlags"], r.text
        r = http.post(worker.url("/ofrep/v1/evaluate/flags/welcome-banner"), json=OFREP_CTX, headers=OFREP_AUTH,
                      timeout=TIMEOUT)
        assert r.status_code == 200 and r.headers.get("x-edgeflag-state-etag") == etag, r.text
        assert r.json()["value"]["message"] == "Hej och välkommen!", r.text
        r = http.post(worker.url("/ofrep/v1/evaluate/flags"), json=OFREP_CTX, headers=OFREP_AUTH, timeout=TIMEOUT)
        assert r.status_code == 200 and r.headers.get("x-edgeflag-state-etag") == etag, r.text
        r = http.get(worker.url("/healthz"), timeout=TIMEOUT)
        assert r.json()["embeddedEtag"] == "none" and r.json()["serving"] == etag, r.text
    finally:
        worker.stop()


def test_a_cold_isolate_shares_one_first_load(
    none_bundle: Bundle, states: dict, tmp_path_factory: pytest.TempPathFactory, cli: Path, local_kv: LocalKv
) -> None:
    """16 concurrent first requests to an isolate with no state, a state
    already pushed: one pointer read and one blob load between them (one
    `ok` load counted and logged), every request answered from it. The
    state is padded to 3000 flags (830 KB of blob, about 0.7 s to load
    here) so that the requests surely arrive while the load runs: with a
    load per request, this state gave 7 `ok` loads for 16 requests."""
    big = json.loads(DEMO.read_text())
    template = json.dumps(big["flags"]["flags/search-tuning"])
    for i in range(3000):
        big["flags"][f"flags/pad-{i}"] = json.loads(template.replace("flags/search-tuning", f"flags/pad-{i}"))
    big_path = states["dir"] / "big.json"
    big_path.write_text(json.dumps(big))
    worker = launch_worker(tmp_path_factory.mktemp("cold-load"), LIVE, bundle=none_bundle)
    try:
        etag = push_fast(local_kv, worker.state_dir, big_path)  # before any request that loads (/healthz does not)
        n = 16
        gate = threading.Barrier(n)

        def first(i: int) -> tuple[int, str | None]:
            with fresh_session() as s:
                gate.wait(timeout=30)
                r = s.post(worker.url("/v1/flags:resolve"), json=dict(body(i), flags=["flags/welcome-banner"]),
                           timeout=30)
                return r.status_code, r.headers.get("x-edgeflag-state-etag")

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(n) as pool:
            answers = list(pool.map(first, range(n)))
        assert answers == [(200, etag)] * n, answers

        def ok_lines() -> list[dict]:
            return [x for x in state_load_lines(worker) if x["source"] == "kv" and x["result"] == "ok"]

        # wrangler writes the log a moment later.
        assert poll(ok_lines, 20, 0.25), worker.log_tail()
        with fresh_session() as http:
            def counted() -> bool:
                http.post(worker.url("/v1/flags:resolve"), json=body(0), timeout=TIMEOUT)  # drives the flush
                return load_count(loads(http, worker), "kv", "ok") >= 1

            assert poll(counted, 40, 0.5), worker.log_tail()
            # Two flush intervals and a flush later, any other load would be counted.
            time.sleep(2.5)
            http.post(worker.url("/v1/flags:resolve"), json=body(0), timeout=TIMEOUT)
            time.sleep(1.5)
            assert load_count(loads(http, worker), "kv", "ok") == 1, loads(http, worker)
        assert len(ok_lines()) == 1, ok_lines()
    finally:
        worker.stop()


def test_push_refuses_an_invalid_state_and_is_canonical(worker: Worker, cli: Path, states: dict, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    s = json.loads(DEMO.read_text())
    s["flags"]["flags/welcome-banner"]["rules"][0]["segment"] = 42
    bad.write_text(json.dumps(s))
    out = subprocess.run(["bash", str(REPO / "scripts" / "push-state.sh"), str(bad), "--local",
                          "--persist-to", str(worker.state_dir), "--config", str(worker.config_path)],
                         cwd=REPO, env=dict(os.environ, EDGEFLAG_CLI=str(cli)), capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "nothing pushed" in out.stderr, out.stderr
    # The same state in two encodings gives one etag.
    pb = tmp_path / "a.pb"
    subprocess.run([str(cli), "convert", "--state", str(states["a"]), "--to", "envelope", "--out", str(pb)], check=True)
    etags = set()
    for p in (states["a"], pb):
        ptr = tmp_path / "p.json"
        subprocess.run([str(cli), "convert", "--state", str(p), "--to", "envelope", "--out", str(tmp_path / "o"),
                        "--pointer", str(ptr)], check=True)
        etags.add(json.loads(ptr.read_text())["etag"])
    assert len(etags) == 1, etags


# --- The Confidence CDN source (cron) ----------------------------------------

ENCRYPT_JS = """
const c = require("crypto"), fs = require("fs");
const [key, input, output] = process.argv.slice(1);
const nonce = c.randomBytes(12);
const ci = c.createCipheriv("aes-256-gcm", Buffer.from(key, "hex"), nonce);
const body = Buffer.concat([ci.update(fs.readFileSync(input)), ci.final()]);
fs.writeFileSync(output, Buffer.concat([nonce, body, ci.getAuthTag()]));
"""


class Cdn:
    """A stand-in for the Confidence state CDN on 127.0.0.1: serves one
    object with an ETag (304 on a matching If-None-Match), or a set status;
    accepts flag-log POSTs too (FLAG_LOGS_ENDPOINT), so nothing leaves the
    machine."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        cdn = self
        self.body, self.etag, self.status = b"", "", 200
        self.seen: list[tuple[str, str | None]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                inm = self.headers.get("If-None-Match")
                cdn.seen.append((self.path, inm))
                if cdn.status != 200:
                    self.send_response(cdn.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif inm and inm.strip('"') == cdn.etag:
                    self.send_response(304)
                    self.send_header("ETag", f'"{cdn.etag}"')
                    self.end_headers()
                else:
                    self.send_response(200)
                    self.send_header("ETag", f'"{cdn.etag}"')
                    self.send_header("Content-Length", str(len(cdn.body)))
                    self.end_headers()
                    self.wfile.write(cdn.body)

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_cdn_cron_tick(start_worker, http: requests.Session, cli: Path, states: dict, tmp_path: Path) -> None:
    from conftest import DEFAULT_SECRETS

    key = os.urandom(32).hex()
    secret = "cdn-test-backend-secret"
    cdn = Cdn()
    try:
        worker = start_worker(
            vars=dict(LIVE, STATE_CDN_BASE=f"http://127.0.0.1:{cdn.port}",
                      FLAG_LOGS_ENDPOINT=f"http://127.0.0.1:{cdn.port}/logs"),
            secrets=dict(DEFAULT_SECRETS, CONFIDENCE_CLIENT_SECRET=secret, STATE_ENCRYPTION_KEY=key),
        )
        plain, ptr = tmp_path / "b.envelope", tmp_path / "b.pointer"
        subprocess.run([str(cli), "convert", "--state", str(states["b"]), "--to", "envelope", "--out", str(plain),
                        "--pointer", str(ptr)], check=True, timeout=30)
        etag_b = json.loads(ptr.read_text())["etag"]
        enc = tmp_path / "b.enc"
        subprocess.run(["node", "-e", ENCRYPT_JS, key, str(plain), str(enc)], check=True, timeout=30)
        cdn.body, cdn.etag = enc.read_bytes(), "v1"
        embedded = serving(http, worker)
        assert embedded and embedded != etag_b

        def tick() -> None:
            r = http.get(worker.url("/cdn-cgi/handler/scheduled"), timeout=30)
            assert r.status_code == 200, r.text

        def counted(result: str, before: float) -> bool:
            http.post(worker.url("/v1/flags:resolve"), json=body(0), timeout=TIMEOUT)
            return load_count(loads(http, worker), "cdn", result) > before

        # 200: decrypted, validated, written; every isolate's refresh serves it.
        tick()
        want_path = f"/{hashlib.sha256(secret.encode()).hexdigest()}.enc"
        assert cdn.seen and cdn.seen[-1] == (want_path, None), cdn.seen
        wait_serving(http, worker, etag_b)
        assert poll(lambda: counted("ok", 0), 40, 0.5), worker.log_tail()

        # 304: If-None-Match carries the CDN's ETag; nothing written.
        tick()
        assert cdn.seen[-1] == (want_path, '"v1"'), cdn.seen
        assert poll(lambda: counted("unchanged", 0), 40, 0.5), worker.log_tail()
        assert serving(http, worker) == etag_b

        # 500: counted, the last good state keeps serving.
        cdn.status = 500
        tick()
        assert poll(lambda: counted("fetch_failed", 0), 40, 0.5), worker.log_tail()
        assert serving(http, worker) == etag_b

        # A new object that does not decrypt: counted, nothing written.
        cdn.status, cdn.body, cdn.etag = 200, os.urandom(200), "v2"
        tick()
        assert poll(lambda: counted("decrypt_failed", 0), 40, 0.5), worker.log_tail()
        assert serving(http, worker) == etag_b
        assert any(x["source"] == "cdn" and x["result"] == "fetch_failed" and "HTTP 500" in x["reason"]
                   for x in state_load_lines(worker))
    finally:
        cdn.close()


# --- Sticky assignments across a state change ---------------------------------

PRICING = "flags/pricing-experiment"
CONTROL = "flags/pricing-experiment/variants/control"


def list_sticky_keys(kv: LocalKv, worker: Worker, prefix: str) -> set[str]:
    return {k["name"] for k in kv.list(worker.state_dir, "MATERIALIZATIONS_KV", prefix)}


def test_sticky_assignments_survive_a_push_that_changes_the_allocation(
    start_worker, http: requests.Session, cli: Path, states: dict, local_kv: LocalKv
) -> None:
    worker = start_worker(vars=LIVE, label="sticky-push")
    # C: the experiment now sends 999 of 1000 buckets to control (discount
    # stays an assignment: a stored variant the rule no longer assigns is
    # not sticky, per the Confidence semantics).
    c = json.loads(DEMO.read_text())
    spec = next(r for r in c["flags"][PRICING]["rules"] if "materializationSpec" in r)["assignmentSpec"]
    n = spec["bucketCount"]
    for a in spec["assignments"]:
        ctrl = a["variant"]["variant"] == CONTROL
        a["bucketRanges"] = [{"lower": 0, "upper": n - 1}] if ctrl else [{"lower": n - 1, "upper": n}]
    state_c = states["dir"] / "c.json"
    state_c.write_text(json.dumps(c))

    run = os.urandom(4).hex()
    units = [f"u{run}-{i}" for i in range(32)]

    def pricing(unit: str) -> dict:
        r = http.post(worker.url("/v1/flags:resolve"), timeout=TIMEOUT, json={
            "clientSecret": SECRET, "flags": [PRICING],
            "evaluationContext": {"targeting_key": unit, "plan": "premium", "email": "b@customer.test"}})
        assert r.status_code == 200, r.text
        (f,) = r.json()["resolvedFlags"]
        return f

    # 32 concurrent first resolves for distinct units: every write lands.
    from concurrent.futures import ThreadPoolExecutor

    def first(unit: str) -> str:
        s = requests.Session()
        r = s.post(worker.url("/v1/flags:resolve"), timeout=TIMEOUT, json={
            "clientSecret": SECRET, "flags": [PRICING],
            "evaluationContext": {"targeting_key": unit, "plan": "premium", "email": "b@customer.test"}})
        assert r.status_code == 200, r.text
        return r.json()["resolvedFlags"][0]["variant"]

    with ThreadPoolExecutor(32) as pool:
        before = dict(zip(units, pool.map(first, units)))
    assert set(before.values()) == {CONTROL, "flags/pricing-experiment/variants/discount"}, before
    prefix = f"mat:u{run}-"

    def all_written() -> set[str] | None:
        k = list_sticky_keys(local_kv, worker, prefix)
        return k if len(k) >= len(units) else None

    keys = poll(all_written, 20, 1.0)
    assert keys and {k.split(":")[1] for k in keys} == set(units), f"lost writes: {sorted(keys or [])}"

    etag_c = push_fast(local_kv, worker.state_dir, state_c)
    wait_serving(http, worker, etag_c)
    for unit in units:
        assert pricing(unit)["variant"] == before[unit], unit
    # Fresh units land by the new allocation: as `edgeflag resolve` on C says.
    for i in range(8):
        unit = f"fresh-{run}-{i}"
        req = {"clientSecret": SECRET, "flags": [PRICING],
               "evaluationContext": {"targeting_key": unit, "plan": "premium", "email": "b@customer.test"}}
        r = subprocess.run([str(CLI), "resolve", "--state", str(state_c)], input=json.dumps(req),
                           capture_output=True, text=True, timeout=30, check=True)
        want = json.loads(r.stdout)["resolvedFlags"][0]["variant"]
        assert pricing(unit)["variant"] == want, unit
    assert sum(before[u] == CONTROL for u in units) < len(units), "some units kept discount"
