"""OFREP over raw HTTP against the real Worker (`wrangler dev`): every status,
the body keys of each, Content-Type, URL-encoded keys, empty and `{}`
bodies, CORS preflight and exposed headers, ETag/304, and flagConfigEtag.

The demo state (src/demo_state.json) provides boolean, string, integer,
float and object fields; see the README's demo-state table."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from conftest import DEMO_SECRET, REQUEST_TIMEOUT, Worker, assert_cors

SINGLE = "/ofrep/v1/evaluate/flags/"
BULK = "/ofrep/v1/evaluate/flags"
AUTH = {"Authorization": f"Bearer {DEMO_SECRET}"}

SUCCESS_KEYS = {"key", "value", "reason", "variant", "metadata"}
ERROR_KEYS = {"key", "errorCode", "errorDetails", "metadata"}
PROBES = [f"ofrep-probe-{i}" for i in range(60)]  # bounded search for bucketed units


def post(
    http: requests.Session, worker: Worker, path: str, body: Any = None, headers: dict | None = None, raw: bytes | None = None
) -> requests.Response:
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    h = {"Content-Type": "application/json", **AUTH, **(headers or {})}
    return http.post(worker.url(path), data=data, headers=h, timeout=REQUEST_TIMEOUT)


def ok(resp: requests.Response) -> dict:
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("application/json"), dict(resp.headers)
    body = resp.json()
    assert set(body) - {"value"} == SUCCESS_KEYS - {"value"}, body
    assert isinstance(body["variant"], str) and isinstance(body["metadata"], dict), body
    return body


def failed(resp: requests.Response, status: int, code: str, key: str | None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json"), dict(resp.headers)
    body = resp.json()
    expected = ERROR_KEYS if key is not None else ERROR_KEYS - {"key"}
    assert set(body) == expected, body
    assert body["errorCode"] == code, body
    assert isinstance(body["errorDetails"], str) and body["errorDetails"], body
    assert body["metadata"] == {}, body
    if key is not None:
        assert body["key"] == key, body
    assert_cors(resp)
    return body


def bulk_items(resp: requests.Response) -> dict[str, dict]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"flags", "metadata"}, body
    return {f["key"]: f for f in body["flags"]}


def find_unit(http: requests.Session, worker: Worker, flag: str, variant: str, extra: dict) -> str:
    """A targeting key that gets `variant` of `flag` (bounded search)."""
    for key in PROBES:
        items = bulk_items(post(http, worker, BULK, {"context": {"targetingKey": key, **extra}}))
        if items[flag]["variant"] == variant:
            return key
    raise AssertionError(f"no probe key gets {flag}/{variant}")


# --- success ---------------------------------------------------------------------


def test_values_of_every_type_with_reasons_and_variants(http: requests.Session, worker: Worker) -> None:
    se = {"targetingKey": "u-1", "country": "SE"}
    # boolean and string fields; a targeted full rollout is TARGETING_MATCH.
    b = ok(post(http, worker, SINGLE + "welcome-banner.enabled", {"context": se}))
    assert (b["key"], b["value"], b["reason"], b["variant"]) == ("welcome-banner.enabled", True, "TARGETING_MATCH", "nordic")
    b = ok(post(http, worker, SINGLE + "welcome-banner.message", {"context": {"targetingKey": "u-1", "country": "US"}}))
    assert (b["value"], b["reason"], b["variant"]) == ("Welcome!", "STATIC", "default")
    # The whole struct.
    b = ok(post(http, worker, SINGLE + "welcome-banner", {"context": se}))
    assert b["value"] == {"enabled": True, "message": "Hej och välkommen!"}
    # A whole-number double keeps its decimal point; integers stay integers.
    r = post(http, worker, SINGLE + "search-tuning.boost", {})
    assert '"value":2.0' in r.text, r.text
    assert ok(r)["reason"] == "STATIC"
    r = post(http, worker, SINGLE + "search-tuning", {})
    assert '"boost":2.0' in r.text and '"maxResults":20' in r.text and "20.0" not in r.text, r.text
    # Bucketed: SPLIT, integer field.
    on = find_unit(http, worker, "new-checkout", "on", {})
    b = ok(post(http, worker, SINGLE + "new-checkout.steps", {"context": {"targetingKey": on}}))
    assert (b["value"], b["reason"], b["variant"]) == (2, "SPLIT", "on")
    assert '"value":2,' in post(http, worker, SINGLE + "new-checkout.steps", {"context": {"targetingKey": on}}).text
    # A field the variant leaves unset: no value, reason DEFAULT, the variant still named.
    off = find_unit(http, worker, "new-checkout", "off", {})
    b = ok(post(http, worker, SINGLE + "new-checkout.steps", {"context": {"targetingKey": off}}))
    assert ("value" not in b, b["reason"], b["variant"]) == (True, "DEFAULT", "off"), b
    # A float field (sticky A/B, read through KV).
    premium = {"plan": "premium"}
    b = ok(post(http, worker, SINGLE + "pricing-experiment.price", {"context": {"targetingKey": "u-1", **premium}}))
    assert b["reason"] == "SPLIT" and {b["variant"]: b["value"]} in ({"control": 9.99}, {"discount": 7.99}), b
    # A nested object and a field inside it.
    modern = {"app": {"version": "2.1.0"}}
    dark = find_unit(http, worker, "dark-mode", "on", modern)
    b = ok(post(http, worker, SINGLE + "dark-mode.palette", {"context": {"targetingKey": dark, **modern}}))
    assert (b["value"], b["reason"]) == ({"background": "#111111", "accent": None}, "SPLIT")
    b = ok(post(http, worker, SINGLE + "dark-mode.palette.background", {"context": {"targetingKey": dark, **modern}}))
    assert b["value"] == "#111111"
    # No match: DEFAULT, no value (the client's code default), empty variant.
    b = ok(post(http, worker, SINGLE + "dark-mode", {"context": {"targetingKey": "u-1"}}))
    assert ("value" not in b, b["reason"], b["variant"]) == (True, "DEFAULT", ""), b
    # Archived: DISABLED.
    b = ok(post(http, worker, SINGLE + "legacy-search", {}))
    assert ("value" not in b, b["reason"]) == (True, "DISABLED"), b


def test_state_etag_header_on_every_state_answer(http: requests.Session, worker: Worker) -> None:
    etag = http.get(worker.url("/v1/state:etag"), timeout=REQUEST_TIMEOUT).json()["etag"]
    for r in (
        post(http, worker, SINGLE + "welcome-banner", {}),
        post(http, worker, SINGLE + "no-such-flag", {}),
        post(http, worker, BULK, {}),
        http.post(worker.url("/v1/flags:resolve"), json={"clientSecret": DEMO_SECRET}, timeout=REQUEST_TIMEOUT),
    ):
        assert r.headers.get("x-edgeflag-state-etag") == etag, (r.url, dict(r.headers))
    assert bulk_items(post(http, worker, BULK, {})) and post(http, worker, BULK, {}).json()["metadata"] == {"stateEtag": etag}


def test_authentication_headers(http: requests.Session, worker: Worker) -> None:
    path = SINGLE + "welcome-banner.message"
    b = ok(http.post(worker.url(path), json={}, headers={"X-API-Key": DEMO_SECRET}, timeout=REQUEST_TIMEOUT))
    assert b["value"] == "Welcome!"
    ok(http.post(worker.url(path), json={}, headers={"authorization": f"bearer {DEMO_SECRET}"}, timeout=REQUEST_TIMEOUT))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, {"Authorization": f"Basic {DEMO_SECRET}"}):
        r = http.post(worker.url(path), json={}, headers=headers, timeout=REQUEST_TIMEOUT)
        failed(r, 401, "GENERAL", "welcome-banner.message")
        r = http.post(worker.url(BULK), json={}, headers=headers, timeout=REQUEST_TIMEOUT)
        details = failed(r, 401, "GENERAL", None)["errorDetails"]
        assert ("X-API-Key" in details) == ("wrong" not in str(headers)), (headers, details)


# --- request shapes ---------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", [b"", b"{}", b'{"context": null}', b'{"context": {}}', b"  \n"], ids=["empty", "{}", "null", "ctx{}", "space"]
)
def test_empty_bodies_are_an_empty_context(http: requests.Session, worker: Worker, raw: bytes) -> None:
    b = ok(post(http, worker, SINGLE + "welcome-banner.message", raw=raw))
    assert (b["value"], b["reason"]) == ("Welcome!", "STATIC")
    assert bulk_items(post(http, worker, BULK, raw=raw))["search-tuning"]["reason"] == "STATIC"
    # Without a Content-Type too.
    r = http.post(worker.url(SINGLE + "search-tuning.fuzzy"), data=raw, headers=AUTH, timeout=REQUEST_TIMEOUT)
    assert ok(r)["value"] is True


def test_url_encoded_keys(http: requests.Session, worker: Worker) -> None:
    ctx = {"context": {"targetingKey": "u-1", "country": "NO"}}
    b = ok(post(http, worker, SINGLE + "welcome-banner%2Emessage", ctx))
    assert (b["key"], b["value"]) == ("welcome-banner.message", "Hej och välkommen!")
    b = ok(post(http, worker, SINGLE + "flags%2Fwelcome-banner.enabled", ctx))
    assert (b["key"], b["value"]) == ("flags/welcome-banner.enabled", True)
    b = failed(post(http, worker, SINGLE + "caf%C3%A9%20flag", ctx), 404, "FLAG_NOT_FOUND", "café flag")


def test_errors_of_single_evaluation(http: requests.Session, worker: Worker) -> None:
    failed(post(http, worker, SINGLE + "no-such-flag", {}), 404, "FLAG_NOT_FOUND", "no-such-flag")
    failed(post(http, worker, SINGLE + "welcome-banner.nope", {}), 400, "TYPE_MISMATCH", "welcome-banner.nope")
    failed(post(http, worker, SINGLE + "welcome-banner.message.x", {}), 400, "TYPE_MISMATCH", "welcome-banner.message.x")
    failed(post(http, worker, SINGLE + "welcome-banner", raw=b"{nope"), 400, "PARSE_ERROR", "welcome-banner")
    failed(post(http, worker, SINGLE + "welcome-banner", raw=b"[1]"), 400, "PARSE_ERROR", "welcome-banner")
    failed(post(http, worker, SINGLE + "welcome-banner", {"context": 3}), 400, "INVALID_CONTEXT", "welcome-banner")
    ctx = {"context": {"targetingKey": 5}}
    failed(post(http, worker, SINGLE + "welcome-banner", ctx), 400, "INVALID_CONTEXT", "welcome-banner")
    failed(post(http, worker, SINGLE + "a..b", {}), 400, "PARSE_ERROR", "a..b")
    # Too large, and the wrong method: still OFREP-shaped.
    big = json.dumps({"context": {"pad": "x" * 300_000}}).encode()
    failed(post(http, worker, SINGLE + "welcome-banner", raw=big), 413, "GENERAL", "welcome-banner")
    r = http.get(worker.url(SINGLE + "welcome-banner"), headers=AUTH, timeout=REQUEST_TIMEOUT)
    failed(r, 405, "GENERAL", "welcome-banner")
    assert r.headers.get("Allow") == "POST, OPTIONS"


def test_errors_of_bulk_evaluation(http: requests.Session, worker: Worker) -> None:
    failed(post(http, worker, BULK, raw=b"{nope"), 400, "PARSE_ERROR", None)
    failed(post(http, worker, BULK, {"context": [1]}), 400, "INVALID_CONTEXT", None)
    failed(post(http, worker, BULK, {"context": {"targetingKey": True}}), 400, "INVALID_CONTEXT", None)


def test_bulk_lists_every_flag(http: requests.Session, worker: Worker) -> None:
    items = bulk_items(post(http, worker, BULK, {"context": {"targetingKey": "u-1", "country": "SE"}}))
    assert set(items) == {"welcome-banner", "new-checkout", "pricing-experiment", "dark-mode", "search-tuning", "legacy-search"}
    for f in items.values():
        assert set(f) - {"value"} == SUCCESS_KEYS - {"value"}, f
    assert items["welcome-banner"] == {
        "key": "welcome-banner",
        "value": {"enabled": True, "message": "Hej och välkommen!"},
        "reason": "TARGETING_MATCH",
        "variant": "nordic",
        "metadata": {},
    }
    assert items["legacy-search"]["reason"] == "DISABLED" and "value" not in items["legacy-search"]
    assert items["search-tuning"]["value"] == {"boost": 2.0, "maxResults": 20, "fuzzy": True}


# --- CORS -----------------------------------------------------------------------------


def test_preflight_and_exposed_headers(http: requests.Session, worker: Worker) -> None:
    for path in (BULK, SINGLE + "welcome-banner"):
        asked = "content-type, authorization, x-api-key, if-none-match"
        r = http.options(
            worker.url(path),
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": asked},
            timeout=REQUEST_TIMEOUT,
        )
        assert r.status_code == 204, r.text
        assert_cors(r)
        allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"content-type", "authorization", "x-api-key", "if-none-match"} <= allowed, dict(r.headers)
        r = http.options(worker.url(path), headers={"Origin": "https://app.example"}, timeout=REQUEST_TIMEOUT)
        allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"content-type", "authorization", "x-api-key", "if-none-match"} <= allowed, dict(r.headers)
    r = post(http, worker, BULK, {})
    exposed = {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"etag", "x-edgeflag-state-etag"} <= exposed, dict(r.headers)
    assert_cors(r)


# --- ETag / 304 --------------------------------------------------------------------------


def test_etag_and_304(http: requests.Session, worker: Worker) -> None:
    ctx = {"context": {"targetingKey": "u-7", "country": "SE"}}
    first = post(http, worker, BULK, ctx)
    etag = first.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"'), etag
    # The same request again: the same ETag (the body is deterministic).
    again = post(http, worker, BULK, ctx)
    assert again.headers["ETag"] == etag and again.content == first.content
    r = post(http, worker, BULK, ctx, {"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b"", (r.status_code, r.text)
    assert r.headers["ETag"] == etag
    assert_cors(r)
    # Weak and listed forms match too.
    assert post(http, worker, BULK, ctx, {"If-None-Match": f'"other", W/{etag}'}).status_code == 304
    # A non-key attribute change changes the body, so the ETag: never a stale 304.
    moved = {"context": {"targetingKey": "u-7", "country": "US"}}
    r = post(http, worker, BULK, moved, {"If-None-Match": etag})
    assert r.status_code == 200 and r.headers["ETag"] != etag
    assert bulk_items(r)["welcome-banner"]["value"]["message"] == "Welcome!"
    # An attribute no flag reads leaves the body, and so the ETag, alone.
    r = post(http, worker, BULK, {"context": {**ctx["context"], "unused": 1}}, {"If-None-Match": etag})
    assert r.status_code == 304
    assert post(http, worker, BULK, ctx, {"If-None-Match": '"stale"'}).status_code == 200


def test_flag_config_etag(http: requests.Session, worker: Worker) -> None:
    ctx = {"context": {"targetingKey": "u-8"}}
    first = post(http, worker, BULK, ctx)
    etag = first.headers["ETag"]
    state = first.json()["metadata"]["stateEtag"]
    r = post(http, worker, BULK + f"?flagConfigEtag={state}&flagConfigLastModified=0", ctx, {"If-None-Match": etag})
    assert r.status_code == 304, r.text
    r = post(http, worker, BULK + "?flagConfigEtag=some-older-config", ctx, {"If-None-Match": etag})
    assert r.status_code == 200 and r.headers["ETag"] == etag, r.text
    assert bulk_items(r)["search-tuning"]["reason"] == "STATIC"
