"""End-to-end fixtures: the real Worker bundle under `wrangler dev` (workerd).

The bundle is built once per session with scripts/build-worker.sh (set
EDGEFLAG_E2E_SKIP_BUILD=1 to reuse an existing build/), then copied and
checked against its manifest (build/edgeflag-build.json): every instance runs
that private copy, so nothing that touches build/ meanwhile changes what is
served.

Each Worker instance is isolated by construction: its own process group, free
loopback ports, and a private folder holding its wrangler.toml copy (so its
own .wrangler/ and watched files), its empty `--persist-to` state (fresh
local KV, Queues, Durable Objects), its secrets file (a developer's .dev.vars
never leaks in), its dev registry and its wrangler logs. It is ready when the
Worker's own workerd serves the bundle's state etag; tests talk to that
workerd directly, not through wrangler's dev proxy (see _find_worker_socket
for why). Every wait is bounded.

Fixtures:
  worker          the default instance (wrangler.toml vars + test secrets);
                  parametrise it indirectly for another configuration:
                      @pytest.mark.parametrize(
                          "worker", [{"vars": {"FORCE_APPLY": "false"}}], indirect=True)
                  Instances are shared per configuration for the whole session.
  start_worker    factory: start_worker(vars={...}, secrets={...}, label="") -> Worker
  base_url        the default instance's URL, e.g. http://127.0.0.1:40123
  built_worker    the session's Bundle (launch_worker(..., bundle=) takes another)
  local_kv        LocalKv: reads and writes any instance's local KV in
                  milliseconds (a `wrangler kv --local` call costs seconds)
  none_bundle     a bundle built with EDGEFLAG_STATE=none (no embedded state), in
                  target/e2e-none/build, rebuilt only when its inputs change
                  (cached_bundle); launch_worker(..., bundle=none_bundle)
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import tomllib
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


# Ports for wrangler's --port/--inspector-port. A port the kernel picks for
# bind(0) is an ephemeral one, which it may hand to anyone else's bind(0) or
# outgoing connection (every workerd binds its sockets that way) before
# wrangler binds it: that collision once failed a start. So ports come from
# below the ephemeral range, are checked bindable, and are reserved for the
# session with a lock file that other sessions on this machine respect.
_PORT_LOCK_DIR = Path(tempfile.gettempdir()) / "edgeflag-e2e-ports"
_PORTS_HELD: dict[int, int] = {}  # port -> fd of its lock file, held until exit
_PORTS_LOCK = threading.Lock()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port() -> int:
    """A loopback port no other process is using or will be given by the
    kernel, and no other e2e session on this machine holds."""
    hi = min(_ephemeral_start(), 65536) - 1
    lo = 10000 if hi > 12000 else 1024
    _PORT_LOCK_DIR.mkdir(exist_ok=True)
    rng = random.Random()
    with _PORTS_LOCK:
        for _ in range(500):
            port = rng.randint(lo, hi)
            if port in _PORTS_HELD:
                continue
            fd = os.open(_PORT_LOCK_DIR / str(port), os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # another session holds it
            if not _bindable(port):
                os.close(fd)
                continue
            _PORTS_HELD[port] = fd
            return port
    raise RuntimeError(f"no free loopback port in {lo}-{hi} after 500 tries")


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


def _listening_ports(pid: int) -> set[int]:
    """TCP ports process `pid` listens on (Linux /proc: its socket inodes
    matched against /proc/net/tcp{,6} rows in state LISTEN)."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and cols[9] in inodes:
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@dataclass
class Worker:
    """A running `wrangler dev` instance.

    `base_url` is the Worker's own workerd (its `entry` socket), which tests
    talk to; `proxy_url` is wrangler's dev proxy on `port`, which they do
    not (see _find_worker_socket)."""

    base_url: str
    proxy_url: str
    port: int
    inspector_port: int
    vars: dict[str, str]
    secrets: dict[str, str]
    state_dir: Path
    log_path: Path
    config_path: Path
    proc: subprocess.Popen = field(repr=False)

    def url(self, path: str) -> str:
        return self.base_url + path

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, check_ports: bool = True) -> None:
        """Stops the whole process group (npx/node/workerd) and checks that
        nothing is left listening on its ports (unless `check_ports` is
        false: a start that lost its port to another process)."""
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
        while check_ports and time.monotonic() < deadline and (port_open(self.port) or port_open(self.inspector_port)):
            time.sleep(0.2)
        leftover = [p for p in (self.port, self.inspector_port) if port_open(p)]
        if leftover and check_ports:
            raise RuntimeError(f"wrangler dev stopped but ports {leftover} still listen")


@dataclass(frozen=True)
class Bundle:
    """A private, verified copy of a built Worker bundle (see snapshot_bundle)."""

    dir: Path
    state_etag: str

    @property
    def entry(self) -> Path:
        return self.dir / "worker" / "shim.mjs"


def snapshot_bundle(build_dir: Path, dest: Path) -> Bundle:
    """Copies the bundle that scripts/build-worker.sh left in `build_dir` to
    `dest` and checks every file against the build's manifest. Instances run
    the copy, so nothing that rebuilds or touches build/ while the suite runs
    can change (or make wrangler reload) what they serve."""
    manifest_path = build_dir / "edgeflag-build.json"
    if not manifest_path.exists():
        pytest.fail(f"{manifest_path} missing: the bundle in {build_dir} is not a whole build (run scripts/build-worker.sh)")
    manifest = json.loads(manifest_path.read_text())
    for rel, want in manifest["sha256"].items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(build_dir / rel, target)
        got = hashlib.sha256(target.read_bytes()).hexdigest()
        if got != want:
            pytest.fail(f"{build_dir / rel} changed after its build (sha256 {got}, manifest {want})")
    # worker-build's package.json marks the .js files as ES modules.
    if (build_dir / "package.json").exists():
        shutil.copyfile(build_dir / "package.json", dest / "package.json")
    return Bundle(dir=dest, state_etag=manifest["stateEtag"])


def bundle_inputs_hash(extra: list[Path]) -> str:
    """A hash of everything a bundle is built from (`extra`: its state)."""
    h = hashlib.sha256()
    paths = [REPO / p for p in ("build.rs", "Cargo.toml", "Cargo.lock", "scripts/build-worker.sh")] + extra
    for d in ("src", "proto"):
        paths += sorted(p for p in (REPO / d).rglob("*") if p.is_file())
    for p in paths:
        h.update(str(p.relative_to(REPO) if p.is_relative_to(REPO) else p).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def say(config: pytest.Config, line: str) -> None:
    """A line on pytest's own output, past its capture (build times)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():  # fd 1 is captured meanwhile
        reporter.write_line(line)


def cached_bundle(
    state: str, out: str, dest: Path, extra: list[Path] | None = None, config: pytest.Config | None = None
) -> Bundle:
    """scripts/build-worker.sh with EDGEFLAG_STATE=`state` into `out`
    (relative to REPO, beside build/, which keeps the demo state), skipped
    while a whole build of the same inputs is there; then snapshotted to
    `dest`. It shares target/ with build/, so a rebuild recompiles only the
    edgeflag crate (its embedded state changed) and relinks."""
    stamp_path = (REPO / out).parent / "stamp"
    stamp = bundle_inputs_hash(extra or [])
    stamp_path.parent.mkdir(parents=True, exist_ok=True)
    # One build at a time per out dir, across pytest-xdist workers: the
    # second waits for the first and then finds the stamp.
    with open(stamp_path.parent / ".build-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        whole = (REPO / out / "edgeflag-build.json").exists()
        if not (whole and stamp_path.exists() and stamp_path.read_text() == stamp):
            started = time.monotonic()
            subprocess.run(
                ["bash", str(REPO / "scripts" / "build-worker.sh")],
                cwd=REPO,
                env=dict(os.environ, EDGEFLAG_STATE=state, EDGEFLAG_OUT_DIR=out),
                check=True,
                timeout=BUILD_TIMEOUT,
            )
            stamp_path.write_text(stamp)
            if config is not None:
                say(config, f"cached_bundle: built {out} (EDGEFLAG_STATE={state}) in {time.monotonic() - started:.0f} s")
        return snapshot_bundle(REPO / out, dest)


# The bundle every instance runs unless told otherwise; set once per session
# by the `built_worker` fixture.
_session_bundle: Bundle | None = None


def write_config(dest: Path, bundle: Bundle, edit: Callable[[str], str] | None = None) -> Path:
    """A private copy of wrangler.toml whose `main` is the bundle's entry
    (absolute), optionally edited further by `edit` (text in, text out). Its
    folder becomes wrangler's project root, so each instance keeps its own
    .wrangler/ and watches only its own files."""
    text = (REPO / "wrangler.toml").read_text()
    text, n = re.subn(r'(?m)^main = ".*"$', "main = " + json.dumps(str(bundle.entry)), text)
    assert n == 1, "wrangler.toml has no single `main = ...` line"
    if edit is not None:
        text = edit(text)
    parsed = tomllib.loads(text)  # a broken edit fails here, not inside wrangler
    assert parsed["main"] == str(bundle.entry), parsed["main"]
    dest.write_text(text)
    return dest


def _serves(port: int, expect_etag: str) -> str | None:
    """None when http://127.0.0.1:`port` runs this bundle (its /healthz
    names the bundle's embedded state etag, whatever state serves: a
    pushed one, or none yet), else why not."""
    try:
        # requests.get opens (and closes) a connection of its own.
        r = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        etag = r.json().get("embeddedEtag") if r.status_code == 200 else None
    except (requests.RequestException, ValueError, AttributeError) as e:
        return f":{port}: {e}"
    return None if etag == expect_etag else f":{port}: HTTP {r.status_code} {r.text[:120]!r}"


def _find_worker_socket(worker: Worker, expect_etag: str) -> int:
    """The port of the workerd that runs the Worker.

    `wrangler dev` runs two workerd processes in its process group: a dev
    proxy on --port/--inspector-port, and the one running the Worker, on a
    kernel-chosen `entry` port it never prints. The proxy forwards over a
    pooled connection whose 5 s idle timeout (kj's HttpClientSettings)
    races the Worker side's 5 s keep-alive timeout (HttpServerSettings
    pipelineTimeout): a request written in that window fails, and wrangler
    4.86's ProxyWorker then answers a POST with a 503 "Your worker restarted
    mid-request" (it compares a URL that includes the request path with one
    that does not, so every proxy-side network error reads as a restart) and
    parks a GET until the next reload. That hop is wrangler's, not ours, and
    production has no such proxy, so tests skip it: they talk to the
    Worker's own workerd, found here as the port of a workerd in this
    process group, other than the proxy's, that serves this bundle's etag."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    why = "no workerd in the process group yet"
    while time.monotonic() < deadline:
        if worker.proc.poll() is not None:
            raise RuntimeError(
                f"wrangler dev exited with {worker.proc.returncode} before serving:\n{worker.log_tail()}"
            )
        reasons = []
        for pid in live_group_members(worker.proc.pid):
            if _process_name(pid) != "workerd":
                continue
            ports = _listening_ports(pid)
            if worker.port in ports:
                continue  # the dev proxy
            for port in sorted(ports):
                reason = _serves(port, expect_etag)
                if reason is None:
                    return port
                reasons.append(reason)
        why = "; ".join(reasons) or why
        time.sleep(0.3)
    raise RuntimeError(
        f"wrangler dev did not serve the bundle (etag {expect_etag}) within {STARTUP_TIMEOUT}s ({why}):\n{worker.log_tail()}"
    )


def launch_worker(
    tmp_dir: Path,
    vars: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None,
    bundle: Bundle | None = None,
    edit_config: Callable[[str], str] | None = None,
) -> Worker:
    """Starts `wrangler dev` on `bundle` (the session's by default) with
    wrangler.toml's vars overridden by `vars` and with exactly `secrets`
    (DEFAULT_SECRETS when None) as secrets.

    Everything wrangler writes or watches is private to the instance:
    `tmp_dir` holds its config copy (and so its .wrangler/), its --persist-to
    state (KV seeded there beforehand is kept), its env file, its dev
    registry and its wrangler logs."""
    bundle = bundle or _session_bundle
    if bundle is None:
        raise RuntimeError("no bundle: use the built_worker fixture (or pass bundle=)")
    vars = dict(vars or {})
    secrets = dict(DEFAULT_SECRETS if secrets is None else secrets)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    config = write_config(tmp_dir / "wrangler.toml", bundle, edit_config)
    # Passing --env-file makes wrangler skip .dev.vars (and .env) entirely.
    env_file = tmp_dir / "secrets.env"
    env_file.write_text("".join(f"{k}={json.dumps(v)}\n" for k, v in secrets.items()))
    env_file.chmod(0o600)
    state_dir = tmp_dir / "state"
    log_path = tmp_dir / "wrangler.log"
    env = dict(
        os.environ,
        WRANGLER_SEND_METRICS="false",
        NO_COLOR="1",
        FORCE_COLOR="0",
        CI="true",
        # Every instance is named "edgeflag"; in one shared dev registry they
        # would overwrite (and on exit delete) each other's entry.
        WRANGLER_REGISTRY_PATH=str(tmp_dir / "registry"),
        MINIFLARE_REGISTRY_PATH=str(tmp_dir / "registry"),
        WRANGLER_LOG_PATH=str(tmp_dir / "wrangler-logs"),
        XDG_CONFIG_HOME=str(tmp_dir / "xdg-config"),
    )

    for attempt in range(3):  # retry only if a picked port got taken meanwhile
        port, inspector_port = free_port(), free_port()
        while inspector_port == port:
            inspector_port = free_port()
        cmd = [
            str(WRANGLER), "dev",
            "--config", str(config),
            "--ip", "127.0.0.1",
            "--port", str(port),
            "--inspector-port", str(inspector_port),
            "--persist-to", str(state_dir),
            "--env-file", str(env_file),
            "--show-interactive-dev-session=false",
            # /cdn-cgi/handler/scheduled runs a cron tick on demand.
            "--test-scheduled",
            "--log-level", "log",  # console.log lines too (state loads)
        ]
        for k, v in vars.items():
            cmd += ["--var", f"{k}:{v}"]
        with open(log_path, "ab") as log:
            log.write(f"\n=== attempt {attempt + 1}: {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=tmp_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() kills it whole
            )
        worker = Worker(
            base_url="",  # set once the Worker's own workerd is found
            proxy_url=f"http://127.0.0.1:{port}",
            port=port,
            inspector_port=inspector_port,
            vars=vars,
            secrets=secrets,
            state_dir=state_dir,
            log_path=log_path,
            config_path=config,
            proc=proc,
        )
        try:
            worker.base_url = f"http://127.0.0.1:{_find_worker_socket(worker, bundle.state_etag)}"
            # The proxy must serve too: wrangler is whole, not half started.
            if (reason := _serves(port, bundle.state_etag)) is not None:
                raise RuntimeError(f"wrangler's proxy does not serve the bundle ({reason}):\n{worker.log_tail()}")
            _launched.append(worker)
            return worker
        except RuntimeError:
            taken = "address already in use" in worker.log_tail().lower()
            worker.stop(check_ports=not taken)  # a taken port listens for someone else
            if attempt == 2 or not taken:
                raise
    raise AssertionError("unreachable")


def secret_forms(value: str) -> set[bytes]:
    """`value` as configured and as base64 (standard, URL-safe, unpadded) and
    hex; for a token key, also its raw bytes and their hex and base64url."""
    forms: set[bytes] = set()
    raws = [value.encode()]
    try:
        raws.append(base64.b64decode(value, validate=True))
    except ValueError:
        pass
    for raw in raws:
        forms |= {
            raw,
            raw.hex().encode(),
            raw.hex().upper().encode(),
            base64.b64encode(raw),
            base64.b64encode(raw).rstrip(b"="),
            base64.urlsafe_b64encode(raw).rstrip(b"="),
        }
    return {f for f in forms if len(f) >= 12}


# Every instance started this session, for the leak check at its end.
_launched: list[Worker] = []


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log() -> Iterator[None]:
    """After the whole session: no secret any instance was given appears, in
    any encoding, in any instance's wrangler output (the Worker's logs)."""
    yield
    leaks = []
    for w in _launched:
        try:
            log = w.log_path.read_bytes()
        except OSError:
            continue
        for name, value in w.secrets.items():
            for part in value.split(","):
                for form in secret_forms(part.strip()):
                    if form in log:
                        leaks.append(f"{name} ({form[:6]!r}...) in {w.log_path}")
    assert not leaks, "secrets in wrangler logs:\n" + "\n".join(sorted(set(leaks)))


@pytest.fixture(scope="session")
def built_worker(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """Builds the bundle once per session (EDGEFLAG_E2E_SKIP_BUILD=1 reuses
    build/), then snapshots it: every instance runs that private copy."""
    global _session_bundle
    if not WRANGLER.exists():
        pytest.fail(f"{WRANGLER} missing: run `bash scripts/setup.sh --e2e`")
    (REPO / "target").mkdir(exist_ok=True)
    # pytest-xdist workers build and snapshot build/ one at a time.
    with open(REPO / "target" / ".e2e-build-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.environ.get("EDGEFLAG_E2E_SKIP_BUILD") == "1":
            if not BUNDLE_ENTRY.exists():
                pytest.fail(f"EDGEFLAG_E2E_SKIP_BUILD=1 but {BUNDLE_ENTRY} does not exist")
        else:
            subprocess.run(["bash", str(REPO / "scripts" / "build-worker.sh")], cwd=REPO, check=True,
                           timeout=BUILD_TIMEOUT)
        _session_bundle = snapshot_bundle(REPO / "build", tmp_path_factory.mktemp("bundle"))
    return _session_bundle


@pytest.fixture(scope="session")
def none_bundle(built_worker: Bundle, tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Bundle:
    """The recommended production build, EDGEFLAG_STATE=none: no embedded
    state, 503 until its first state loads from STATE_KV. Built after the
    session's bundle (never both at once), reused while its inputs are the
    same."""
    bundle = cached_bundle("none", "target/e2e-none/build", tmp_path_factory.mktemp("none-bundle"), config=pytestconfig)
    assert bundle.state_etag == "none", bundle
    return bundle


@pytest.fixture(scope="session")
def start_worker(built_worker: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Worker]]:
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


class _OneConnectionPerRequest(requests.adapters.HTTPAdapter):
    """Sends every request on a new TCP connection and closes it once the
    response is read. workerd drops a keep-alive connection after 5 s idle
    (kj's pipelineTimeout), and ignores a request's `Connection: close`, so
    a pooled connection reused near that moment can be closed under the
    request: a failure that is not the Worker's. Loopback connections cost
    well under a millisecond."""

    def send(self, request, stream=False, **kwargs):  # type: ignore[override]
        resp = super().send(request, stream=False, **kwargs)
        _ = resp.content  # read it all, then drop the pool and its connection
        self.close()
        return resp


def fresh_session() -> requests.Session:
    """A requests session whose every request gets its own connection (see
    _OneConnectionPerRequest). Use it instead of requests.Session() in tests;
    pass timeout=REQUEST_TIMEOUT on every call."""
    s = requests.Session()
    adapter = _OneConnectionPerRequest(max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


@pytest.fixture(scope="session")
def http() -> Iterator[requests.Session]:
    """A fresh_session(); pass timeout=REQUEST_TIMEOUT on every call."""
    with fresh_session() as s:
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


def kv_namespace_id(binding: str) -> str:
    """wrangler.toml's local namespace id for `binding`."""
    config = tomllib.loads((REPO / "wrangler.toml").read_text())
    return next(k["id"] for k in config["kv_namespaces"] if k["binding"] == binding)


class LocalKv:
    """One scripts/kv_local.js process for the session: each instance's
    persisted local KV (its --persist-to dir, before or while it runs) is
    opened once, then every call takes milliseconds. `wrangler kv key ...
    --local` costs a node start and a Miniflare per call, 2.8 s here; the
    tests of scripts/push-state.sh itself still go through wrangler."""

    BINDINGS = ("STATE_KV", "MATERIALIZATIONS_KV", "METRICS_KV")
    TIMEOUT = 60

    def __init__(self, scratch: Path) -> None:
        self._ids = {b: kv_namespace_id(b) for b in self.BINDINGS}
        self._scratch = scratch
        self._lock = threading.Lock()
        self._n = 0
        self.proc = subprocess.Popen(
            ["node", str(REPO / "scripts" / "kv_local.js"), *self._ids.values()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
            env=dict(os.environ, WRANGLER_SEND_METRICS="false", NO_COLOR="1"),
            start_new_session=True,  # its own group: close() stops its workerds too
        )
        ready = self._answer()
        if not ready.get("ready"):
            self.close()
            raise RuntimeError(f"kv_local.js did not start: {ready}")

    def _answer(self) -> dict:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], self.TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            # Out of step with its answers from here on: stop it.
            self.close()
            raise RuntimeError(f"kv_local.js gave no answer within {self.TIMEOUT} s (exit {self.proc.poll()})")
        return json.loads(line)

    def _call(self, **req: object) -> dict:
        with self._lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            answer = self._answer()
        if not answer.get("ok"):
            raise RuntimeError(f"kv_local.js {req.get('op')} {req.get('key', req.get('prefix', ''))}: {answer.get('error')}")
        return answer

    def put(self, state_dir: Path, binding: str, key: str, value: bytes | str,
            ttl: int | None = None, metadata: object = None) -> float:
        """Writes `value` at `key`; returns the put's own milliseconds."""
        with self._lock:
            self._n += 1
            f = self._scratch / f"value-{self._n}"
        f.write_bytes(value.encode() if isinstance(value, str) else value)
        req: dict = {"op": "put", "dir": str(state_dir), "ns": self._ids[binding], "key": key, "file": str(f)}
        if ttl is not None:
            req["ttl"] = ttl
        if metadata is not None:
            req["metadata"] = metadata
        ms = self._call(**req)["ms"]
        f.unlink()
        return ms

    def get(self, state_dir: Path, binding: str, key: str) -> bytes | None:
        b64 = self._call(op="get", dir=str(state_dir), ns=self._ids[binding], key=key)["base64"]
        return None if b64 is None else base64.b64decode(b64)

    def list(self, state_dir: Path, binding: str, prefix: str = "") -> list[dict]:
        """The keys under `prefix`: [{"name", "metadata"?, "expiration"?}]."""
        return self._call(op="list", dir=str(state_dir), ns=self._ids[binding], prefix=prefix)["keys"]

    def release(self, state_dir: Path) -> None:
        """Closes the store of `state_dir` (e.g. before its instance starts)."""
        self._call(op="close", dir=str(state_dir))

    def close(self) -> None:
        """Ends it (closing stdin disposes every store), then kills whatever
        of its process group is left (Miniflare's workerds) and checks that
        nothing is."""
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=5)
        gone = poll(lambda: not live_group_members(self.proc.pid), 20, 0.25)
        assert gone, f"kv_local.js left processes behind: {live_group_members(self.proc.pid)}"


CLI = REPO / "target" / "debug" / "edgeflag"


@pytest.fixture(scope="session")
def cli() -> Path:
    """The `edgeflag` CLI (target/debug), built for the tests that compare
    with `edgeflag resolve` or convert states; the embedded-state variables
    of a bundle build must not leak into it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLAG_STATE") and k != "EDGEFLAG_ACCOUNT"}
    subprocess.run(["cargo", "build", "--quiet", "--bin", "edgeflag"], cwd=REPO, env=env, check=True, timeout=900)
    return CLI


def push_fast(kv: LocalKv, state_dir: Path, path: Path) -> str:
    """What push-state.sh --keep-previous writes (the CLI's canonical blob,
    then the pointer), through LocalKv: milliseconds instead of two wrangler
    starts; to `state_dir` before or while its instance runs. Needs the
    `cli` fixture. The tests of push-state.sh itself call the script."""
    # A directory of its own per call: concurrent pushes of one state file
    # (the sticky-layout rounds start in parallel) must not share outputs.
    work = Path(tempfile.mkdtemp(prefix=f"push-{path.stem}-", dir=path.parent))
    out, ptr = work / "envelope", work / "pointer.json"
    subprocess.run([str(CLI), "convert", "--state", str(path), "--to", "envelope", "--out", str(out),
                    "--pointer", str(ptr)], check=True, timeout=60)
    etag = json.loads(ptr.read_text())["etag"]
    kv.put(state_dir, "STATE_KV", f"state:blob:{etag}", out.read_bytes())
    kv.put(state_dir, "STATE_KV", "state:current", ptr.read_bytes())
    return etag


@pytest.fixture(scope="session")
def local_kv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKv]:
    kv = LocalKv(tmp_path_factory.mktemp("local-kv"))
    yield kv
    kv.close()
