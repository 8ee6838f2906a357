"""The bad-input catalogue (issue 15, item 3) and the secret-leak test (item 5).

CATALOGUE is one table: each row is a request (method, path, headers, body
bytes, how it is sent) and the answer it must get (status and error code, in
the route's error shape). One instance with every secret configured serves the
whole table; afterwards it must still answer exactly as `edgeflag resolve`
does, count exactly the resolves sent after a reset point, and no captured
response, sink body, metric or log line may hold a configured secret.

Rows may hold placeholders, filled in when sent: @TOKEN@ (a resolve token
issued here for the web client), @STAGING_TOKEN@ (one for the staging client),
@OLD_TOKEN@ (one sealed with a key this instance no longer has), @NOW@
(RFC 3339 now), @METRICS_TOKEN@ and @INGEST_TOKEN@.
"""

from __future__ import annotations

import base64
import http.client as httpclient
import json
import os
import select
import socket
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from requests.structures import CaseInsensitiveDict

import pytest
import requests

from conftest import (
    DEMO_SECRET,
    DEMO_STAGING_SECRET,
    NO_FORCE_APPLY,
    REPO,
    REQUEST_TIMEOUT,
    Worker,
    assert_cors,
    assert_error,
    launch_worker,
    parse_prometheus,
    random_token_key,
    secret_forms,
)
from test_telemetry import Sink

MAX_BODY_BYTES = 256 * 1024  # crate::api::MAX_BODY_BYTES
WELCOME = "flags/welcome-banner"
CHECKOUT = "flags/new-checkout"
EDGEFLAG = REPO / "target" / "debug" / "edgeflag"
DEMO_STATE = REPO / "src" / "demo_state.json"
JSON = {"Content-Type": "application/json"}
AUTH = {**JSON, "Authorization": f"Bearer {DEMO_SECRET}"}
SINGLE = "/ofrep/v1/evaluate/flags/"
BULK = "/ofrep/v1/evaluate/flags"

# Every secret this instance is configured with; none may leak.
SECRETS = {
    "RESOLVE_TOKEN_KEY": random_token_key(),
    "RESOLVE_TOKEN_KEYS_PREVIOUS": random_token_key() + "," + random_token_key(),
    "METRICS_TOKEN": "mt-" + uuid.uuid4().hex,
    "METRICS_INGEST_TOKEN": "it-" + uuid.uuid4().hex,
    "CONFIDENCE_CLIENT_SECRET": "cs-" + uuid.uuid4().hex,
}


def j(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def nested(depth: int) -> bytes:
    return j({"clientSecret": DEMO_SECRET})[:-1] + b', "evaluationContext": {"a": ' + b"[" * depth + b"1" + b"]" * depth + b"}}"


def ctx(context: Any, **extra: Any) -> bytes:
    return j({"clientSecret": DEMO_SECRET, "evaluationContext": context, **extra})


def apply_with(token: str, secret: str = DEMO_SECRET, flag: str = WELCOME) -> bytes:
    return j({"clientSecret": secret, "resolveToken": token, "sendTime": "@NOW@", "flags": [{"flag": flag, "applyTime": "@NOW@"}]})


def forged_token(version: int = 1) -> str:
    # version, 8-byte key id, 12-byte nonce, ciphertext, 16-byte tag: well formed, sealed by no one.
    return base64.b64encode(bytes([version]) + os.urandom(8 + 12 + 40 + 16)).decode()


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    code: str | None  # None: a success (2xx/304) or a 404/405 whose shape is checked by route
    send: str = "requests"  # "requests" | "chunked" (no Content-Length) | "raw" (path bytes as they are)


def C(name: str, method: str, path: str, headers: dict[str, str], body: bytes, status: int, code: str | None, send: str = "requests") -> Case:  # noqa: E501
    return Case(name, method, path, headers, body, status, code, send)


R, A, T = "/v1/flags:resolve", "/v1/flags:apply", "/v1/telemetry:upload"
BIG = b'{"clientSecret": "demo-secret", "evaluationContext": {"pad": "' + b"x" * MAX_BODY_BYTES + b'"}}'
BAD = "INVALID_ARGUMENT"

CATALOGUE: list[Case] = [
    # --- flags:resolve: syntax -------------------------------------------------
    C("resolve-empty-body", "POST", R, JSON, b"", 400, BAD),
    C("resolve-whitespace", "POST", R, JSON, b" \r\n\t", 400, BAD),
    C("resolve-truncated", "POST", R, JSON, b'{"clientSecret": "demo-sec', 400, BAD),
    C("resolve-truncated-context", "POST", R, JSON, b'{"clientSecret": "demo-secret", "evaluationContext": {"a": [1, 2', 400, BAD),
    C("resolve-trailing-garbage", "POST", R, JSON, b'{"clientSecret": "demo-secret"} x', 400, BAD),
    C("resolve-single-quotes", "POST", R, JSON, b"{'clientSecret': 'demo-secret'}", 400, BAD),
    C("resolve-json-null", "POST", R, JSON, b"null", 400, BAD),
    C("resolve-json-array", "POST", R, JSON, b"[]", 400, BAD),
    C("resolve-bom", "POST", R, JSON, b'\xef\xbb\xbf{"clientSecret": "demo-secret"}', 400, BAD),
    C("resolve-invalid-utf8", "POST", R, JSON, b'{"clientSecret": "demo-secret", "evaluationContext": {"targeting_key": "\xc3\x28"}}', 400, BAD),
    C("resolve-utf16", "POST", R, JSON, '{"clientSecret": "demo-secret"}'.encode("utf-16"), 400, BAD),
    C("resolve-lone-surrogate", "POST", R, JSON, b'{"clientSecret": "demo-secret", "evaluationContext": {"k": "\\udc00"}}', 400, BAD),
    # --- flags:resolve: types ---------------------------------------------------
    C("resolve-secret-number", "POST", R, JSON, j({"clientSecret": 7}), 400, BAD),
    C("resolve-flags-string", "POST", R, JSON, j({"clientSecret": DEMO_SECRET, "flags": WELCOME}), 400, BAD),
    C("resolve-flags-numbers", "POST", R, JSON, j({"clientSecret": DEMO_SECRET, "flags": [1, 2]}), 400, BAD),
    C("resolve-apply-string", "POST", R, JSON, j({"clientSecret": DEMO_SECRET, "apply": "yes"}), 400, BAD),
    C("resolve-context-array", "POST", R, JSON, j({"clientSecret": DEMO_SECRET, "evaluationContext": [1]}), 400, BAD),
    C("resolve-context-string", "POST", R, JSON, j({"clientSecret": DEMO_SECRET, "evaluationContext": "{}"}), 400, BAD),
    C("resolve-sdk-number", "POST", R, JSON, j({"clientSecret": DEMO_SECRET, "sdk": 3}), 400, BAD),
    C("resolve-nan-literal", "POST", R, JSON, b'{"clientSecret": "demo-secret", "evaluationContext": {"x": NaN}}', 400, BAD),
    C("resolve-number-overflow", "POST", R, JSON, b'{"clientSecret": "demo-secret", "evaluationContext": {"x": 1e999}}', 400, BAD),
    # --- flags:resolve: sizes and depth ----------------------------------------------
    C("resolve-depth-at-bound", "POST", R, JSON, nested(125), 200, None),
    C("resolve-depth-past-bound", "POST", R, JSON, nested(126), 400, BAD),
    C("resolve-depth-10000", "POST", R, JSON, nested(10_000), 400, BAD),
    C("resolve-huge-context", "POST", R, JSON, ctx({f"attr{i}": "v" * 20 for i in range(6000)}), 200, None),
    C("resolve-1001-flags", "POST", R, JSON, j({"clientSecret": DEMO_SECRET, "flags": [f"flags/x{i}" for i in range(1001)]}), 200, None),
    C("resolve-40k-same-flag", "POST", R, JSON, j({"clientSecret": DEMO_SECRET, "flags": ["f"] * 40_000}), 200, None),
    C("resolve-duplicate-keys", "POST", R, JSON, b'{"clientSecret": "nope", "clientSecret": "demo-secret"}', 400, BAD),
    C("resolve-duplicate-context-keys", "POST", R, JSON, b'{"clientSecret": "demo-secret", "evaluationContext": {"targeting_key": 1, "targeting_key": "a"}}', 200, None),  # noqa: E501
    C("resolve-over-limit", "POST", R, JSON, BIG, 413, "PAYLOAD_TOO_LARGE"),
    C("resolve-over-limit-chunked", "POST", R, JSON, BIG, 413, "PAYLOAD_TOO_LARGE", send="chunked"),
    C("resolve-chunked-ok", "POST", R, JSON, j({"clientSecret": DEMO_SECRET, "flags": [WELCOME]}), 200, None, send="chunked"),
    # --- flags:resolve: content types (the body decides, not the header) ---------------------
    C("resolve-text-plain", "POST", R, {"Content-Type": "text/plain"}, j({"clientSecret": DEMO_SECRET}), 200, None),
    C("resolve-form-encoded", "POST", R, {"Content-Type": "application/x-www-form-urlencoded"}, b"clientSecret=demo-secret", 400, BAD),
    C("resolve-protobuf-type", "POST", R, {"Content-Type": "application/x-protobuf"}, b"\x0a\x0bdemo-secret", 400, BAD),
    # --- flags:resolve: client secrets -------------------------------------------------
    C("resolve-secret-missing", "POST", R, JSON, j({"flags": [WELCOME]}), 401, "UNAUTHENTICATED"),
    C("resolve-secret-empty", "POST", R, JSON, j({"clientSecret": ""}), 401, "UNAUTHENTICATED"),
    C("resolve-secret-unknown", "POST", R, JSON, j({"clientSecret": "not-a-secret"}), 401, "UNAUTHENTICATED"),
    C("resolve-secret-non-ascii", "POST", R, JSON, j({"clientSecret": "démo-sécret-\u4e2d"}), 401, "UNAUTHENTICATED"),
    C("resolve-secret-100k", "POST", R, JSON, j({"clientSecret": "s" * 100_000}), 401, "UNAUTHENTICATED"),
    C("resolve-secret-padded", "POST", R, JSON, j({"clientSecret": DEMO_SECRET + " "}), 401, "UNAUTHENTICATED"),
    # --- flags:resolve: flags and targeting keys ------------------------------------------
    C("resolve-unknown-flag", "POST", R, JSON, j({"clientSecret": DEMO_SECRET, "flags": ["flags/no-such-flag"]}), 200, None),
    C("resolve-key-string-101", "POST", R, JSON, ctx({"targeting_key": "k" * 101}, flags=[CHECKOUT]), 200, None),
    C("resolve-key-number", "POST", R, JSON, ctx({"targeting_key": 12345}, flags=[CHECKOUT]), 200, None),
    C("resolve-key-float", "POST", R, JSON, ctx({"targeting_key": 1.5}, flags=[CHECKOUT]), 200, None),
    C("resolve-key-bool", "POST", R, JSON, ctx({"targeting_key": True}, flags=[CHECKOUT]), 200, None),
    C("resolve-key-null", "POST", R, JSON, ctx({"targeting_key": None}, flags=[CHECKOUT]), 200, None),
    C("resolve-key-list", "POST", R, JSON, ctx({"targeting_key": ["a"]}, flags=[CHECKOUT]), 200, None),
    C("resolve-key-object", "POST", R, JSON, ctx({"targeting_key": {"id": "a"}}, flags=[CHECKOUT]), 200, None),
    # --- flags:apply ---------------------------------------------------------------
    C("apply-empty-body", "POST", A, JSON, b"", 400, BAD),
    C("apply-truncated", "POST", A, JSON, b'{"clientSecret": "demo-secret", "resolveTo', 400, BAD),
    C("apply-flags-object", "POST", A, JSON, j({"clientSecret": DEMO_SECRET, "resolveToken": "@TOKEN@", "sendTime": "@NOW@", "flags": {}}), 400, BAD),
    C("apply-unknown-secret", "POST", A, JSON, apply_with("@TOKEN@", secret="nope"), 401, "UNAUTHENTICATED"),
    C("apply-token-forged", "POST", A, JSON, apply_with(forged_token()), 400, BAD),
    C("apply-token-bad-version", "POST", A, JSON, apply_with(forged_token(9)), 400, BAD),
    C("apply-token-not-base64", "POST", A, JSON, apply_with("%%%not-base64%%%"), 400, BAD),
    C("apply-token-truncated", "POST", A, JSON, apply_with("@TOKEN_TRUNCATED@"), 400, BAD),
    C("apply-token-cross-client", "POST", A, JSON, apply_with("@STAGING_TOKEN@"), 400, BAD),
    C("apply-token-rotated-out", "POST", A, JSON, apply_with("@OLD_TOKEN@"), 400, BAD),
    C("apply-token-valid", "POST", A, JSON, apply_with("@TOKEN@"), 200, None),
    C("apply-token-replayed", "POST", A, JSON, apply_with("@TOKEN@"), 200, None),  # a replay is accepted, as upstream does
    C("apply-flag-not-in-token", "POST", A, JSON, apply_with("@TOKEN@", flag="flags/no-such-flag"), 400, BAD),
    C("apply-send-time-garbage", "POST", A, JSON, j({"clientSecret": DEMO_SECRET, "resolveToken": "@TOKEN@", "sendTime": "soon", "flags": []}), 400, BAD),
    C("apply-over-limit-chunked", "POST", A, JSON, BIG, 413, "PAYLOAD_TOO_LARGE", send="chunked"),
    # --- telemetry:upload and state:etag -----------------------------------------------
    C("telemetry-garbage", "POST", T, {"Content-Type": "application/x-protobuf"}, bytes(range(256)), 200, None),
    C("telemetry-over-limit", "POST", T, JSON, BIG, 413, "PAYLOAD_TOO_LARGE"),
    C("telemetry-get", "GET", T, {}, b"", 405, "METHOD_NOT_ALLOWED"),
    C("state-etag-post", "POST", "/v1/state:etag", JSON, b"{}", 405, "METHOD_NOT_ALLOWED"),
    C("state-etag-query", "GET", "/v1/state:etag?x=%ff", {}, b"", 200, None),
    # --- /metrics and metrics:apply --------------------------------------------------
    C("metrics-no-auth", "GET", "/metrics", {}, b"", 401, "UNAUTHENTICATED"),
    C("metrics-wrong-bearer", "GET", "/metrics", {"Authorization": "Bearer wrong"}, b"", 401, "UNAUTHENTICATED"),
    C("metrics-bearer-prefix", "GET", "/metrics", {"Authorization": "Bearer @METRICS_TOKEN_PREFIX@"}, b"", 401, "UNAUTHENTICATED"),
    C("metrics-ingest-token-is-not-metrics-token", "GET", "/metrics", {"Authorization": "Bearer @INGEST_TOKEN@"}, b"", 401, "UNAUTHENTICATED"),
    C("metrics-unknown-client-secret", "GET", "/metrics", {"Authorization": "ClientSecret nope"}, b"", 401, "UNAUTHENTICATED"),
    C("metrics-basic-scheme", "GET", "/metrics", {"Authorization": "Basic ZGVtbzpzZWNyZXQ="}, b"", 401, "UNAUTHENTICATED"),
    C("metrics-consistent-no-auth", "GET", "/metrics?consistent=1", {}, b"", 401, "UNAUTHENTICATED"),
    C("metrics-consistent-wrong", "GET", "/metrics?consistent=1", {"Authorization": "Bearer x"}, b"", 401, "UNAUTHENTICATED"),
    C("metrics-post", "POST", "/metrics", JSON, b"{}", 405, "METHOD_NOT_ALLOWED"),
    C("metrics-apply-no-auth", "POST", "/v1/metrics:apply", JSON, b"{}", 401, "UNAUTHENTICATED"),
    C("metrics-apply-metrics-token", "POST", "/v1/metrics:apply", {**JSON, "Authorization": "Bearer @METRICS_TOKEN@"}, b"{}", 401, "UNAUTHENTICATED"),
    C("metrics-apply-bad-batch", "POST", "/v1/metrics:apply", {**JSON, "Authorization": "Bearer @INGEST_TOKEN@"}, b'{"isolate": 5', 400, BAD),
    C("metrics-apply-wrong-type", "POST", "/v1/metrics:apply", {**JSON, "Authorization": "Bearer @INGEST_TOKEN@"}, b"[]", 400, BAD),
    # --- OFREP single ---------------------------------------------------------------------
    C("ofrep-no-secret", "POST", SINGLE + "welcome-banner", JSON, b"{}", 401, "GENERAL"),
    C("ofrep-unknown-secret", "POST", SINGLE + "welcome-banner", {**JSON, "Authorization": "Bearer nope"}, b"{}", 401, "GENERAL"),
    C("ofrep-x-api-key-unknown", "POST", SINGLE + "welcome-banner", {**JSON, "X-API-Key": "\u00e9t\u00e9"}, b"{}", 401, "GENERAL"),
    C("ofrep-empty-body", "POST", SINGLE + "welcome-banner", AUTH, b"", 200, None),  # no body: an empty context
    C("ofrep-truncated", "POST", SINGLE + "welcome-banner", AUTH, b'{"context": {"targetingKey": "a"', 400, "PARSE_ERROR"),
    C("ofrep-body-array", "POST", SINGLE + "welcome-banner", AUTH, b"[]", 400, "PARSE_ERROR"),
    C("ofrep-context-string", "POST", SINGLE + "welcome-banner", AUTH, j({"context": "x"}), 400, "INVALID_CONTEXT"),
    C("ofrep-invalid-utf8", "POST", SINGLE + "welcome-banner", AUTH, b'{"context": {"targetingKey": "\xff"}}', 400, "PARSE_ERROR"),
    C("ofrep-deep-context", "POST", SINGLE + "welcome-banner", AUTH, b'{"context": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}", 400, "PARSE_ERROR"),
    C("ofrep-unknown-flag", "POST", SINGLE + "no-such-flag", AUTH, j({"context": {"targetingKey": "a"}}), 404, "FLAG_NOT_FOUND"),
    C("ofrep-key-percent-encoded", "POST", SINGLE + "welcome%2Dbanner", AUTH, j({"context": {"targetingKey": "a"}}), 200, None),
    C("ofrep-key-bad-percent", "POST", SINGLE + "welcome%ZZ", AUTH, j({"context": {"targetingKey": "a"}}), 404, "FLAG_NOT_FOUND"),
    C("ofrep-key-percent-invalid-utf8", "POST", SINGLE + "%ff%fe", AUTH, j({"context": {"targetingKey": "a"}}), 400, "PARSE_ERROR"),
    C("ofrep-key-dot-path", "POST", SINGLE + "welcome-banner.message", AUTH, j({"context": {"targetingKey": "a"}}), 200, None),
    C("ofrep-key-dot-unknown-field", "POST", SINGLE + "welcome-banner.nope", AUTH, j({"context": {"targetingKey": "a"}}), 400, "TYPE_MISMATCH"),
    C("ofrep-key-slash", "POST", SINGLE + "flags/welcome-banner", AUTH, j({"context": {"targetingKey": "a"}}), 200, None),  # the resource name
    C("ofrep-key-encoded-slash", "POST", SINGLE + "flags%2Fwelcome-banner", AUTH, j({"context": {"targetingKey": "a"}}), 200, None),
    C("ofrep-key-other-prefix", "POST", SINGLE + "segments/welcome-banner", AUTH, j({"context": {"targetingKey": "a"}}), 404, "FLAG_NOT_FOUND"),
    C("ofrep-key-dotdot", "POST", SINGLE + "..%2F..%2Fmetrics", AUTH, j({"context": {"targetingKey": "a"}}), 404, "FLAG_NOT_FOUND"),
    C("ofrep-key-raw-invalid-utf8", "POST", SINGLE + "welcome\xff", AUTH, j({"context": {"targetingKey": "a"}}), 404, "FLAG_NOT_FOUND", send="raw"),
    C("ofrep-key-long", "POST", SINGLE + "k" * 4000, AUTH, j({"context": {"targetingKey": "a"}}), 404, "FLAG_NOT_FOUND"),
    C("ofrep-over-limit", "POST", SINGLE + "welcome-banner", AUTH, BIG, 413, "GENERAL"),
    C("ofrep-over-limit-chunked", "POST", SINGLE + "welcome-banner", AUTH, BIG, 413, "GENERAL", send="chunked"),
    C("ofrep-get", "GET", SINGLE + "welcome-banner", {}, b"", 405, "GENERAL"),
    # --- OFREP bulk ---------------------------------------------------------------------------
    C("ofrep-bulk-no-secret", "POST", BULK, JSON, b"{}", 401, "GENERAL"),
    C("ofrep-bulk-empty-body", "POST", BULK, AUTH, b"", 200, None),
    C("ofrep-bulk-bom", "POST", BULK, AUTH, b'\xef\xbb\xbf{"context": {}}', 400, "PARSE_ERROR"),
    C("ofrep-bulk-context-number", "POST", BULK, AUTH, j({"context": 1}), 400, "INVALID_CONTEXT"),
    C("ofrep-bulk-huge-context", "POST", BULK, AUTH, j({"context": {"targetingKey": "a", **{f"k{i}": i for i in range(8000)}}}), 200, None),
    C("ofrep-bulk-over-limit-chunked", "POST", BULK, AUTH, BIG, 413, "GENERAL", send="chunked"),
    C("ofrep-bulk-put", "PUT", BULK, AUTH, b"{}", 405, "GENERAL"),
    # --- unknown paths and methods -------------------------------------------------------------
    C("unknown-path", "GET", "/v2/flags:resolve", {}, b"", 404, "NOT_FOUND"),
    C("unknown-root", "GET", "/", {}, b"", 404, "NOT_FOUND"),
    C("unknown-ofrep-path", "POST", "/ofrep/v2/evaluate", AUTH, b"{}", 404, "GENERAL"),
    C("unknown-raw-invalid-utf8-path", "GET", "/v1/\xff\xfe", {}, b"", 404, "NOT_FOUND", send="raw"),
    C("unknown-long-path", "GET", "/" + "a" * 8000, {}, b"", 404, "NOT_FOUND"),
    C("resolve-get", "GET", R, {}, b"", 405, "METHOD_NOT_ALLOWED"),
    C("resolve-delete", "DELETE", R, {}, b"", 405, "METHOD_NOT_ALLOWED"),
    C("resolve-put", "PUT", R, JSON, b"{}", 405, "METHOD_NOT_ALLOWED"),
    C("apply-patch", "PATCH", A, JSON, b"{}", 405, "METHOD_NOT_ALLOWED"),
]  # fmt: skip


# --- The instance -----------------------------------------------------------------------


@dataclass
class Instance:
    worker: Worker
    sink: Sink
    fills: dict[str, str]
    captured: list[bytes] = field(default_factory=list)  # every response: status line, headers, body


@pytest.fixture(scope="module")
def inst(
    built_worker: Any, start_worker: Callable[..., Worker], tmp_path_factory: pytest.TempPathFactory, http: requests.Session
) -> Iterator[Instance]:
    sink = Sink()
    # Own instance (not shared): its log and its counters belong to this module alone.
    w = launch_worker(
        tmp_path_factory.mktemp("bad-inputs"), vars={**NO_FORCE_APPLY, "FLAG_LOGS_ENDPOINT": sink.url}, secrets=SECRETS
    )
    # A token sealed with a key this instance does not have: another instance's current key.
    old = start_worker(vars=NO_FORCE_APPLY)
    try:
        token = issue(http, w, DEMO_SECRET)
        fills = {
            "@TOKEN@": token,
            "@TOKEN_TRUNCATED@": token[: len(token) // 2],
            "@STAGING_TOKEN@": issue(http, w, DEMO_STAGING_SECRET),
            "@OLD_TOKEN@": issue(http, old, DEMO_SECRET),
            "@METRICS_TOKEN@": SECRETS["METRICS_TOKEN"],
            "@METRICS_TOKEN_PREFIX@": SECRETS["METRICS_TOKEN"][:-1],
            "@INGEST_TOKEN@": SECRETS["METRICS_INGEST_TOKEN"],
        }
        yield Instance(w, sink, fills)
    finally:
        try:
            w.stop()
        finally:
            sink.stop()


def issue(http: requests.Session, w: Worker, secret: str) -> str:
    body = {"clientSecret": secret, "apply": False, "evaluationContext": {"targeting_key": f"tok-{uuid.uuid4().hex}"}}
    r = http.post(w.url(R), data=j(body), headers=JSON, timeout=REQUEST_TIMEOUT)
    assert r.status_code == 200, r.text
    token = r.json().get("resolveToken")
    assert isinstance(token, str) and token, r.text
    return token


def fill(data: bytes | str, fills: dict[str, str]) -> bytes:
    out = data.encode("latin-1") if isinstance(data, str) else data
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for k, v in {**fills, "@NOW@": now}.items():
        out = out.replace(k.encode(), v.encode())
    return out


@dataclass
class Answer:
    """A response, however it was sent; shaped like requests' (status_code,
    headers, text, json) so conftest's assert_error and assert_cors take it."""

    status: int
    headers: CaseInsensitiveDict
    body: bytes

    @property
    def status_code(self) -> int:
        return self.status

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


def send(inst: Instance, http: requests.Session, method: str, path: str, headers: dict[str, str], body: bytes, how: str) -> Answer:
    """Sends one request: via requests, or over a socket for what requests
    cannot send (no Content-Length, raw path bytes). Every wait is bounded."""
    if how == "requests":
        r = http.request(method, inst.worker.url(path), data=body or None, headers=headers, timeout=REQUEST_TIMEOUT)
        ans = Answer(r.status_code, CaseInsensitiveDict(r.headers), r.content)
    else:
        u = urlsplit(inst.worker.base_url)
        conn = httpclient.HTTPConnection(u.hostname, u.port, timeout=REQUEST_TIMEOUT)
        try:
            if how == "chunked":
                conn.putrequest(method, path, skip_accept_encoding=True)
                for k, v in headers.items():
                    conn.putheader(k, v)
                conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders()
                assert conn.sock is not None
                pieces = [body[i : i + 16 * 1024] for i in range(0, len(body), 16 * 1024)]
                for piece in [*(b"%x\r\n" % len(p) + p + b"\r\n" for p in pieces), b"0\r\n\r\n"]:
                    # Stop once the answer has started: a server that refused
                    # the body mid-stream may reset the connection, and a
                    # reset discards what it sent but was not read yet.
                    if select.select([conn.sock], [], [], 0)[0]:
                        break
                    try:
                        conn.send(piece)
                    except (BrokenPipeError, ConnectionResetError):
                        break
            else:  # raw: the path goes out byte for byte
                lines = [f"{method} {path} HTTP/1.1", f"Host: {u.netloc}", f"Content-Length: {len(body)}", "Connection: close"]
                lines += [f"{k}: {v}" for k, v in headers.items()]
                with socket.create_connection((u.hostname, u.port), timeout=REQUEST_TIMEOUT) as sock:
                    sock.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
                    raw = httpclient.HTTPResponse(sock)
                    raw.begin()
                    ans = Answer(raw.status, CaseInsensitiveDict(raw.getheaders()), raw.read())
                inst.captured.append(f"{ans.status} {dict(ans.headers)}".encode() + b"\n" + ans.body)
                return ans
            resp = conn.getresponse()
            ans = Answer(resp.status, CaseInsensitiveDict(resp.getheaders()), resp.read())
        finally:
            conn.close()
    inst.captured.append(f"{ans.status} {dict(ans.headers)}".encode() + b"\n" + ans.body)
    return ans


def check_shape(case: Case, ans: Answer) -> None:
    ofrep = case.path.startswith("/ofrep/")
    assert ans.status == case.status, (case.name, ans.status, ans.body[:400])
    assert_cors(ans)  # type: ignore[arg-type]
    if ans.status == 304:
        return
    assert ans.headers.get("content-type", "").startswith("application/json"), (case.name, ans.headers)
    body = ans.json()
    if case.code is None:
        assert ans.status < 300, body
        return
    if ofrep:
        keys = {"errorCode", "errorDetails", "metadata"} | ({"key"} if "key" in body else set())
        assert set(body) == keys, body
        assert ("key" in body) == case.path.startswith(SINGLE), (case.name, body)
        assert body["errorCode"] == case.code, (case.name, body)
        assert isinstance(body["errorDetails"], str) and body["errorDetails"], body
        assert body["metadata"] == {}, body
    else:
        assert_error(ans, case.status, case.code)  # type: ignore[arg-type]
    if ans.status == 405:
        assert ans.headers.get("allow") in ("POST, OPTIONS", "GET, OPTIONS"), ans.headers
    if ans.status == 401 and case.path.startswith("/metrics"):
        assert ans.headers.get("www-authenticate") == "ClientSecret, Bearer", ans.headers


def test_catalogue_is_large_and_unique() -> None:
    assert len(CATALOGUE) >= 60
    assert len({c.name for c in CATALOGUE}) == len(CATALOGUE)


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.name for c in CATALOGUE])
def test_bad_input(inst: Instance, http: requests.Session, case: Case) -> None:
    headers = {k: fill(v, inst.fills).decode("latin-1") for k, v in case.headers.items()}
    body = fill(case.body, inst.fills)
    ans = send(inst, http, case.method, case.path, headers, body, case.send)
    check_shape(case, ans)
    if case.path == R and ans.status == 200:
        # Odd but valid: the answer is still the reference resolver's.
        assert ans.json()["resolvedFlags"] == cli_resolve_raw(body)["resolvedFlags"], case.name


# --- After the catalogue: correct answers, exact counts ----------------------------------

# Resolves sent after the reset point; each key is fresh, so nothing sticky is stored for it.
AFTER_CONTEXTS = [
    {"country": "SE", "plan": "premium"},
    {"country": "US", "plan": "free"},
    {"country": "NO", "app": {"version": "2.1.0"}},
    {},
]


def cli_resolve_raw(request: bytes) -> dict:
    """`edgeflag resolve` on the demo state (the one the bundle embeds)."""
    if not EDGEFLAG.exists():
        subprocess.run(["cargo", "build", "--bin", "edgeflag"], cwd=REPO, check=True, timeout=900)
    out = subprocess.run(
        [str(EDGEFLAG), "resolve", "--state", str(DEMO_STATE)],
        input=request, capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    return json.loads(out.stdout)


def cli_resolve(request: dict) -> dict:
    return cli_resolve_raw(j(request))


def metrics(inst: Instance, http: requests.Session, path: str = "/metrics?consistent=1") -> dict[str, float]:
    ans = send(inst, http, "GET", path, {"Authorization": f"Bearer {SECRETS['METRICS_TOKEN']}"}, b"", "requests")
    assert ans.status == 200, ans.body[:300]
    assert ans.headers["content-type"].startswith("text/plain"), ans.headers
    return parse_prometheus(ans.body.decode())


def reasons(samples: dict[str, float]) -> Counter:
    out: Counter = Counter()
    for k, v in samples.items():
        if k.startswith("confidence_resolves_total{"):
            out[k.split('reason="', 1)[1].split('"', 1)[0]] = int(v)
    return out


def settled(inst: Instance, http: requests.Session) -> dict[str, float]:
    """Metrics once resolve counts stop moving: unchanged for 4 s, twice the
    flush interval plus the queue's batch timeout (wrangler.toml). Bounded."""
    last, still = metrics(inst, http), 0
    for _ in range(60):
        time.sleep(1)
        now = metrics(inst, http)
        still = still + 1 if reasons(now) == reasons(last) else 0
        if still >= 4:
            return now
        last = now
    raise AssertionError(f"resolve counts never settled: {reasons(last)}")


def test_isolate_is_correct_and_counts_are_exact_after_the_catalogue(inst: Instance, http: requests.Session) -> None:
    # Whatever this module ran before: run the catalogue once more, so this test stands alone under -k.
    for case in CATALOGUE:
        headers = {k: fill(v, inst.fills).decode("latin-1") for k, v in case.headers.items()}
        check_shape(case, send(inst, http, case.method, case.path, headers, fill(case.body, inst.fills), case.send))
    before = settled(inst, http)

    expected: Counter = Counter()
    for i, context in enumerate(AFTER_CONTEXTS):
        request = {"clientSecret": DEMO_SECRET, "apply": True, "evaluationContext": {"targeting_key": f"after-{uuid.uuid4().hex}-{i}", **context}}
        ans = send(inst, http, "POST", R, JSON, j(request), "requests")
        assert ans.status == 200, ans.body[:300]
        got, want = ans.json()["resolvedFlags"], cli_resolve(request)["resolvedFlags"]
        assert got == want, f"worker {got}\n!= edgeflag resolve {want}"
        expected.update(f["reason"] for f in got)

    want_total = sum(reasons(before).values()) + sum(expected.values())
    after = before
    for _ in range(40):
        after = metrics(inst, http)
        if sum(reasons(after).values()) >= want_total:
            break
        time.sleep(1)
    after = settled(inst, http)
    b, a = reasons(before), reasons(after)
    delta = {r: a[r] - b[r] for r in set(a) | set(b) if a[r] != b[r]}
    assert delta == dict(expected), f"counted {delta}, sent {dict(expected)}"
    key = 'edgeflag_requests_total{route="resolve",status="2xx"}'
    assert after.get(key, 0) - before.get(key, 0) == len(AFTER_CONTEXTS), (before.get(key), after.get(key))
    assert all(after.get(f'edgeflag_dropped_total{{what="{w}"}}', 0) == 0 for w in ("assign_events", "schemas", "checkpoints", "unattributed")), after
    # The KV copy catches up to the same counts.
    for _ in range(40):
        if reasons(metrics(inst, http, "/metrics")) == reasons(after):
            break
        time.sleep(1)
    assert reasons(metrics(inst, http, "/metrics")) == reasons(after)
    log = inst.worker.log_path.read_text(errors="replace")
    assert "panicked" not in log and "RuntimeError: unreachable" not in log, inst.worker.log_tail()


# --- Secrets leak nowhere ----------------------------------------------------------------


def configured_secrets() -> dict[str, str]:
    out = {}
    for name, value in SECRETS.items():
        for i, part in enumerate(value.split(",")):
            out[f"{name}[{i}]"] = part
    return out


def test_secrets_leak_nowhere(inst: Instance, http: requests.Session) -> None:
    bearer = {"Authorization": f"Bearer {SECRETS['METRICS_TOKEN']}"}
    ingest = {**JSON, "Authorization": f"Bearer {SECRETS['METRICS_INGEST_TOKEN']}"}
    # Every route, successes and errors, with every configured secret sent somewhere.
    drive = [
        ("POST", R, JSON, ctx({"targeting_key": "leak-1", "country": "SE"}, apply=False)),
        ("POST", R, JSON, ctx({"targeting_key": "leak-2"}, apply=True)),
        ("POST", R, JSON, j({"clientSecret": SECRETS["METRICS_TOKEN"]})),
        ("POST", R, JSON, j({"clientSecret": SECRETS["RESOLVE_TOKEN_KEY"]})),
        ("POST", R, JSON, b'{"clientSecret": "' + SECRETS["CONFIDENCE_CLIENT_SECRET"].encode() + b'", '),
        ("POST", A, JSON, apply_with("@TOKEN@")),
        ("POST", A, JSON, apply_with("@OLD_TOKEN@")),
        ("POST", A, JSON, apply_with("@STAGING_TOKEN@")),
        ("POST", A, JSON, apply_with(SECRETS["RESOLVE_TOKEN_KEY"])),
        ("POST", A, JSON, apply_with("@TOKEN@", secret=SECRETS["CONFIDENCE_CLIENT_SECRET"])),
        ("POST", T, JSON, b"{}"),
        ("GET", "/v1/state:etag", {}, b""),
        ("GET", "/metrics", bearer, b""),
        ("GET", "/metrics?consistent=1", bearer, b""),
        ("GET", "/metrics", {"Authorization": f"ClientSecret {DEMO_SECRET}"}, b""),
        ("GET", "/metrics", {"Authorization": f"Bearer {SECRETS['METRICS_INGEST_TOKEN']}"}, b""),
        ("GET", "/metrics", {"Authorization": f"ClientSecret {SECRETS['CONFIDENCE_CLIENT_SECRET']}"}, b""),
        ("POST", "/v1/metrics:apply", ingest, b"{}"),
        ("POST", "/v1/metrics:apply", {**JSON, "Authorization": f"Bearer {SECRETS['METRICS_TOKEN']}"}, b"{}"),
        ("POST", "/v1/metrics:apply", ingest, b"{not json"),
        ("POST", SINGLE + "welcome-banner", AUTH, j({"context": {"targetingKey": "leak-3"}})),
        ("POST", SINGLE + "welcome-banner", {**JSON, "X-API-Key": SECRETS["METRICS_TOKEN"]}, b"{}"),
        ("POST", BULK, AUTH, j({"context": {"targetingKey": "leak-4"}})),
        ("POST", BULK, {**JSON, "Authorization": f"Bearer {SECRETS['RESOLVE_TOKEN_KEY']}"}, b"{}"),
        ("GET", "/nope", {}, b""),
        ("PUT", R, {}, b""),
    ]
    for method, path, headers, body in drive:
        ans = send(inst, http, method, path, headers, fill(body, inst.fills), "requests")
        assert ans.status < 500, (method, path, ans.status, ans.body[:300])
    # Flag logs reach the sink (the applied resolves above), then everything is searched.
    for _ in range(60):
        if any(b"flagAssigned" in b for b in inst.sink.bodies()):
            break
        time.sleep(0.5)
    sink_bodies = inst.sink.bodies()
    assert any(b"flagAssigned" in b for b in sink_bodies), "no flag logs reached the sink"
    haystacks = {
        "responses": b"\n".join(inst.captured),
        "sink bodies": b"\n".join(sink_bodies),
        # The endpoint is not Confidence: it gets no Authorization at all.
        "sink request headers": "\n".join(inst.sink.headers()).encode(),
        "wrangler log": inst.worker.log_path.read_bytes(),
    }
    assert len(inst.captured) >= len(drive) and b"Ready on http://127.0.0.1" in haystacks["wrangler log"]
    # The search can find things: a resolve token the worker returned is in the captures.
    issued = send(inst, http, "POST", R, JSON, ctx({"targeting_key": "leak-5"}, apply=False), "requests").json()
    assert issued["resolveToken"].encode() in b"\n".join(inst.captured)
    leaks = [
        f"{name} ({form[:6]!r}...) in {where}"
        for name, value in configured_secrets().items()
        for form in secret_forms(value)
        for where, hay in haystacks.items()
        if form in hay
    ]
    assert not leaks, "\n".join(leaks)
