"""scripts/build-worker.sh validates the state it embeds before building.

An invalid state must stop the build with every problem named, before
worker-build runs, and leave the bundle in build/ as it was. (The valid
path is every other e2e test: they run on the bundle it built.)
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import REPO

BUILD_WORKER = REPO / "scripts" / "build-worker.sh"
BUNDLE_WASM = REPO / "build" / "index_bg.wasm"


def test_an_invalid_state_fails_the_build_and_leaves_the_bundle(tmp_path: Path) -> None:
    demo = (REPO / "src" / "demo_state.json").read_text(encoding="utf-8")
    # An assignment naming a variant the flag lacks.
    broken = demo.replace(
        '"variant": {"variant": "flags/welcome-banner/variants/nordic"}',
        '"variant": {"variant": "flags/welcome-banner/variants/missing"}',
        1,
    )
    assert broken != demo, "the demo state changed; update this test's edit"
    state = tmp_path / "broken.json"
    state.write_text(broken, encoding="utf-8")
    before = BUNDLE_WASM.stat().st_mtime_ns if BUNDLE_WASM.exists() else None

    env = dict(os.environ, EDGEFLAG_STATE=str(state))
    run = subprocess.run(
        ["bash", str(BUILD_WORKER)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    assert "does not validate; not building" in out, out
    assert "flags/welcome-banner/variants/missing" in out, out
    assert "worker-build --release" not in out, "validation must come before the wasm build"
    after = BUNDLE_WASM.stat().st_mtime_ns if BUNDLE_WASM.exists() else None
    assert after == before, "the existing bundle was rewritten"
