"""The published Confidence Python SDK (spotify-confidence-sdk 3.0.3,
unmodified) against the Worker under `wrangler dev`.

The SDK posts to `<custom_resolve_base_url>/v1/flags:resolve` with the
client secret and its context, resolving one flag per call, and reads the
value at a dotted path ("welcome-banner.message"). Variant names such as
"nordic" exist only in the Worker's demo state, so a matching answer can
only have come from the Worker; one test also counts the resolves in the
Worker's own /metrics.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import pytest
import requests
from confidence.confidence import Confidence
from confidence.errors import ErrorCode
from confidence.flag_types import Reason

from conftest import (
    DEMO_CREDENTIAL,
    DEMO_SECRET,
    DEMO_STAGING_SECRET,
    NO_FORCE_APPLY,
    REQUEST_TIMEOUT,
    Worker,
    parse_prometheus,
    poll,
)

# Quiet but not silenced: the SDK logs every evaluation at DEBUG and
# configures a logger that has no level; this one has.
LOGGER = logging.getLogger("edgeflag.e2e.confidence-sdk")
LOGGER.setLevel(logging.WARNING)
LOGGER.addHandler(logging.NullHandler())


def sdk(worker: Worker, secret: str = DEMO_SECRET, apply_on_resolve: bool = False, **context: Any) -> Confidence:
    """An SDK client pointed at `worker`. apply_on_resolve=False (the SDK
    defaults to True) because only apply=false resolves carry the
    resolveToken the SDK insists on (see test_sdk_with_its_default_settings)."""
    client = Confidence(
        secret,
        apply_on_resolve=apply_on_resolve,
        custom_resolve_base_url=worker.base_url,
        timeout_ms=REQUEST_TIMEOUT * 1000,
        logger=LOGGER,
    )
    return client.with_context(context) if context else client


@pytest.fixture(scope="module")
def no_force(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(vars=NO_FORCE_APPLY)


def http_flag(worker: Worker, flag: str, context: dict, secret: str = DEMO_SECRET) -> dict:
    """The flag as the HTTP API resolves it (for comparing with the SDK)."""
    resp = requests.post(
        worker.url("/v1/flags:resolve"),
        json={"clientSecret": secret, "evaluationContext": context, "flags": [f"flags/{flag}"], "apply": False},
        timeout=REQUEST_TIMEOUT,
    )
    assert resp.status_code == 200, resp.text
    [resolved] = resp.json()["resolvedFlags"]
    return resolved


def find_key(worker: Worker, flag: str, wanted: Callable[[dict], bool], context: dict | None = None) -> str:
    """A targeting key for which `flag` resolves as `wanted` says (bounded)."""
    for i in range(40):
        key = f"sdk-probe-{i}"
        if wanted(http_flag(worker, flag, {"targeting_key": key, **(context or {})})):
            return key
    pytest.fail(f"no key among 40 gave the wanted {flag} resolution")


@pytest.mark.parametrize(
    "country, variant, message",
    [("SE", "nordic", "Hej och välkommen!"), ("DK", "nordic", "Hej och välkommen!"), ("US", "default", "Welcome!")],
)
def test_sdk_welcome_banner_by_country(no_force: Worker, country: str, variant: str, message: str) -> None:
    client = sdk(no_force, targeting_key="sdk-user-1", country=country)
    details = client.resolve_string_details("welcome-banner.message", "fallback")
    assert details.error_code is None, details
    assert details.value == message, details
    assert details.variant == variant, details
    assert details.reason == Reason.TARGETING_MATCH, details

    whole = client.resolve_object_details("welcome-banner", {})
    assert whole.value == {"enabled": True, "message": message}, whole
    enabled = client.resolve_boolean_details("welcome-banner.enabled", False)
    assert enabled.value is True and enabled.reason == Reason.TARGETING_MATCH, enabled


def test_sdk_new_checkout(no_force: Worker) -> None:
    on_key = find_key(no_force, "new-checkout", lambda f: f.get("variant", "").endswith("/on"))
    off_key = find_key(no_force, "new-checkout", lambda f: f.get("variant", "").endswith("/off"))

    on = sdk(no_force, targeting_key=on_key)
    enabled = on.resolve_boolean_details("new-checkout.enabled", False)
    assert type(enabled.value) is bool and enabled.value is True, enabled
    assert enabled.variant == "on" and enabled.reason == Reason.TARGETING_MATCH, enabled
    steps = on.resolve_integer_details("new-checkout.steps", 0)
    assert type(steps.value) is int and steps.value == 2, steps

    off = sdk(no_force, targeting_key=off_key)
    enabled = off.resolve_boolean_details("new-checkout.enabled", True)
    assert type(enabled.value) is bool and enabled.value is False, enabled
    assert enabled.variant == "off", enabled
    # "off" leaves `steps` out; the Worker sends it as null (schema fill), and
    # the SDK answers a null with the caller's default, still a match.
    steps = off.resolve_integer_details("new-checkout.steps", 7)
    assert steps.value == 7 and steps.variant == "off" and steps.error_code is None, steps


def test_sdk_environment_scoping(no_force: Worker) -> None:
    off_key = find_key(no_force, "new-checkout", lambda f: f.get("variant", "").endswith("/off"))
    staging = sdk(no_force, secret=DEMO_STAGING_SECRET, targeting_key=off_key)
    details = staging.resolve_boolean_details("new-checkout.enabled", False)
    assert details.value is True and details.variant == "on", details


@pytest.mark.parametrize("flag", ["no-such-flag", "legacy-search"], ids=["unknown", "archived"])
def test_sdk_unknown_flag_gets_the_default(no_force: Worker, flag: str) -> None:
    client = sdk(no_force, targeting_key="sdk-user-2")
    details = client.resolve_boolean_details(f"{flag}.enabled", True)
    assert details.value is True, details
    assert details.reason == Reason.DEFAULT, details
    assert details.error_code == ErrorCode.FLAG_NOT_FOUND, details


def test_sdk_client_default_assignment(no_force: Worker) -> None:
    # dark-mode gives half of the modern-app users the client's own default.
    ctx = {"app": {"version": "2.0.0"}}
    key = find_key(no_force, "dark-mode", lambda f: f["reason"] == "RESOLVE_REASON_MATCH" and "variant" not in f, ctx)
    client = sdk(no_force, targeting_key=key, **ctx)
    details = client.resolve_boolean_details("dark-mode.enabled", False)
    assert details.value is False and details.reason == Reason.DEFAULT and details.error_code is None, details

    key = find_key(no_force, "dark-mode", lambda f: "variant" in f, ctx)
    client = sdk(no_force, targeting_key=key, **ctx)
    details = client.resolve_string_details("dark-mode.palette.background", "#ffffff")
    assert details.value == "#111111" and details.variant == "on", details


def test_sdk_sticky_experiment_values(no_force: Worker) -> None:
    client = sdk(no_force, targeting_key="sdk-premium-1", plan="premium", email="a@customer.test")
    whole = client.resolve_object_details("pricing-experiment", {})
    expected = {"control": {"price": 9.99, "badge": "none"}, "discount": {"price": 7.99, "badge": "sale"}}
    assert whole.variant in expected, whole
    assert whole.value == expected[whole.variant], whole
    price = client.resolve_float_details("pricing-experiment.price", 0.0)
    assert price.value == expected[whole.variant]["price"] and price.variant == whole.variant, price
    # Not in the segment: the caller's default.
    outsider = sdk(no_force, targeting_key="sdk-free-1", plan="free")
    details = outsider.resolve_float_details("pricing-experiment.price", 1.0)
    assert details.value == 1.0 and details.reason == Reason.DEFAULT, details


def test_sdk_async_client(no_force: Worker) -> None:
    client = sdk(no_force, targeting_key="sdk-async", country="FI")

    async def run() -> Any:
        try:
            return await client.resolve_string_details_async("welcome-banner.message", "fallback")
        finally:
            await client.async_client.aclose()

    details = asyncio.run(asyncio.wait_for(run(), timeout=REQUEST_TIMEOUT * 2))
    assert details.value == "Hej och välkommen!" and details.variant == "nordic", details


def test_sdk_requests_reach_the_worker(start_worker: Callable[..., Worker]) -> None:
    """A fresh instance that only the SDK talks to: its metrics count exactly
    the SDK's resolves."""
    worker = start_worker(vars=NO_FORCE_APPLY, label="python-sdk-metrics")
    calls = [("SE", "Hej och välkommen!"), ("US", "Welcome!"), ("NO", "Hej och välkommen!")]
    for i, (country, message) in enumerate(calls):
        details = sdk(worker, targeting_key=f"sdk-metrics-{i}", country=country).resolve_string_details(
            "welcome-banner.message", "fallback"
        )
        assert details.value == message, details

    def counts() -> dict[str, float] | None:
        resp = requests.get(
            worker.url("/metrics"), headers={"Authorization": f"ClientSecret {DEMO_SECRET}"}, timeout=REQUEST_TIMEOUT
        )
        assert resp.status_code == 200, resp.text
        samples = parse_prometheus(resp.text)
        key = f'edgeflag_credential_resolves_total{{credential="{DEMO_CREDENTIAL}"}}'
        return samples if samples.get(key, 0) >= len(calls) else None

    # Metrics travel isolate -> queue -> consumer -> KV: bounded wait (60 x 0.25 s).
    samples = poll(counts, attempts=60, interval=0.25)
    assert samples, "the Worker's metrics never counted the SDK's resolves"
    assert samples[f'edgeflag_credential_resolves_total{{credential="{DEMO_CREDENTIAL}"}}'] == len(calls)
    assert samples['edgeflag_requests_total{route="resolve",status="2xx"}'] == len(calls)


@pytest.mark.parametrize("config", [{}, NO_FORCE_APPLY], ids=["force-apply-default", "no-force-apply"])
def test_sdk_with_its_default_settings(start_worker: Callable[..., Worker], config: dict) -> None:
    worker = start_worker(vars=config)
    client = Confidence(
        DEMO_SECRET, custom_resolve_base_url=worker.base_url, timeout_ms=REQUEST_TIMEOUT * 1000, logger=LOGGER
    ).with_context({"targeting_key": "sdk-defaults", "country": "SE"})
    details = client.resolve_string_details("welcome-banner.message", "fallback")
    assert details.error_code is None, details
    assert details.value == "Hej och välkommen!" and details.variant == "nordic", details
