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
from . import chroot, emulation

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


def _arm64_build_tools() -> None:
    """A strip that knows aarch64, so that the arm64 artefacts' native modules lose their debug
    symbols as the host's do (packaging/staging.py)."""
    if os.uname().machine != "aarch64":
        try:
            chroot.apt_install({"aarch64-linux-gnu-strip": "binutils-aarch64-linux-gnu"})
        except chroot.Unavailable as e:
            pytest.fail(f"cannot install the aarch64 strip: {e}")


@pytest.fixture(scope="session")
def pyz_arm64(tmp_path_factory) -> Path:
    """The aarch64 zipapp (cross-built on x86_64: the wheels are aarch64 manylinux ones)."""
    _arm64_build_tools()
    return _build("build_pyz.py", tmp_path_factory.mktemp("pyz-arm64"), "--arch", "aarch64")


def _need_dpkg_deb() -> None:
    if subprocess.run(["which", "dpkg-deb"], capture_output=True).returncode != 0:
        pytest.skip("dpkg-deb is not on this machine (not Debian)")


@pytest.fixture(scope="session")
def deb(tmp_path_factory) -> Path:
    _need_dpkg_deb()
    return _build("build_deb.py", tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="session")
def deb_arm64(tmp_path_factory) -> Path:
    _need_dpkg_deb()
    _arm64_build_tools()
    return _build("build_deb.py", tmp_path_factory.mktemp("deb-arm64"), "--arch", "aarch64")


def pytest_terminal_summary(terminalreporter, config) -> None:
    how = config.stash.get(emulation.HOW, None)
    if how:
        terminalreporter.write_line(f"arm64 artefacts ran through: {how}")
