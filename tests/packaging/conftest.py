"""Builds for the packaging tests: the zipapp and the .deb, made once per test run from the
working tree with the scripts in packaging/ (they need PyPI for the dependencies' wheels; pip's
cache and packaging/staging.py's make reruns quick)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..realclient.conftest import client_binaries, netns  # noqa: F401 - shared fixtures
from ..realclient.harness import REPO

BUILD_TIMEOUT = 1200


def _build(script: str, out: Path, *extra: str) -> Path:
    proc = subprocess.run(
        [sys.executable, str(REPO / "packaging" / script), "--out", str(out), *extra],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT, cwd=REPO,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def pyz(tmp_path_factory) -> Path:
    path = _build("build_pyz.py", tmp_path_factory.mktemp("pyz"))
    assert path.name.endswith(f"-linux_{os.uname().machine}.pyz")
    return path


@pytest.fixture(scope="session")
def pyz_other_arch(tmp_path_factory) -> tuple[str, Path]:
    """The zipapp for the other of the two architectures (cross-built: wheels only)."""
    other = "aarch64" if os.uname().machine == "x86_64" else "x86_64"
    return other, _build("build_pyz.py", tmp_path_factory.mktemp("pyz-other"), "--arch", other)


@pytest.fixture(scope="session")
def deb(tmp_path_factory) -> Path:
    if subprocess.run(["which", "dpkg-deb"], capture_output=True).returncode != 0:
        pytest.skip("dpkg-deb is not on this machine (not Debian)")
    return _build("build_deb.py", tmp_path_factory.mktemp("deb"))
