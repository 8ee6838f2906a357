"""The resolver API end to end: flags:resolve, flags:apply (resolve tokens,
key rotation), telemetry upload, state etag, CORS, error bodies, and a
bounded battery of hostile inputs, all against the real bundle under
`wrangler dev` (workerd).

Expected values come from the embedded demo state, src/demo_state.json.
Bucketing is a hash of the targeting key, so a test that needs a unit in
a given bucket tries a bounded list of keys; the outcome for a given key
never changes, so those tests are deterministic.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest
import requests

from conftest import (
    DEFAULT_SECRETS,
    DEMO_SECRET,
    DEMO_STAGING_SECRET,
    NO_FORCE_APPLY,
    REPO,
    REQUEST_TIMEOUT,
    Worker,
    assert_cors,
    assert_error,
    poll,
    random_token_key,
)

MAX_BODY_BYTES = 256 * 1024  # crate::api::MAX_BODY_BYTES
ORIGIN = "https://shop.example"

MATCH = "RESOLVE_REASON_MATCH"
NO_SEGMENT_MATCH = "RESOLVE_REASON_NO_SEGMENT_MATCH"
TARGETING_KEY_ERROR = "RESOLVE_REASON_TARGETING_KEY_ERROR"

WELCOME = "flags/welcome-banner"
CHECKOUT = "flags/new-checkout"
PRICING = "flags/pricing-experiment"
DARK = "flags/dark-mode"
SEARCH = "flags/search-tuning"  # full rollout; a whole-number double (`boost`)
LEGACY = "flags/legacy-search"  # ARCHIVED: never resolved
ACTIVE_FLAGS = {WELCOME, CHECKOUT, PRICING, DARK, SEARCH}

WELCOME_SCHEMA = {"schema": {"enabled": {"boolSchema": {}}, "message": {"stringSchema": {}}}}
CHECKOUT_SCHEMA = {"schema": {"enabled": {"boolSchema": {}}, "steps": {"intSchema": {}}}}
CHECKOUT_ON = {"enabled": True, "steps": 2}
CHECKOUT_OFF = {"enabled": False, "steps": None}  # `steps` is filled in from the schema
DARK_ON = {"enabled": True, "palette": {"background": "#111111", "accent": None}}
PRICING_VALUES = {
    f"{PRICING}/variants/control": {"price": 9.99, "badge": "none"},
    f"{PRICING}/variants/discount": {"price": 7.99, "badge": "sale"},
}

# Keys tried when a test needs units in particular buckets (bounded).
CANDIDATE_KEYS = [f"bucket-probe-{i}" for i in range(40)]


# --- helpers ---------------------------------------------------------------------


def now_rfc3339(delta: timedelta = timedelta()) -> str:
    return (datetime.now(timezone.utc) + delta).isoformat().replace("+00:00", "Z")


def post(http: requests.Session, worker: Worker, path: str, body: Any, **headers: str) -> requests.Response:
    """POSTs `body` (bytes as they are, anything else as JSON)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **headers}
    return http.post(worker.url(path), data=data, headers=hdrs, timeout=REQUEST_TIMEOUT)


def resolve_raw(http: requests.Session, worker: Worker, body: Any, **headers: str) -> requests.Response:
    return post(http, worker, "/v1/flags:resolve", body, **headers)


def resolve(
    http: requests.Session,
    worker: Worker,
    context: dict | None = None,
    flags: list[str] | None = None,
    secret: str = DEMO_SECRET,
    **fields: Any,
) -> dict:
    """A successful resolve's body; fails the test on any other answer."""
    body: dict[str, Any] = {"clientSecret": secret, **fields}
    if context is not None:
        body["evaluationContext"] = context
    if flags is not None:
        body["flags"] = flags
    resp = resolve_raw(http, worker, body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    out = resp.json()
    assert isinstance(out.get("resolvedFlags"), list), out
    return out


def by_flag(body: dict) -> dict[str, dict]:
    flags = {f["flag"]: f for f in body["resolvedFlags"]}
    assert len(flags) == len(body["resolvedFlags"]), f"a flag resolved twice: {body}"
    return flags


def names(body: dict) -> list[str]:
    return [f["flag"] for f in body["resolvedFlags"]]


def apply_raw(http: requests.Session, worker: Worker, body: Any, **headers: str) -> requests.Response:
    return post(http, worker, "/v1/flags:apply", body, **headers)


def apply_body(token: str, flags: list[str], secret: str = DEMO_SECRET, **extra: Any) -> dict:
    now = now_rfc3339()
    return {
        "clientSecret": secret,
        "resolveToken": token,
        "sendTime": now,
        "flags": [{"flag": f, "applyTime": now} for f in flags],
        **extra,
    }


def issue_token(
    http: requests.Session, worker: Worker, secret: str = DEMO_SECRET, context: dict | None = None
) -> tuple[str, dict]:
    """Resolves with apply=false on a FORCE_APPLY=false instance; returns
    the resolve token and the body."""
    ctx = {"targeting_key": f"token-{uuid.uuid4().hex}", "country": "SE"} if context is None else context
    body = resolve(http, worker, ctx, secret=secret, apply=False)
    token = body.get("resolveToken")
    assert isinstance(token, str) and token, f"no resolveToken for apply=false: {body}"
    return token, body


def has_token(body: dict) -> bool:
    """Whether a resolve returned a usable token (absent and "" both mean none)."""
    return bool(body.get("resolveToken"))


def murmur3_x64_128(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x64 128 (public-domain algorithm by Austin Appleby), as
    one integer: h1 in the low 64 bits, h2 in the high ones."""
    mask = (1 << 64) - 1
    c1, c2 = 0x87C37B91114253D5, 0x4CF5AD432745937F

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (64 - r))) & mask

    def fmix(k: int) -> int:
        k ^= k >> 33
        k = (k * 0xFF51AFD7ED558CCD) & mask
        k ^= k >> 33
        k = (k * 0xC4CEB9FE1A85EC53) & mask
        return k ^ (k >> 33)

    def mix1(k: int) -> int:
        return (rotl((k * c1) & mask, 31) * c2) & mask

    def mix2(k: int) -> int:
        return (rotl((k * c2) & mask, 33) * c1) & mask

    h1 = h2 = seed
    full = len(data) // 16 * 16
    for i in range(0, full, 16):
        h1 ^= mix1(int.from_bytes(data[i : i + 8], "little"))
        h1 = (((rotl(h1, 27) + h2) & mask) * 5 + 0x52DCE729) & mask
        h2 ^= mix2(int.from_bytes(data[i + 8 : i + 16], "little"))
        h2 = (((rotl(h2, 31) + h1) & mask) * 5 + 0x38495AB5) & mask
    tail = data[full:]
    if len(tail) > 8:
        h2 ^= mix2(int.from_bytes(tail[8:], "little"))
    if tail:
        h1 ^= mix1(int.from_bytes(tail[:8], "little"))
    h1 ^= len(data)
    h2 ^= len(data)
    h1 = (h1 + h2) & mask
    h2 = (h2 + h1) & mask
    h1, h2 = fmix(h1), fmix(h2)
    h1 = (h1 + h2) & mask
    h2 = (h2 + h1) & mask
    return (h2 << 64) | h1


@pytest.fixture(scope="module")
def no_force(start_worker: Callable[..., Worker]) -> Worker:
    """FORCE_APPLY=false, default secrets: resolves with apply=false return tokens."""
    return start_worker(vars=NO_FORCE_APPLY)


@pytest.fixture(scope="module")
def probes(http: requests.Session, worker: Worker) -> dict[str, dict[str, dict]]:
    """new-checkout and dark-mode (app.version 2.0.0) for CANDIDATE_KEYS
    with the production secret: {key: {flag: resolved flag}}."""
    out = {}
    for key in CANDIDATE_KEYS:
        body = resolve(http, worker, {"targeting_key": key, "app": {"version": "2.0.0"}}, flags=[CHECKOUT, DARK])
        out[key] = by_flag(body)
    return out


# --- flags:resolve -----------------------------------------------------------------


def test_resolve_all_flags(http: requests.Session, worker: Worker) -> None:
    ctx = {
        "targeting_key": f"all-{uuid.uuid4().hex}",
        "country": "SE",
        "app": {"version": "2.3.1"},
        "plan": "premium",
        "email": "someone@customer.test",
    }
    body = resolve(http, worker, ctx)
    flags = by_flag(body)
    # Every active flag of clients/demo, the archived one left out.
    assert set(flags) == ACTIVE_FLAGS, names(body)
    assert LEGACY not in flags
    assert re.fullmatch(r"[A-Za-z0-9]{32}", body.get("resolveId", "")), body
    # FORCE_APPLY (the default) applies every resolve: no token to send back.
    assert not has_token(body), body

    assert flags[WELCOME] == {
        "flag": WELCOME,
        "variant": f"{WELCOME}/variants/nordic",
        "value": {"enabled": True, "message": "Hej och välkommen!"},
        "flagSchema": WELCOME_SCHEMA,
        "reason": MATCH,
        "shouldApply": True,
        "assignmentOrigin": f"{WELCOME}/rules/nordics",
    }

    checkout = flags[CHECKOUT]
    assert checkout["reason"] == MATCH and checkout["shouldApply"] is True
    assert checkout["variant"] in (f"{CHECKOUT}/variants/on", f"{CHECKOUT}/variants/off")
    expected = CHECKOUT_ON if checkout["variant"].endswith("/on") else CHECKOUT_OFF
    assert checkout["value"] == expected
    assert checkout["flagSchema"] == CHECKOUT_SCHEMA
    assert checkout["assignmentOrigin"] == f"{CHECKOUT}/rules/rollout"

    pricing = flags[PRICING]
    assert pricing["reason"] == MATCH, pricing
    assert pricing["value"] == PRICING_VALUES[pricing["variant"]]
    assert pricing["flagSchema"] == {"schema": {"price": {"doubleSchema": {}}, "badge": {"stringSchema": {}}}}

    dark = flags[DARK]
    assert dark["reason"] == MATCH, dark
    if "variant" in dark:
        assert dark["variant"] == f"{DARK}/variants/on" and dark["value"] == DARK_ON
    else:  # the client-default half
        assert dark["value"] == {} and dark["flagSchema"] == {}


def test_resolve_values_follow_targeting(http: requests.Session, worker: Worker) -> None:
    for country, variant, message in (
        ("NO", "nordic", "Hej och välkommen!"),
        ("IS", "nordic", "Hej och välkommen!"),
        ("US", "default", "Welcome!"),
        ("se", "default", "Welcome!"),  # the set rule compares exactly
    ):
        body = resolve(http, worker, {"targeting_key": "u-1", "country": country}, flags=[WELCOME])
        [flag] = body["resolvedFlags"]
        assert flag["variant"] == f"{WELCOME}/variants/{variant}", (country, flag)
        assert flag["value"]["message"] == message, (country, flag)

    # dark-mode needs app.version >= 2.0.0 (a version comparison, not a string one).
    for version, matches in (("1.9.9", False), ("2.0.0", True), ("10.0.0", True)):
        body = resolve(http, worker, {"targeting_key": "u-1", "app": {"version": version}}, flags=[DARK])
        [flag] = body["resolvedFlags"]
        assert (flag["reason"] == MATCH) is matches, (version, flag)
        if not matches:
            assert flag["reason"] == NO_SEGMENT_MATCH and "value" not in flag and "variant" not in flag, flag

    # pricing-experiment: premium plan, but not for @example.com addresses.
    base = {"targeting_key": f"p-{uuid.uuid4().hex}", "plan": "premium"}
    assert by_flag(resolve(http, worker, base, flags=[PRICING]))[PRICING]["reason"] == MATCH
    employee = {**base, "targeting_key": f"p-{uuid.uuid4().hex}", "email": "dev@example.com"}
    assert by_flag(resolve(http, worker, employee, flags=[PRICING]))[PRICING]["reason"] == NO_SEGMENT_MATCH
    free = {"targeting_key": f"p-{uuid.uuid4().hex}", "plan": "free"}
    assert by_flag(resolve(http, worker, free, flags=[PRICING]))[PRICING]["reason"] == NO_SEGMENT_MATCH


def test_resolve_fills_schema_fields_and_client_defaults(probes: dict[str, dict[str, dict]]) -> None:
    seen = {"checkout-on": 0, "checkout-off": 0, "dark-on": 0, "dark-default": 0}
    for key, flags in probes.items():
        checkout, dark = flags[CHECKOUT], flags[DARK]
        if checkout["variant"] == f"{CHECKOUT}/variants/off":
            # The variant sets only `enabled`; the schema's `steps` comes back null.
            assert checkout["value"] == CHECKOUT_OFF, (key, checkout)
            assert "steps" in checkout["value"]
            seen["checkout-off"] += 1
        else:
            assert checkout["variant"] == f"{CHECKOUT}/variants/on", (key, checkout)
            assert checkout["value"] == CHECKOUT_ON, (key, checkout)
            seen["checkout-on"] += 1
        if "variant" in dark:
            # Nested schema: palette.accent is missing from the variant.
            assert dark["value"] == DARK_ON, (key, dark)
            seen["dark-on"] += 1
        else:
            assert dark == {
                "flag": DARK,
                "value": {},
                "flagSchema": {},
                "reason": MATCH,
                "shouldApply": True,
                "assignmentOrigin": f"{DARK}/rules/modern-app",
            }, (key, dark)
            seen["dark-default"] += 1
    assert all(seen.values()), f"some outcome never came up in {len(probes)} keys: {seen}"
    # 25% rollout of 40 keys: nowhere near all on or all off.
    assert 2 <= seen["checkout-on"] <= 20, seen


def test_resolve_is_deterministic_per_key(
    http: requests.Session, worker: Worker, probes: dict[str, dict[str, dict]]
) -> None:
    for key in CANDIDATE_KEYS[:5]:
        ctx = {"targeting_key": key, "app": {"version": "2.0.0"}}
        again = by_flag(resolve(http, worker, ctx, flags=[CHECKOUT, DARK]))
        assert again == probes[key], key


def test_named_flags_keep_request_order_once_each(http: requests.Session, worker: Worker) -> None:
    ctx = {"targeting_key": "order", "app": {"version": "2.0.0"}}
    body = resolve(http, worker, ctx, flags=[WELCOME, DARK, WELCOME, CHECKOUT, DARK])
    assert names(body) == [WELCOME, DARK, CHECKOUT]
    # Beyond 16 names the duplicate check takes another path: same answer.
    many = [DARK] + [f"flags/unknown-{i}" for i in range(20)] + [WELCOME, DARK, WELCOME]
    assert names(resolve(http, worker, ctx, flags=many)) == [DARK, WELCOME]


def test_unknown_and_archived_flags_are_skipped(http: requests.Session, worker: Worker) -> None:
    ctx = {"targeting_key": "skip", "country": "US"}
    body = resolve(http, worker, ctx, flags=["flags/no-such-flag", LEGACY, "welcome-banner", WELCOME, ""])
    assert names(body) == [WELCOME]
    assert by_flag(body)[WELCOME]["value"] == {"enabled": True, "message": "Welcome!"}
    # Nothing known: an empty list, not an error.
    body = resolve(http, worker, ctx, flags=["flags/no-such-flag", LEGACY])
    assert body["resolvedFlags"] == []


@pytest.mark.parametrize("apply", [True, False, None], ids=["apply-true", "apply-false", "apply-omitted"])
def test_force_apply_default_never_returns_a_token(http: requests.Session, worker: Worker, apply: bool | None) -> None:
    fields = {} if apply is None else {"apply": apply}
    body = resolve(http, worker, {"targeting_key": "fa", "country": "DK"}, flags=[WELCOME], **fields)
    assert not has_token(body), body
    assert by_flag(body)[WELCOME]["shouldApply"] is True


@pytest.mark.parametrize(
    "apply, token_expected",
    [(False, True), (None, True), (True, False)],
    ids=["apply-false", "apply-omitted", "apply-true"],
)
def test_without_force_apply_only_apply_false_gets_a_token(
    http: requests.Session, no_force: Worker, apply: bool | None, token_expected: bool
) -> None:
    fields = {} if apply is None else {"apply": apply}
    body = resolve(http, no_force, {"targeting_key": "nf", "country": "FI"}, flags=[WELCOME, CHECKOUT], **fields)
    assert has_token(body) is token_expected, body
    if token_expected:
        raw = base64.b64decode(body["resolveToken"], validate=True)
        assert len(raw) > 28, raw  # a header, a ciphertext and a 16-byte tag
    # The flags resolve the same either way.
    assert by_flag(body)[WELCOME]["variant"] == f"{WELCOME}/variants/nordic"


def test_tokens_are_fresh_per_resolve(http: requests.Session, no_force: Worker) -> None:
    ctx = {"targeting_key": "same", "country": "SE"}
    a, body_a = issue_token(http, no_force, context=ctx)
    b, body_b = issue_token(http, no_force, context=ctx)
    assert a != b
    assert body_a["resolveId"] != body_b["resolveId"]
    assert body_a["resolvedFlags"] == body_b["resolvedFlags"]


def test_snake_case_request_fields(http: requests.Session, no_force: Worker) -> None:
    ctx = {"targeting_key": "snake", "country": "SE", "app": {"version": "2.0.0"}}
    camel = resolve(http, no_force, ctx, flags=[WELCOME, DARK], apply=False)
    snake_body = {"client_secret": DEMO_SECRET, "evaluation_context": ctx, "flags": [WELCOME, DARK], "apply": False}
    resp = resolve_raw(http, no_force, snake_body)
    assert resp.status_code == 200, resp.text
    snake = resp.json()
    assert snake["resolvedFlags"] == camel["resolvedFlags"]
    assert by_flag(snake)[WELCOME]["value"]["message"] == "Hej och välkommen!"
    assert has_token(snake), snake


def test_unknown_fields_are_ignored(http: requests.Session, worker: Worker) -> None:
    ctx = {"targeting_key": "unknown-fields", "country": "NO"}
    plain = resolve(http, worker, ctx, flags=[WELCOME])
    resp = resolve_raw(
        http,
        worker,
        {
            "clientSecret": DEMO_SECRET,
            "evaluationContext": ctx,
            "flags": [WELCOME],
            "someFutureField": {"nested": [1, 2, {"x": None}]},
            "another_one": "x",
            "sdk": {"id": "SDK_ID_PYTHON_CONFIDENCE", "version": "9.9.9", "brandNewSdkField": True},
        },
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["resolvedFlags"] == plain["resolvedFlags"]



def test_null_means_the_default_value(http: requests.Session, no_force: Worker) -> None:
    ctx = {"targeting_key": "nulls", "country": "SE"}
    for field in ("apply", "flags"):
        resp = resolve_raw(http, no_force, {"clientSecret": DEMO_SECRET, "evaluationContext": ctx, field: None})
        assert resp.status_code == 200, (field, resp.text)
        assert set(by_flag(resp.json())) == ACTIVE_FLAGS
    # clientSecret null is the empty secret: unknown, so 401 rather than 400.
    assert_error(resolve_raw(http, no_force, {"clientSecret": None}), 401, "UNAUTHENTICATED")
    # resolveToken null is the empty token: the no-op apply.
    resp = apply_raw(http, no_force, {**apply_body("", [WELCOME]), "resolveToken": None})
    assert resp.status_code == 200, resp.text

@pytest.mark.parametrize("context", [None, {}, "null"], ids=["omitted", "empty", "null"])
def test_missing_context(http: requests.Session, worker: Worker, context: Any) -> None:
    body: dict[str, Any] = {"clientSecret": DEMO_SECRET}
    if context == "null":
        body["evaluationContext"] = None
    elif context is not None:
        body["evaluationContext"] = context
    resp = resolve_raw(http, worker, body)
    assert resp.status_code == 200, resp.text
    flags = by_flag(resp.json())
    assert set(flags) == ACTIVE_FLAGS
    # A full rollout needs no targeting key ...
    assert flags[WELCOME]["variant"] == f"{WELCOME}/variants/default"
    assert flags[WELCOME]["value"] == {"enabled": True, "message": "Welcome!"}
    # ... a split or a targeted segment cannot match without a context.
    for name in (CHECKOUT, PRICING, DARK):
        assert flags[name] == {"flag": name, "reason": NO_SEGMENT_MATCH}, flags[name]


def test_environment_scoping(
    http: requests.Session, worker: Worker, probes: dict[str, dict[str, dict]]
) -> None:
    off_keys = [k for k, f in probes.items() if f[CHECKOUT]["variant"].endswith("/off")][:5]
    assert off_keys, "no production key got new-checkout off"
    for key in off_keys:
        body = resolve(http, worker, {"targeting_key": key}, flags=[CHECKOUT], secret=DEMO_STAGING_SECRET)
        [flag] = body["resolvedFlags"]
        assert flag["variant"] == f"{CHECKOUT}/variants/on", (key, flag)
        assert flag["value"] == CHECKOUT_ON
        assert flag["assignmentOrigin"] == f"{CHECKOUT}/rules/staging-everyone"
    # Staging's rule is a full rollout: on even without a targeting key,
    # where production (a 25% split) cannot bucket and does not match.
    staging = by_flag(resolve(http, worker, {}, flags=[CHECKOUT], secret=DEMO_STAGING_SECRET))[CHECKOUT]
    assert staging["variant"] == f"{CHECKOUT}/variants/on"
    production = by_flag(resolve(http, worker, {}, flags=[CHECKOUT]))[CHECKOUT]
    assert production == {"flag": CHECKOUT, "reason": NO_SEGMENT_MATCH}
    # Same client, so the staging credential sees the same flag set.
    assert set(by_flag(resolve(http, worker, {"targeting_key": "s"}, secret=DEMO_STAGING_SECRET))) == ACTIVE_FLAGS


def test_targeting_key_length_limit(http: requests.Session, worker: Worker) -> None:
    def checkout(key: Any) -> dict:
        return by_flag(resolve(http, worker, {"targeting_key": key, "country": "SE"}, flags=[CHECKOUT, WELCOME]))

    # 100 bytes is the limit, counted in UTF-8 bytes (é is 2).
    for ok in ("k" * 100, "é" * 50):
        assert checkout(ok)[CHECKOUT]["reason"] == MATCH, ok
    for too_long in ("k" * 101, "é" * 51, "k" * 10_000):
        flags = checkout(too_long)
        assert flags[CHECKOUT] == {"flag": CHECKOUT, "reason": TARGETING_KEY_ERROR}, flags[CHECKOUT]
        # A full rollout does not need the key, so it still matches.
        assert flags[WELCOME]["variant"] == f"{WELCOME}/variants/nordic"
    # Whole numbers are keys too; other types are not.
    assert checkout(12345)[CHECKOUT]["reason"] == MATCH
    for bad in (1.5, True, ["a"], {"a": 1}):
        assert checkout(bad)[CHECKOUT]["reason"] == TARGETING_KEY_ERROR, bad


def test_sticky_assignment_survives_leaving_the_segment(http: requests.Session, worker: Worker) -> None:
    unit = f"sticky-{uuid.uuid4().hex}"
    premium = {"targeting_key": unit, "plan": "premium", "email": "buyer@customer.test"}
    left = {"targeting_key": unit, "plan": "free"}

    # Control: a unit that was never assigned does not match outside the segment.
    stranger = by_flag(resolve(http, worker, {**left, "targeting_key": f"never-{uuid.uuid4().hex}"}, flags=[PRICING]))
    assert stranger[PRICING] == {"flag": PRICING, "reason": NO_SEGMENT_MATCH}

    first = by_flag(resolve(http, worker, premium, flags=[PRICING]))[PRICING]
    assert first["reason"] == MATCH, first
    variant = first["variant"]
    assert variant in PRICING_VALUES

    # The assignment is written to KV after the response (waitUntil): wait
    # for it, bounded (40 x 0.25 s).
    def sticky_outside_segment() -> dict | None:
        f = by_flag(resolve(http, worker, left, flags=[PRICING]))[PRICING]
        return f if f["reason"] == MATCH else None

    kept = poll(sticky_outside_segment, attempts=40, interval=0.25)
    assert kept, f"{unit}: no sticky assignment was read back within ~10 s"
    assert kept["variant"] == variant and kept["value"] == PRICING_VALUES[variant], kept

    # And it stays: excluded by email, no plan at all, back in the segment.
    for ctx in (
        left,
        {"targeting_key": unit, "plan": "premium", "email": "dev@example.com"},
        {"targeting_key": unit},
        premium,
    ):
        again = by_flag(resolve(http, worker, ctx, flags=[PRICING]))[PRICING]
        assert again["reason"] == MATCH and again["variant"] == variant, (ctx, again)


# --- flags:apply -------------------------------------------------------------------


def test_apply_valid_token(http: requests.Session, no_force: Worker) -> None:
    token, body = issue_token(http, no_force)
    applied = [f["flag"] for f in body["resolvedFlags"] if f.get("shouldApply")]
    assert WELCOME in applied
    resp = apply_raw(http, no_force, apply_body(token, applied), Origin=ORIGIN)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json() == {}
    assert_cors(resp)
    # snake_case fields and a subset of the flags work as well.
    now = now_rfc3339()
    resp = apply_raw(
        http,
        no_force,
        {
            "client_secret": DEMO_SECRET,
            "resolve_token": token,
            "send_time": now,
            "flags": [{"flag": WELCOME, "apply_time": now}],
        },
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {}


@pytest.mark.parametrize("token", ["", None], ids=["empty", "omitted"])
@pytest.mark.parametrize("instance", ["default", "no-force-apply"])
def test_apply_without_token_is_a_no_op(
    http: requests.Session, worker: Worker, no_force: Worker, token: str | None, instance: str
) -> None:
    target = worker if instance == "default" else no_force
    body = apply_body("", [WELCOME])
    if token is None:
        del body["resolveToken"]
    resp = apply_raw(http, target, body, Origin=ORIGIN)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {}
    assert_cors(resp)


def flip_middle_byte(token: str) -> str:
    raw = bytearray(base64.b64decode(token))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def test_apply_tampered_token(http: requests.Session, no_force: Worker) -> None:
    token, _ = issue_token(http, no_force)
    raw = base64.b64decode(token)
    for label, bad in (
        ("flipped middle byte", flip_middle_byte(token)),
        ("flipped last byte", base64.b64encode(raw[:-1] + bytes([raw[-1] ^ 0x80])).decode()),
        ("truncated", base64.b64encode(raw[: len(raw) // 2]).decode()),
        ("extended", base64.b64encode(raw + b"\x00").decode()),
    ):
        resp = apply_raw(http, no_force, apply_body(bad, [WELCOME]), Origin=ORIGIN)
        assert resp.status_code == 400, (label, resp.text)
        assert_error(resp, 400, "INVALID_ARGUMENT")
        assert_cors(resp)
    # Control: the untouched token is accepted.
    resp = apply_raw(http, no_force, apply_body(token, [WELCOME]))
    assert resp.status_code == 200, resp.text


def test_apply_token_of_another_client(http: requests.Session, no_force: Worker) -> None:
    web_token, _ = issue_token(http, no_force, secret=DEMO_SECRET)
    staging_token, _ = issue_token(http, no_force, secret=DEMO_STAGING_SECRET)
    for token, secret in ((web_token, DEMO_STAGING_SECRET), (staging_token, DEMO_SECRET)):
        resp = apply_raw(http, no_force, apply_body(token, [WELCOME], secret=secret), Origin=ORIGIN)
        assert_error(resp, 400, "INVALID_ARGUMENT")
        assert_cors(resp)
    # Controls: each token with the credential it was issued to.
    assert apply_raw(http, no_force, apply_body(web_token, [WELCOME], secret=DEMO_SECRET)).json() == {}
    assert apply_raw(http, no_force, apply_body(staging_token, [WELCOME], secret=DEMO_STAGING_SECRET)).json() == {}


def test_apply_with_unknown_secret_is_401(http: requests.Session, no_force: Worker) -> None:
    token, _ = issue_token(http, no_force)
    resp = apply_raw(http, no_force, apply_body(token, [WELCOME], secret="not-a-secret"), Origin=ORIGIN)
    message = assert_error(resp, 401, "UNAUTHENTICATED")
    assert "demo" not in resp.text and "not-a-secret" not in message
    assert_cors(resp)


def test_apply_requires_send_time(http: requests.Session, no_force: Worker) -> None:
    token, _ = issue_token(http, no_force)
    body = apply_body(token, [WELCOME])
    del body["sendTime"]
    message = assert_error(apply_raw(http, no_force, body), 400, "INVALID_ARGUMENT")
    assert "sendTime" in message
    # Each flag needs its applyTime too.
    body = apply_body(token, [WELCOME])
    del body["flags"][0]["applyTime"]
    message = assert_error(apply_raw(http, no_force, body), 400, "INVALID_ARGUMENT")
    assert "applyTime" in message


@pytest.mark.parametrize(
    "flag",
    ["flags/no-such-flag", DARK, LEGACY],
    ids=["unknown", "resolved-without-match", "archived"],
)
def test_apply_flag_not_in_token(http: requests.Session, no_force: Worker, flag: str) -> None:
    # No app.version: dark-mode resolves NO_SEGMENT_MATCH and is not in the token.
    token, body = issue_token(http, no_force, context={"targeting_key": "nt", "country": "SE"})
    assert flag not in {f["flag"] for f in body["resolvedFlags"] if f.get("shouldApply")}
    message = assert_error(apply_raw(http, no_force, apply_body(token, [WELCOME, flag])), 400, "INVALID_ARGUMENT")
    assert flag in message and "flags[1]" in message, message


def test_apply_wrong_field_types_name_the_field(http: requests.Session, no_force: Worker) -> None:
    token, _ = issue_token(http, no_force)
    body = apply_body(token, [WELCOME])
    body["flags"].append("flags/new-checkout")  # a string where an object belongs
    message = assert_error(apply_raw(http, no_force, body), 400, "INVALID_ARGUMENT")
    assert "`flags[1]`" in message, message
    body = apply_body(token, [WELCOME], sendTime="yesterday")
    message = assert_error(apply_raw(http, no_force, body), 400, "INVALID_ARGUMENT")
    assert "sendTime" in message or "send_time" in message, message


def test_apply_accepts_a_token_only_with_its_keys(http: requests.Session, start_worker: Callable[..., Worker]) -> None:
    """Rotation: K1 issued a token; an instance whose current key is K2 and
    which still lists K1 as previous accepts it, one with only K2 does not."""
    k1 = DEFAULT_SECRETS["RESOLVE_TOKEN_KEY"]
    k2 = random_token_key()
    unrelated = random_token_key()
    issuer = start_worker(vars=NO_FORCE_APPLY)  # current key K1
    rotated = start_worker(
        vars=NO_FORCE_APPLY,
        secrets={"RESOLVE_TOKEN_KEY": k2, "RESOLVE_TOKEN_KEYS_PREVIOUS": f"{unrelated}, {k1}"},
    )
    k2_only = start_worker(secrets={"RESOLVE_TOKEN_KEY": k2})

    old_token, _ = issue_token(http, issuer)
    assert apply_raw(http, rotated, apply_body(old_token, [WELCOME])).json() == {}
    assert_error(apply_raw(http, k2_only, apply_body(old_token, [WELCOME])), 400, "INVALID_ARGUMENT")

    # New tokens are sealed with K2: good wherever K2 is configured, not
    # where only K1 is.
    new_token, _ = issue_token(http, rotated)
    assert apply_raw(http, k2_only, apply_body(new_token, [WELCOME])).json() == {}
    assert apply_raw(http, rotated, apply_body(new_token, [WELCOME])).json() == {}
    assert_error(apply_raw(http, issuer, apply_body(new_token, [WELCOME])), 400, "INVALID_ARGUMENT")


def test_missing_token_key_is_failed_precondition_only_when_a_token_is_needed(
    http: requests.Session, start_worker: Callable[..., Worker], no_force: Worker
) -> None:
    keyless = start_worker(vars=NO_FORCE_APPLY, secrets={})
    ctx = {"targeting_key": "keyless", "country": "SE"}
    message = assert_error(
        resolve_raw(http, keyless, {"clientSecret": DEMO_SECRET, "evaluationContext": ctx, "apply": False}),
        500,
        "FAILED_PRECONDITION",
    )
    assert "RESOLVE_TOKEN_KEY" in message
    # No token needed: fine.
    body = resolve(http, keyless, ctx, apply=True)
    assert by_flag(body)[WELCOME]["variant"] == f"{WELCOME}/variants/nordic" and not has_token(body)
    assert apply_raw(http, keyless, apply_body("", [WELCOME])).json() == {}
    token, _ = issue_token(http, no_force)
    assert_error(apply_raw(http, keyless, apply_body(token, [WELCOME])), 500, "FAILED_PRECONDITION")


# --- telemetry, state etag ---------------------------------------------------------------


def test_telemetry_upload(http: requests.Session, worker: Worker) -> None:
    for body in (b'{"libraryTraces": [{"library": "LIBRARY_CONFIDENCE", "traces": []}]}', b"\x0a\x02\x08\x01", b""):
        resp = http.post(
            worker.url("/v1/telemetry:upload"), data=body, headers={"Origin": ORIGIN}, timeout=REQUEST_TIMEOUT
        )
        assert resp.status_code == 200, resp.text
        assert resp.json() == {}
        assert_cors(resp)


def test_state_etag(http: requests.Session, worker: Worker, no_force: Worker) -> None:
    bodies = [http.get(worker.url("/v1/state:etag"), timeout=REQUEST_TIMEOUT).json() for _ in range(3)]
    bodies.append(http.get(no_force.url("/v1/state:etag"), timeout=REQUEST_TIMEOUT).json())
    keys = {"etag", "version", "source", "loadedAt", "confirmedAt", "ageSeconds"}
    assert all(set(b) == keys and b["source"] == "embedded" for b in bodies), bodies
    etag = bodies[0]["etag"]
    assert re.fullmatch(r"[0-9a-f]{32}", etag), etag
    # Same state, same etag: across calls and across instances ...
    assert {b["etag"] for b in bodies} == {etag}
    # ... and it is the MurmurHash3 x64-128 of the embedded state's bytes.
    state = (REPO / "src" / "demo_state.json").read_bytes()
    assert etag == f"{murmur3_x64_128(state):032x}"


def test_murmur3_reference_vector() -> None:
    """Guards the test's own hash implementation (the canonical x64-128 test string)."""
    h = murmur3_x64_128(b"The quick brown fox jumps over the lazy dog")
    assert (h & (2**64 - 1), h >> 64) == (0xE34BBC7BBC071B6C, 0x7A433CA9C49A9347)
    assert murmur3_x64_128(b"") == 0


# --- CORS and errors ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/flags:resolve", "/v1/flags:apply", "/v1/telemetry:upload", "/metrics"])
def test_preflight(http: requests.Session, worker: Worker, path: str) -> None:
    resp = http.options(
        worker.url(path),
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
        timeout=REQUEST_TIMEOUT,
    )
    assert resp.status_code == 204, resp.text
    assert_cors(resp)


def test_cors_on_resolve_success_and_errors(http: requests.Session, worker: Worker) -> None:
    ok = resolve_raw(http, worker, {"clientSecret": DEMO_SECRET}, Origin=ORIGIN)
    assert ok.status_code == 200
    assert_cors(ok)
    for body, status in ((b"{", 400), ({"clientSecret": "nope"}, 401)):
        resp = resolve_raw(http, worker, body, Origin=ORIGIN)
        assert resp.status_code == status, resp.text
        assert_cors(resp)


@pytest.mark.parametrize(
    "method, path, body, status, code",
    [
        ("POST", "/v1/flags:resolve", b'{"clientSecret": "demo-secret", "flags": ["a", 3]}', 400, "INVALID_ARGUMENT"),
        ("POST", "/v1/flags:resolve", b'{"clientSecret": "demo-secret"', 400, "INVALID_ARGUMENT"),
        ("POST", "/v1/flags:apply", b'{"clientSecret": "demo-secret", "flags": {}}', 400, "INVALID_ARGUMENT"),
        ("POST", "/v1/flags:resolve", b'{"clientSecret": "wrong"}', 401, "UNAUTHENTICATED"),
        ("GET", "/metrics", b"", 401, "UNAUTHENTICATED"),
        ("GET", "/v1/flags:nope", b"", 404, "NOT_FOUND"),
        ("PUT", "/v1/flags:resolve", b"{}", 405, "METHOD_NOT_ALLOWED"),
        ("GET", "/v1/flags:apply", b"", 405, "METHOD_NOT_ALLOWED"),
        ("POST", "/v1/flags:resolve", b"[" * (MAX_BODY_BYTES + 1), 413, "PAYLOAD_TOO_LARGE"),
    ],
    ids=["400-field", "400-syntax", "400-apply", "401-resolve", "401-metrics", "404", "405-put", "405-get", "413"],
)
def test_error_bodies(
    http: requests.Session, worker: Worker, method: str, path: str, body: bytes, status: int, code: str
) -> None:
    resp = http.request(method, worker.url(path), data=body, headers={"Origin": ORIGIN}, timeout=REQUEST_TIMEOUT)
    message = assert_error(resp, status, code)
    assert_cors(resp)
    if status == 400 and b"3]" in body:
        assert "`flags[1]`" in message, message


@pytest.mark.parametrize("secret", ["nope", "demo-secre", "DEMO-SECRET", "demo-secret-x", "", "x" * 5000])
def test_unknown_secret_reveals_nothing(http: requests.Session, worker: Worker, secret: str) -> None:
    leaks = ("demo", "staging", "clients/", "credential", "***")
    answers = [
        resolve_raw(http, worker, {"clientSecret": secret, "evaluationContext": {"targeting_key": "x"}}),
        apply_raw(http, worker, apply_body(base64.b64encode(b"\x01" * 64).decode(), [WELCOME], secret=secret)),
        http.get(worker.url("/metrics"), headers={"Authorization": f"ClientSecret {secret}"}, timeout=REQUEST_TIMEOUT),
    ]
    for resp in answers:
        assert_error(resp, 401, "UNAUTHENTICATED")
        text = resp.text.lower()
        assert not [w for w in leaks if w in text], resp.text
        assert not (len(secret) >= 4 and secret.lower() in text), resp.text
        headers = " ".join(f"{k}: {v}" for k, v in resp.headers.items()).lower()
        assert "demo" not in headers, headers


# --- hostile input ---------------------------------------------------------------------


def _nested(depth: int) -> bytes:
    return b'{"clientSecret": "demo-secret", "evaluationContext": {"a": ' + b"[" * depth + b"1" + b"]" * depth + b"}}"


def _ctx(ctx: dict) -> dict:
    return {"clientSecret": DEMO_SECRET, "evaluationContext": ctx}


HOSTILE_RESOLVE: dict[str, Any] = {
    "empty": b"",
    "whitespace": b" \n\t ",
    "null": b"null",
    "array": b"[]",
    "string": b'"demo-secret"',
    "number": b"42",
    "bom": b'\xef\xbb\xbf{"clientSecret": "demo-secret"}',
    "nested-100": _nested(100),
    # The context object plus 125 lists is 126 levels, the bound (MAX_CONTEXT_DEPTH); one more is refused.
    "nested-at-bound": _nested(125),
    "nested-past-bound": _nested(126),
    "nested-5000": _nested(5000),
    "unclosed-100k": b'{"evaluationContext": ' + b"[" * 100_000,
    "nested-objects-2000": b'{"evaluationContext": ' + b'{"a":' * 2000 + b"1" + b"}" * 2000 + b"}",
    "huge-number": b'{"clientSecret": "demo-secret", "evaluationContext": {"targeting_key": 1e400}}',
    "huge-negative": b'{"clientSecret": "demo-secret", "evaluationContext": {"n": -1e400}}',
    "long-integer": b'{"clientSecret": "demo-secret", "evaluationContext": {"targeting_key": ' + b"9" * 5000 + b"}}",
    "tiny-number": b'{"clientSecret": "demo-secret", "evaluationContext": {"targeting_key": 1e-400}}',
    "max-double-key": _ctx({"targeting_key": 1.7976931348623157e308}),
    "negative-key": _ctx({"targeting_key": -5}),
    "nan-literal": b'{"clientSecret": "demo-secret", "evaluationContext": {"x": NaN}}',
    "infinity-literal": b'{"clientSecret": "demo-secret", "evaluationContext": {"x": Infinity}}',
    "nan-strings": _ctx({"targeting_key": "NaN", "app": {"version": "NaN"}, "country": "Infinity", "plan": "-0"}),
    "odd-versions": _ctx({"targeting_key": "v", "app": {"version": "99999999999999999999999.0.0-rc.1+build"}}),
    "version-number": _ctx({"targeting_key": "v", "app": {"version": 2.5}}),
    "version-object": _ctx({"targeting_key": "v", "app": {"version": {"major": 2}}}),
    "app-not-object": _ctx({"targeting_key": "v", "app": "2.0.0"}),
    "country-list": _ctx({"targeting_key": "v", "country": ["SE", "NO"]}),
    "country-nul": _ctx({"targeting_key": "v\u0000", "country": "SE\u0000"}),
    "secret-number": {"clientSecret": 42},
    "secret-list": {"clientSecret": [DEMO_SECRET]},
    "secret-object": {"clientSecret": {"secret": DEMO_SECRET}},
    "secret-null": {"clientSecret": None},
    "flags-string": {"clientSecret": DEMO_SECRET, "flags": WELCOME},
    "flags-object": {"clientSecret": DEMO_SECRET, "flags": {"0": WELCOME}},
    "flags-null-item": {"clientSecret": DEMO_SECRET, "flags": [None]},
    "flags-nested": {"clientSecret": DEMO_SECRET, "flags": [[WELCOME]]},
    "apply-string": {"clientSecret": DEMO_SECRET, "apply": "true"},
    "apply-number": {"clientSecret": DEMO_SECRET, "apply": 1},
    "apply-null": {"clientSecret": DEMO_SECRET, "apply": None},
    "context-list": {"clientSecret": DEMO_SECRET, "evaluationContext": [1, 2]},
    "context-string": {"clientSecret": DEMO_SECRET, "evaluationContext": "ctx"},
    "sdk-string": {"clientSecret": DEMO_SECRET, "sdk": "python"},
    "sdk-bad-id": {"clientSecret": DEMO_SECRET, "sdk": {"id": 12345678901234567890, "version": []}},
    "all-wrong": {"clientSecret": [], "flags": 1, "apply": {}, "evaluationContext": False, "sdk": 0.5},
    "duplicate-field": b'{"clientSecret": "demo-secret", "clientSecret": "demo-secret"}',
    "1000-same-flag": {"clientSecret": DEMO_SECRET, "flags": [WELCOME] * 1000},
    "1000-unknown-flags": {"clientSecret": DEMO_SECRET, "flags": [f"flags/f-{i}" for i in range(1000)]},
    "1001-unknown-flags": {"clientSecret": DEMO_SECRET, "flags": [f"flags/f-{i}" for i in range(1001)]},
    "1000-known-flags": {"clientSecret": DEMO_SECRET, "flags": sorted(ACTIVE_FLAGS) * 250},
    "5000-context-keys": _ctx({f"k{i}": i for i in range(5000)}),
    "key-101-bytes": _ctx({"targeting_key": "k" * 101, "plan": "premium"}),
    "key-200k-bytes": _ctx({"targeting_key": "k" * 200_000, "plan": "premium"}),
    "key-emoji": _ctx({"targeting_key": "\U0001F600" * 26, "plan": "premium"}),
    "invalid-utf8": b'{"clientSecret": "demo-secret", "evaluationContext": {"targeting_key": "\xc3\x28\xff"}}',
    "invalid-utf8-key": b'{"clientSecret": "demo-secret", "evaluationContext": {"\xfe\xff": 1}}',
    "lone-surrogate": b'{"clientSecret": "demo-secret", "evaluationContext": {"targeting_key": "\\ud800"}}',
    "overlong-escape": b'{"clientSecret": "demo-secret", "evaluationContext": {"targeting_key": "\\u00"}}',
    "trailing-comma": b'{"clientSecret": "demo-secret",}',
    "binary": bytes(range(256)) * 4,
}


def hostile_apply_bodies(token: str) -> dict[str, Any]:
    now = now_rfc3339()
    ok_flag = [{"flag": WELCOME, "applyTime": now}]
    base = {"clientSecret": DEMO_SECRET, "resolveToken": token, "sendTime": now}
    return {
        "empty": b"",
        "token-not-base64": {**base, "resolveToken": "!!!not base64!!!", "flags": ok_flag},
        "token-number": {**base, "resolveToken": 12, "flags": ok_flag},
        "token-one-byte": {**base, "resolveToken": "AQ==", "flags": ok_flag},
        "token-unknown-version": {**base, "resolveToken": base64.b64encode(b"\x09" * 61).decode(), "flags": ok_flag},
        "token-200k": {**base, "resolveToken": "A" * 200_000, "flags": ok_flag},
        "send-time-garbage": {**base, "sendTime": "yesterday", "flags": ok_flag},
        "send-time-number": {**base, "sendTime": 1700000000, "flags": ok_flag},
        "send-time-year-10000": {**base, "sendTime": "10000-01-01T00:00:00Z", "flags": ok_flag},
        "skew-overflow": {
            **base,
            "sendTime": "9999-12-31T23:59:59Z",
            "flags": [{"flag": WELCOME, "applyTime": "0001-01-01T00:00:00Z"}],
        },
        "apply-time-garbage": {**base, "flags": [{"flag": WELCOME, "applyTime": "NaN"}]},
        "flags-object": {**base, "flags": {"flag": WELCOME}},
        "flag-number": {**base, "flags": [{"flag": 5, "applyTime": now}]},
        "1000-absent-flags": {**base, "flags": [{"flag": f"flags/f-{i}", "applyTime": now} for i in range(1000)]},
        "1000-same-flag": {**base, "flags": ok_flag * 1000},
        "nested": b'{"flags": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    }


def check_hostile_answer(label: str, resp: requests.Response, ok_body: Callable[[Any], bool]) -> str | None:
    """None if `resp` is a well-formed 2xx/4xx JSON answer, else why not."""
    if not (200 <= resp.status_code < 300 or 400 <= resp.status_code < 500):
        return f"{label}: HTTP {resp.status_code}: {resp.text[:300]}"
    if not resp.headers.get("Content-Type", "").startswith("application/json"):
        return f"{label}: Content-Type {resp.headers.get('Content-Type')!r}"
    try:
        body = resp.json()
    except ValueError:
        return f"{label}: not JSON: {resp.text[:300]}"
    if resp.status_code >= 400:
        err = body.get("error") if isinstance(body, dict) else None
        if not (isinstance(err, dict) and err.get("code") and err.get("message")):
            return f"{label}: malformed error body {body}"
    elif not ok_body(body):
        return f"{label}: unexpected 2xx body {str(body)[:300]}"
    return None


def test_hostile_inputs_never_break_the_worker(http: requests.Session, start_worker: Callable[..., Worker]) -> None:
    # Own instance, so a poisoned isolate is attributable and harms no other test.
    w = start_worker(vars=NO_FORCE_APPLY, label="hostile-inputs")
    baseline = by_flag(resolve(http, w, {"targeting_key": "after", "country": "SE"}, flags=[WELCOME]))
    token, _ = issue_token(http, w)

    problems: list[str] = []
    statuses: dict[str, int] = {}
    for label, body in HOSTILE_RESOLVE.items():
        resp = resolve_raw(http, w, body)
        statuses[f"resolve/{label}"] = resp.status_code
        problem = check_hostile_answer(f"resolve/{label}", resp, lambda b: isinstance(b.get("resolvedFlags"), list))
        if problem:
            problems.append(problem)
    for label, body in hostile_apply_bodies(token).items():
        resp = apply_raw(http, w, body)
        statuses[f"apply/{label}"] = resp.status_code
        problem = check_hostile_answer(f"apply/{label}", resp, lambda b: b == {})
        if problem:
            problems.append(problem)
    assert not problems, "\n".join(problems)

    # Spot checks that the answers are the right ones, not just well formed.
    expect_400 = [
        "resolve/empty", "resolve/null", "resolve/array", "resolve/nested-5000", "resolve/unclosed-100k",
        "resolve/nested-past-bound",
        "resolve/huge-number", "resolve/nan-literal", "resolve/secret-number", "resolve/flags-string",
        "resolve/apply-string", "resolve/context-list", "resolve/invalid-utf8", "resolve/lone-surrogate",
        "resolve/binary", "apply/token-not-base64", "apply/token-one-byte", "apply/token-unknown-version",
        "apply/token-200k", "apply/send-time-garbage", "apply/skew-overflow", "apply/1000-absent-flags",
    ]  # fmt: skip
    assert {k: statuses[k] for k in expect_400 if statuses[k] != 400} == {}
    expect_200 = [
        "resolve/nested-100", "resolve/nested-at-bound", "resolve/nan-strings", "resolve/odd-versions", "resolve/1000-same-flag",
        "resolve/1000-unknown-flags", "resolve/1001-unknown-flags", "resolve/1000-known-flags",
        "resolve/5000-context-keys", "resolve/key-101-bytes", "resolve/key-200k-bytes", "apply/1000-same-flag",
    ]  # fmt: skip
    assert {k: statuses[k] for k in expect_200 if statuses[k] != 200} == {}

    # The isolate still answers normally afterwards: same resolve, same
    # result, and tokens still seal and open.
    after = by_flag(resolve(http, w, {"targeting_key": "after", "country": "SE"}, flags=[WELCOME]))
    assert after == baseline
    fresh, _ = issue_token(http, w)
    assert apply_raw(http, w, apply_body(fresh, [WELCOME])).json() == {}
    assert http.get(w.url("/v1/state:etag"), timeout=REQUEST_TIMEOUT).status_code == 200
    log = w.log_path.read_text(errors="replace")
    assert "panicked" not in log and "RuntimeError: unreachable" not in log, w.log_tail()

