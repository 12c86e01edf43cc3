"""The compiled forwarding path: used only whole and only when up to date."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from revproxy import native

PROBE = (
    "import importlib, revproxy.native as n; "
    "print(n.STATE); "
    "[print(importlib.import_module(m).__file__) for m in n.MODULES]"
)


def _fake_tree(root: Path) -> None:
    (root / "pyproject.toml").write_text("")
    for name in native.MODULES:
        src = native.source_of(name, root)
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text("")
        native.object_of(name, root).write_bytes(b"")


def test_state_follows_the_objects_and_their_sources(tmp_path: Path) -> None:
    assert native.compiled_state(tmp_path, {}) == "absent"
    _fake_tree(tmp_path)
    assert native.compiled_state(tmp_path, {}) == "compiled"
    assert native.compiled_state(tmp_path, {native.PURE_ENV: "1"}) == "disabled"
    assert native.compiled_state(tmp_path, {native.PURE_ENV: "0"}) == "compiled"
    # One source edited after the build makes the whole set stale.
    src = native.source_of(native.MODULES[-1], tmp_path)
    built = native.object_of(native.MODULES[-1], tmp_path).stat().st_mtime
    os.utime(src, (built + 10, built + 10))
    assert native.compiled_state(tmp_path, {}) == "stale"
    # Installed from a wheel (no source checkout): the objects are used as they are.
    (tmp_path / "pyproject.toml").unlink()
    assert native.compiled_state(tmp_path, {}) == "compiled"
    # One object missing: nothing compiled is used.
    native.object_of(native.MODULES[0], tmp_path).unlink()
    assert native.compiled_state(tmp_path, {}) == "absent"


def _probe(cwd: Path, env: dict[str, str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(cwd), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.split()


@pytest.fixture()
def compiled_copy(tmp_path: Path) -> Path:
    """A copy of the package with its compiled objects (skipped when there are none)."""
    if native.STATE != "compiled":
        pytest.skip(f"the forwarding path is not compiled here: {native.describe()}")
    shutil.copytree(native.ROOT / "revproxy", tmp_path / "revproxy")
    shutil.copy2(native.ROOT / "pyproject.toml", tmp_path)
    for lib in native.ROOT.glob("*__mypyc*"):
        shutil.copy2(lib, tmp_path)
    return tmp_path


def test_compiled_objects_load_when_up_to_date(compiled_copy: Path) -> None:
    state, *files = _probe(compiled_copy, {native.PURE_ENV: ""})
    assert state == "compiled"
    assert files and all(f.endswith(".so") for f in files), files


def test_all_sources_load_when_one_is_newer_or_when_asked(compiled_copy: Path) -> None:
    state, *files = _probe(compiled_copy, {native.PURE_ENV: "1"})
    assert state == "disabled"
    assert all(f.endswith(".py") for f in files), files
    src = native.source_of(native.MODULES[0], compiled_copy)
    later = native.object_of(native.MODULES[0], compiled_copy).stat().st_mtime + 10
    os.utime(src, (later, later))
    state, *files = _probe(compiled_copy, {native.PURE_ENV: ""})
    assert state == "stale"
    assert len(files) == len(native.MODULES)
    assert all(f.endswith(".py") for f in files), files
