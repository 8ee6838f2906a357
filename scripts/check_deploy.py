#!/usr/bin/env python3
"""Validates the production configuration offline: `wrangler deploy --dry-run`
on the built bundle, so a broken wrangler.toml (bindings, Durable Object
migrations, queues, cron) fails here instead of at deploy time.

    python3 scripts/check_deploy.py [--config PATH] [--outdir DIR]

Fails (exit 1, every problem listed) when wrangler exits non-zero or prints a
warning or an error (it only warns about unknown fields and missing
migrations), when a binding declared in the config is missing from what
wrangler would deploy, or when the packaged wasm is not the bundle that
scripts/build-worker.sh built (build/edgeflag-build.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WRANGLER = REPO / "node_modules" / ".bin" / "wrangler"
TIMEOUT = 120


def declared_bindings(config: dict) -> set[str]:
    names = set(config.get("vars", {}))
    for kv in config.get("kv_namespaces", []):
        names.add(kv["binding"])
    for producer in config.get("queues", {}).get("producers", []):
        names.add(producer["binding"])
    for do in config.get("durable_objects", {}).get("bindings", []):
        names.add(do["name"])
    return names


def check(config_path: Path, outdir: Path) -> list[str]:
    problems = []
    try:
        config = tomllib.loads(config_path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        return [f"{config_path}: {e}"]
    manifest_path = REPO / "build" / "edgeflag-build.json"
    if not manifest_path.exists():
        return [f"{manifest_path} missing: build the bundle first (scripts/build-worker.sh)"]
    manifest = json.loads(manifest_path.read_text())

    # A leftover bundle from an earlier run must not pass the hash check.
    shutil.rmtree(outdir, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="edgeflag-dry-run-") as home:
        env = dict(
            os.environ,
            CI="true",
            NO_COLOR="1",
            FORCE_COLOR="0",
            WRANGLER_SEND_METRICS="false",
            # wrangler's logs and global state stay out of ~/.config.
            XDG_CONFIG_HOME=home,
            WRANGLER_LOG_PATH=home,
        )
        cmd = [str(WRANGLER), "deploy", "--dry-run", "--outdir", str(outdir), "--config", str(config_path)]
        try:
            run = subprocess.run(
                cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT
            )
        except subprocess.TimeoutExpired:
            return [f"`{' '.join(cmd)}` did not finish within {TIMEOUT}s"]
    # wrangler colours its output whatever NO_COLOR says.
    out = re.sub(r"\x1b\[[0-9;]*m", "", run.stdout + run.stderr)
    if run.returncode != 0:
        problems.append(f"wrangler deploy --dry-run exited {run.returncode}")
    for marker, what in (("[WARNING]", "a warning"), ("[ERROR]", "an error")):
        if marker in out:
            problems.append(f"wrangler printed {what}")
    if run.returncode == 0:
        listed = set(re.findall(r"^env\.([A-Za-z_][A-Za-z0-9_]*)\b", out, re.MULTILINE))
        for name in sorted(declared_bindings(config) - listed):
            problems.append(f"binding {name} is declared in {config_path.name} but not in the dry run's bindings")
        wasm = list(outdir.glob("*index_bg.wasm")) if outdir.exists() else []
        want = manifest["sha256"]["index_bg.wasm"]
        got = [hashlib.sha256(w.read_bytes()).hexdigest() for w in wasm]
        if want not in got:
            problems.append(f"the dry run did not package build/index_bg.wasm (sha256 {want}); found {got}")
    if problems:
        problems.append("wrangler said:\n" + out.strip())
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "wrangler.toml")
    ap.add_argument("--outdir", type=Path, default=REPO / "target" / "deploy-dry-run")
    args = ap.parse_args()
    if not WRANGLER.exists():
        print(f"check_deploy: {WRANGLER} missing: run `bash scripts/setup.sh`", file=sys.stderr)
        return 1
    problems = check(args.config.resolve(), args.outdir.resolve())
    if problems:
        for p in problems:
            print(f"check_deploy: ERROR: {p}", file=sys.stderr)
        return 1
    config = tomllib.loads(args.config.read_text())
    print(
        f"check_deploy: ok: wrangler deploy --dry-run accepts {args.config.name} "
        f"({len(declared_bindings(config))} bindings) and packages the built bundle"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
