"""The published OpenFeature OFREP clients, unmodified, against the Worker:

- `@openfeature/server-sdk` + `@openfeature/ofrep-provider` (single evaluation),
- `@openfeature/web-sdk` + `@openfeature/ofrep-web-provider` (bulk, 304 on
  re-fetch, 200 with new values on a context change),
- `openfeature-sdk` + `openfeature-provider-ofrep` (PyPI).

Versions are pinned in package.json and tests/e2e/ofrep/requirements.txt;
`bash scripts/setup.sh --e2e` installs them (node_modules/, .venv-ofrep/).
Each client runs as a small script under tests/e2e/ofrep/ that prints JSON."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import requests

from conftest import DEMO_SECRET, REPO, Worker
from test_ofrep import find_unit

SCRIPTS = REPO / "tests" / "e2e" / "ofrep"
NODE = "node"
OFREP_PYTHON = REPO / ".venv-ofrep" / "bin" / "python"
CLIENT_TIMEOUT = 60

SE = {"targetingKey": "client-1", "country": "SE"}
PREMIUM = {"targetingKey": "client-1", "plan": "premium"}
MODERN = {"app": {"version": "2.4.0"}}


def run(cmd: list[str]) -> Any:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, cwd=REPO, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"{cmd[:2]} failed ({r.returncode}):\n{r.stderr[-3000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def node(script: str, worker: Worker, secret: str, arg: Any) -> Any:
    if not (REPO / "node_modules" / "@openfeature" / "ofrep-provider").exists():
        pytest.fail("OpenFeature JS clients missing: run `bash scripts/setup.sh --e2e`")
    return run([NODE, str(SCRIPTS / script), worker.base_url, secret, json.dumps(arg)])


def python_client(worker: Worker, secret: str, cases: list[dict]) -> list[dict]:
    if not OFREP_PYTHON.exists():
        pytest.fail(f"{OFREP_PYTHON} missing: run `bash scripts/setup.sh --e2e`")
    return run([str(OFREP_PYTHON), str(SCRIPTS / "python_client.py"), worker.base_url, secret, json.dumps(cases)])


def by_key(results: list[dict]) -> dict[str, dict]:
    return {r["key"]: r for r in results}


def dark_unit(http: requests.Session, worker: Worker) -> dict:
    return {"targetingKey": find_unit(http, worker, "dark-mode", "on", MODERN), **MODERN}


def pricing_variant(http: requests.Session, worker: Worker) -> tuple[str, float]:
    """What the raw protocol says `client-1` gets for the sticky A/B."""
    r = http.post(
        worker.url("/ofrep/v1/evaluate/flags/pricing-experiment.price"),
        json={"context": PREMIUM},
        headers={"Authorization": f"Bearer {DEMO_SECRET}"},
        timeout=10,
    )
    b = r.json()
    return b["variant"], b["value"]


def test_js_server_sdk(http: requests.Session, worker: Worker) -> None:
    dark = dark_unit(http, worker)
    variant, price = pricing_variant(http, worker)
    cases = [
        {"type": "Boolean", "key": "welcome-banner.enabled", "default": False, "context": SE},
        {"type": "String", "key": "welcome-banner.message", "default": "", "context": SE},
        {"type": "Number", "key": "search-tuning.maxResults", "default": 0},
        {"type": "Number", "key": "search-tuning.boost", "default": 0},
        {"type": "Number", "key": "pricing-experiment.price", "default": 0, "context": PREMIUM},
        {"type": "Object", "key": "welcome-banner", "default": {}, "context": SE},
        {"type": "Object", "key": "dark-mode.palette", "default": {}, "context": dark},
        {"type": "String", "key": "dark-mode.palette.background", "default": "", "context": dark},
        {"type": "String", "key": "no-such-flag", "default": "fallback"},
        {"type": "String", "key": "welcome-banner.nope", "default": "fallback"},
        {"type": "Boolean", "key": "welcome-banner.message", "default": True},
    ]
    results = node("server_sdk.mjs", worker, DEMO_SECRET, cases)
    wrong_type = results.pop()  # its key repeats an earlier one
    got = by_key(results)
    assert got["welcome-banner.enabled"] == {
        "key": "welcome-banner.enabled", "value": True, "variant": "nordic", "reason": "TARGETING_MATCH", "errorCode": None,
    }
    assert got["welcome-banner.message"]["value"] == "Hej och välkommen!"
    assert (got["search-tuning.maxResults"]["value"], got["search-tuning.maxResults"]["reason"]) == (20, "STATIC")
    assert (got["search-tuning.boost"]["value"], got["search-tuning.boost"]["variant"]) == (2, "tuned")
    assert got["pricing-experiment.price"] == {
        "key": "pricing-experiment.price", "value": price, "variant": variant, "reason": "SPLIT", "errorCode": None,
    }
    assert got["welcome-banner"]["value"] == {"enabled": True, "message": "Hej och välkommen!"}
    assert (got["dark-mode.palette"]["value"], got["dark-mode.palette"]["reason"]) == (
        {"background": "#111111", "accent": None}, "SPLIT",
    )
    assert got["dark-mode.palette.background"]["value"] == "#111111"
    assert (got["no-such-flag"]["value"], got["no-such-flag"]["errorCode"]) == ("fallback", "FLAG_NOT_FOUND")
    # ofrep-provider 0.1.3 maps error codes it does not know (TYPE_MISMATCH
    # from the server) to GENERAL; the default is served either way.
    assert (got["welcome-banner.nope"]["value"], got["welcome-banner.nope"]["errorCode"]) == ("fallback", "GENERAL")
    assert (wrong_type["value"], wrong_type["errorCode"]) == (True, "TYPE_MISMATCH")

    bad = node("server_sdk.mjs", worker, "not-a-secret", cases[:3])
    assert [(r["value"], r["reason"], r["errorCode"]) for r in bad] == [(False, "ERROR", "GENERAL"), ("", "ERROR", "GENERAL"), (0, "ERROR", "GENERAL")]


def test_js_web_sdk_bulk_304_and_context_change(worker: Worker) -> None:
    cases = [
        {"type": "Object", "key": "welcome-banner", "default": {}},
        {"type": "Object", "key": "search-tuning", "default": {}},
        {"type": "Boolean", "key": "welcome-banner", "default": False},
        {"type": "Object", "key": "no-such-flag", "default": {"d": 1}},
        {"type": "Object", "key": "dark-mode", "default": {"d": 1}},
        {"type": "Object", "key": "legacy-search", "default": {"d": 1}},
    ]
    # Same targetingKey, another country: the provider keeps its ETag, so
    # only a body-derived ETag gets the new values through.
    scenario = {"context": SE, "changedContext": {**SE, "country": "US"}, "cases": cases}
    out = node("web_sdk.mjs", worker, DEMO_SECRET, scenario)
    wrong_type = out["before"].pop(2)  # its key repeats an earlier one
    out["after"].pop(2)
    before, after = by_key(out["before"]), by_key(out["after"])
    assert before["welcome-banner"] == {
        "key": "welcome-banner", "value": {"enabled": True, "message": "Hej och välkommen!"},
        "variant": "nordic", "reason": "TARGETING_MATCH", "errorCode": None,
    }
    assert before["search-tuning"]["value"] == {"boost": 2, "maxResults": 20, "fuzzy": True}
    assert before["welcome-banner"] != after["welcome-banner"]
    assert (after["welcome-banner"]["value"]["message"], after["welcome-banner"]["reason"]) == ("Welcome!", "STATIC")
    for results in (before, after):
        assert results["no-such-flag"]["errorCode"] == "FLAG_NOT_FOUND"
        assert (results["dark-mode"]["value"], results["dark-mode"]["reason"]) == ({"d": 1}, "DEFAULT")
        assert (results["legacy-search"]["value"], results["legacy-search"]["reason"]) == ({"d": 1}, "DISABLED")
    # The wrong type for a flag is the client's TYPE_MISMATCH.
    assert (wrong_type["value"], wrong_type["errorCode"]) == (False, "TYPE_MISMATCH")

    reqs = out["requests"]
    assert all(r["url"].endswith("/ofrep/v1/evaluate/flags") for r in reqs), reqs
    first, polled, changed = reqs[0], reqs[out["afterPoll"] - 1], reqs[-1]
    assert (first["status"], first["ifNoneMatch"]) == (200, None), reqs
    assert (polled["status"], polled["ifNoneMatch"], polled["etag"]) == (304, first["etag"], first["etag"]), reqs
    assert changed["status"] == 200 and changed["ifNoneMatch"] == first["etag"] and changed["etag"] != first["etag"], reqs


def test_python_provider(http: requests.Session, worker: Worker) -> None:
    dark = dark_unit(http, worker)
    variant, price = pricing_variant(http, worker)
    cases = [
        {"type": "boolean", "key": "welcome-banner.enabled", "default": False, "context": SE},
        {"type": "string", "key": "welcome-banner.message", "default": "", "context": SE},
        {"type": "integer", "key": "search-tuning.maxResults", "default": 0},
        {"type": "float", "key": "search-tuning.boost", "default": 0.0},
        {"type": "float", "key": "pricing-experiment.price", "default": 0.0, "context": PREMIUM},
        {"type": "object", "key": "welcome-banner", "default": {}, "context": SE},
        {"type": "object", "key": "dark-mode.palette", "default": {}, "context": dark},
        {"type": "string", "key": "dark-mode.palette.background", "default": "", "context": dark},
        {"type": "boolean", "key": "search-tuning.fuzzy", "default": False},
        {"type": "string", "key": "dark-mode.palette.accent", "default": "none", "context": dark},
        {"type": "object", "key": "dark-mode", "default": {"d": 1}, "context": {"targetingKey": "x"}},
        {"type": "boolean", "key": "legacy-search.enabled", "default": False},
        {"type": "string", "key": "no-such-flag", "default": "fallback"},
        {"type": "string", "key": "welcome-banner.nope", "default": "fallback"},
        {"type": "boolean", "key": "welcome-banner.message", "default": True},
        {"type": "float", "key": "search-tuning.maxResults", "default": 0.5},
        {"type": "integer", "key": "search-tuning.boost", "default": 7},
    ]
    r = python_client(worker, DEMO_SECRET, cases)
    got = [(x["value"], x["value_type"], x["variant"], x["reason"], x["errorCode"]) for x in r]
    assert got == [
        (True, "bool", "nordic", "TARGETING_MATCH", None),
        ("Hej och välkommen!", "str", "nordic", "TARGETING_MATCH", None),
        (20, "int", "tuned", "STATIC", None),
        (2.0, "float", "tuned", "STATIC", None),  # written 2.0: the provider rejects an int for a float
        (price, "float", variant, "SPLIT", None),
        ({"enabled": True, "message": "Hej och välkommen!"}, "dict", "nordic", "TARGETING_MATCH", None),
        ({"background": "#111111", "accent": None}, "dict", "on", "SPLIT", None),
        ("#111111", "str", "on", "SPLIT", None),
        (True, "bool", "tuned", "STATIC", None),
        ("none", "str", "on", "DEFAULT", None),  # unset field: the code default
        ({"d": 1}, "dict", "", "DEFAULT", None),  # no match
        (False, "bool", "", "DISABLED", None),  # archived
        ("fallback", "str", None, "ERROR", "FLAG_NOT_FOUND"),
        ("fallback", "str", None, "ERROR", "TYPE_MISMATCH"),  # no such field
        (True, "bool", None, "ERROR", "TYPE_MISMATCH"),  # wrong type
        (0.5, "float", None, "ERROR", "TYPE_MISMATCH"),  # an integer is not a float
        (7, "int", None, "ERROR", "TYPE_MISMATCH"),  # nor a float an integer
    ], r

    bad = python_client(worker, "not-a-secret", cases[:2])
    assert [(x["value"], x["reason"], x["errorCode"]) for x in bad] == [(False, "ERROR", "GENERAL"), ("", "ERROR", "GENERAL")]
