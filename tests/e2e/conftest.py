"""End-to-end fixtures: the real Worker bundle under `wrangler dev` (workerd).

The bundle is built once per session with scripts/build-worker.sh (set
EDGEFLAG_E2E_SKIP_BUILD=1 to reuse an existing build/). Each Worker instance
runs on free loopback ports, in its own process group, with its own empty
`--persist-to` directory (fresh local KV and Queues) and with secrets from a
private env file, so a developer's .dev.vars never leaks in.

Fixtures:
  worker          the default instance (wrangler.toml vars + test secrets);
                  parametrise it indirectly for another configuration:
                      @pytest.mark.parametrize(
                          "worker", [{"vars": {"FORCE_APPLY": "false"}}], indirect=True)
                  Instances are shared per configuration for the whole session.
  start_worker    factory: start_worker(vars={...}, secrets={...}, label="") -> Worker
  base_url        the default instance's URL, e.g. http://127.0.0.1:40123
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
WRANGLER = REPO / "node_modules" / ".bin" / "wrangler"
BUNDLE_ENTRY = REPO / "build" / "worker" / "shim.mjs"

# Bounded waits (seconds).
BUILD_TIMEOUT = 1800
STARTUP_TIMEOUT = 90
STOP_TIMEOUT = 15
REQUEST_TIMEOUT = 10

# Secrets every instance gets unless a test overrides them. A fresh key per
# session: nothing may depend on its value.
DEFAULT_SECRETS = {"RESOLVE_TOKEN_KEY": base64.b64encode(os.urandom(32)).decode()}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def live_group_members(pgid: int) -> list[int]:
    """PIDs in process group `pgid` that are not zombies (Linux /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parens.
        fields = text[text.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@dataclass
class Worker:
    """A running `wrangler dev` instance."""

    base_url: str
    port: int
    inspector_port: int
    vars: dict[str, str]
    secrets: dict[str, str]
    state_dir: Path
    log_path: Path
    proc: subprocess.Popen = field(repr=False)

    def url(self, path: str) -> str:
        return self.base_url + path

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Stops the whole process group (npx/node/workerd) and checks that
        nothing is left listening on its ports."""
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # The group leader is gone; make sure no child (workerd) outlived it.
        deadline = time.monotonic() + 10
        while (survivors := live_group_members(self.proc.pid)) and time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        if survivors:
            raise RuntimeError(f"processes {survivors} of group {self.proc.pid} survived SIGKILL")
        while time.monotonic() < deadline and (port_open(self.port) or port_open(self.inspector_port)):
            time.sleep(0.2)
        leftover = [p for p in (self.port, self.inspector_port) if port_open(p)]
        if leftover:
            raise RuntimeError(f"wrangler dev stopped but ports {leftover} still listen")


def _wait_ready(worker: Worker) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise RuntimeError(
                f"wrangler dev exited with {worker.proc.returncode} before answering:\n{worker.log_tail()}"
            )
        try:
            requests.get(worker.url("/v1/state:etag"), timeout=2)
            return
        except requests.RequestException as e:
            last_error = str(e)
        time.sleep(0.5)
    raise RuntimeError(
        f"wrangler dev did not answer within {STARTUP_TIMEOUT}s ({last_error}):\n{worker.log_tail()}"
    )


def write_config(tmp_dir: Path, edit: Callable[[str], str]) -> Path:
    """A copy of wrangler.toml in `tmp_dir`, changed by `edit` (for what
    `wrangler dev` flags cannot set, e.g. queue consumer settings), with
    `main` made absolute so the copy finds the bundle."""
    text = (REPO / "wrangler.toml").read_text()
    main = 'main = "build/worker/shim.mjs"'
    assert main in text, "wrangler.toml's main moved; update write_config"
    path = tmp_dir / "wrangler.toml"
    path.write_text(edit(text.replace(main, f"main = {json.dumps(str(BUNDLE_ENTRY))}")))
    return path


def launch_worker(
    tmp_dir: Path,
    vars: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None,
    config_edit: Callable[[str], str] | None = None,
) -> Worker:
    """Starts `wrangler dev` with wrangler.toml's vars overridden by `vars`
    and with exactly `secrets` (DEFAULT_SECRETS when None) as secrets;
    `config_edit` runs it on an edited copy of wrangler.toml instead."""
    vars = dict(vars or {})
    secrets = dict(DEFAULT_SECRETS if secrets is None else secrets)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    # Passing --env-file makes wrangler skip .dev.vars (and .env) entirely.
    env_file = tmp_dir / "secrets.env"
    env_file.write_text("".join(f"{k}={json.dumps(v)}\n" for k, v in secrets.items()))
    env_file.chmod(0o600)
    state_dir = tmp_dir / "state"
    log_path = tmp_dir / "wrangler.log"

    for attempt in range(3):  # retry only if a picked port got taken meanwhile
        port, inspector_port = free_port(), free_port()
        while inspector_port == port:
            inspector_port = free_port()
        cmd = [
            str(WRANGLER), "dev",
            "--ip", "127.0.0.1",
            "--port", str(port),
            "--inspector-port", str(inspector_port),
            "--persist-to", str(state_dir),
            "--env-file", str(env_file),
            "--show-interactive-dev-session=false",
            "--log-level", "info",
        ]
        if config_edit is not None:
            cmd += ["--config", str(write_config(tmp_dir, config_edit))]
        for k, v in vars.items():
            cmd += ["--var", f"{k}:{v}"]
        env = dict(os.environ, WRANGLER_SEND_METRICS="false", NO_COLOR="1", FORCE_COLOR="0", CI="true")
        with open(log_path, "ab") as log:
            log.write(f"\n=== attempt {attempt + 1}: {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() kills it whole
            )
        worker = Worker(
            base_url=f"http://127.0.0.1:{port}",
            port=port,
            inspector_port=inspector_port,
            vars=vars,
            secrets=secrets,
            state_dir=state_dir,
            log_path=log_path,
            proc=proc,
        )
        try:
            _wait_ready(worker)
            return worker
        except RuntimeError:
            worker.stop()
            if attempt == 2 or "address already in use" not in worker.log_tail().lower():
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def built_worker() -> Path:
    """Builds the bundle once per session (EDGEFLAG_E2E_SKIP_BUILD=1 reuses build/)."""
    if os.environ.get("EDGEFLAG_E2E_SKIP_BUILD") == "1":
        if not BUNDLE_ENTRY.exists():
            pytest.fail(f"EDGEFLAG_E2E_SKIP_BUILD=1 but {BUNDLE_ENTRY} does not exist")
    else:
        subprocess.run(["bash", str(REPO / "scripts" / "build-worker.sh")], cwd=REPO, check=True, timeout=BUILD_TIMEOUT)
    if not WRANGLER.exists():
        pytest.fail(f"{WRANGLER} missing: run `bash scripts/setup.sh --e2e`")
    return BUNDLE_ENTRY


@pytest.fixture(scope="session")
def start_worker(built_worker: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Worker]]:
    """Factory for Worker instances; identical configurations share one
    instance, and every instance is stopped at the end of the session."""
    started: dict[str, Worker] = {}

    def start(vars: dict[str, str] | None = None, secrets: dict[str, str] | None = None, label: str = "") -> Worker:
        """`label` only tells otherwise identical instances apart, for a test
        that must not share its instance with others."""
        key = json.dumps([vars or {}, secrets, label], sort_keys=True)
        if key not in started:
            started[key] = launch_worker(tmp_path_factory.mktemp("wrangler"), vars, secrets)
        return started[key]

    yield start

    errors = []
    for w in started.values():
        try:
            w.stop()
        except Exception as e:  # keep stopping the others
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture(scope="session")
def worker(request: pytest.FixtureRequest, start_worker: Callable[..., Worker]) -> Worker:
    """The Worker for this test: the default one, or the configuration given
    by indirect parametrisation ({"vars": {...}, "secrets": {...}})."""
    config = getattr(request, "param", None) or {}
    unknown = set(config) - {"vars", "secrets"}
    if unknown:
        raise ValueError(f"unknown worker config keys: {sorted(unknown)}")
    return start_worker(vars=config.get("vars"), secrets=config.get("secrets"))


@pytest.fixture
def base_url(worker: Worker) -> str:
    return worker.base_url


@pytest.fixture(scope="session")
def http() -> Iterator[requests.Session]:
    """A requests session; pass timeout=REQUEST_TIMEOUT on every call."""
    with requests.Session() as s:
        yield s


# --- Shared by test_api.py and test_python_sdk.py --------------------------------

# Client secrets of the embedded demo state (src/demo_state.json).
DEMO_SECRET = "demo-secret"  # clients/demo/credentials/web, environment production
DEMO_STAGING_SECRET = "demo-staging-secret"  # clients/demo/credentials/staging, environment staging
DEMO_CREDENTIAL = "clients/demo/credentials/web"

# The configuration under which flags:resolve with apply=false returns a
# resolve token (the default, FORCE_APPLY=true, applies every resolve).
NO_FORCE_APPLY = {"FORCE_APPLY": "false"}


def assert_cors(resp: requests.Response, origin: str = "*") -> None:
    """The CORS headers every response carries, errors and preflights included."""
    h = resp.headers
    assert h.get("Access-Control-Allow-Origin") == origin, dict(h)
    methods = {m.strip() for m in h.get("Access-Control-Allow-Methods", "").split(",")}
    assert {"GET", "POST", "OPTIONS"} <= methods, dict(h)
    assert h.get("Access-Control-Allow-Headers"), dict(h)
    assert int(h.get("Access-Control-Max-Age", "0")) > 0, dict(h)


def assert_error(resp: requests.Response, status: int, code: str) -> str:
    """A JSON `{"error": {"code", "message"}}` with `status`; returns the message."""
    assert resp.status_code == status, resp.text
    assert resp.headers.get("Content-Type", "").startswith("application/json"), dict(resp.headers)
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    message = body["error"]["message"]
    assert isinstance(message, str) and message, body
    return message


def random_token_key() -> str:
    """A fresh RESOLVE_TOKEN_KEY value: base64 of 32 random bytes."""
    return base64.b64encode(os.urandom(32)).decode()


def poll(check: Callable[[], object], attempts: int, interval: float) -> object:
    """Calls `check` up to `attempts` times, `interval` seconds apart, and
    returns its first truthy result (or the last falsy one). Bounded in
    count and, with REQUEST_TIMEOUT on each request inside, in time."""
    result: object = None
    for i in range(attempts):
        result = check()
        if result:
            return result
        if i + 1 < attempts:
            time.sleep(interval)
    return result


def parse_prometheus(text: str) -> dict[str, float]:
    """`name{labels} value` lines of a Prometheus text exposition, keyed by
    `name{labels}` exactly as written (comments skipped)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            samples[key] = float(value)
        except ValueError:
            continue
    return samples
