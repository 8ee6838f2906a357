"""The build and the deploy configuration are checked before anything ships.

scripts/build-worker.sh validates the state it embeds: an invalid state must
stop the build with every problem named, before worker-build runs, and leave
the bundle in build/ as it was. (The valid path is every other e2e test: they
run on the bundle it built.) scripts/check_deploy.py runs `wrangler deploy
--dry-run` on the built bundle: scripts/test.sh runs it on the production
wrangler.toml, and here a broken copy fails it, even where wrangler itself
only warns. The bundle's wasm carries no name section
(scripts/strip_wasm_names.py), and stripping it leaves every other section
as it was.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from conftest import REPO, Bundle, write_config

sys.path.insert(0, str(REPO / "scripts"))
from strip_wasm_names import strip_names  # noqa: E402

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


CHECK_DEPLOY = REPO / "scripts" / "check_deploy.py"


def run_check_deploy(config: Path, outdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CHECK_DEPLOY), "--config", str(config), "--outdir", str(outdir)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize(
    "edit, says",
    [
        # A misspelt queue option is only a wrangler warning: it must still fail.
        (lambda t: t.replace("max_batch_size = ", "max_batch_sise = ", 1), 'Unexpected fields found in queues.consumers[0] field: "max_batch_sise"'),
        # A Durable Object binding whose class the bundle does not export.
        (
            lambda t: t + '\n[[durable_objects.bindings]]\nname = "NOT_THERE"\nclass_name = "NotExported"\n'
            '\n[[migrations]]\ntag = "vtest"\nnew_sqlite_classes = ["NotExported"]\n',
            "not exported",
        ),
    ],
    ids=["misspelt-queue-option", "unexported-durable-object"],
)
def test_a_broken_config_fails_the_dry_run_deploy(
    built_worker: Bundle, tmp_path: Path, edit: Callable[[str], str], says: str
) -> None:
    config = write_config(tmp_path / "wrangler.toml", built_worker, edit)
    run = run_check_deploy(config, tmp_path / "out")
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "check_deploy: ERROR" in out and says in out, out


def custom_section_names(wasm: bytes) -> list[str]:
    from strip_wasm_names import MAGIC, leb128

    names, i = [], len(MAGIC)
    while i < len(wasm):
        size, body = leb128(wasm, i + 1)
        if wasm[i] == 0:
            n, at = leb128(wasm, body)
            names.append(wasm[at : at + n].decode())
        i = body + size
    return names


def test_the_bundle_wasm_has_no_name_section() -> None:
    wasm = BUNDLE_WASM.read_bytes()
    assert "name" not in custom_section_names(wasm)
    assert strip_names(wasm) == (wasm, 0)


def test_stripping_names_drops_only_the_name_section() -> None:
    # magic, a type section (one `() -> ()`), a name section, a custom "keep".
    def custom(name: bytes, payload: bytes) -> bytes:
        body = bytes([len(name)]) + name + payload
        return bytes([0, len(body)]) + body

    types = bytes([1, 4, 1, 0x60, 0, 0])
    names = custom(b"name", bytes([1, 4, 1, 0, 1, ord("f")]))
    keep = custom(b"keep", b"xyz")
    wasm = b"\0asm\x01\0\0\0" + types + names + keep
    assert strip_names(wasm) == (b"\0asm\x01\0\0\0" + types + keep, len(names))
    with pytest.raises(ValueError, match="past the end"):
        strip_names(wasm[:-1])
    with pytest.raises(ValueError, match="magic"):
        strip_names(b"\0asm\x02\0\0\0")
