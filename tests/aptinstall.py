"""Debian packages the tests run (pebble, bind9): found on the machine, or installed with apt-get
as root, so that a fresh CI machine gets them; where neither works the test skips (and in CI a
skip counts as a failure, see conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def find_or_install(binary: str, package: str, *, sbin: bool = False) -> str:
    """The path of ``binary``, installing Debian's ``package`` if it is missing."""
    def find() -> str | None:
        for d in ("/usr/sbin", "/usr/bin") if sbin else ("/usr/bin",):
            if os.path.exists(f"{d}/{binary}"):
                return f"{d}/{binary}"
        return shutil.which(binary)

    path = find()
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{binary} is not installed and cannot be installed here: run as root on Debian/Ubuntu, "
                    f"or `apt-get install {package}`")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", package]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        # The package lists may be missing on a fresh machine.
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    path = find()
    if result.returncode != 0 or not path:
        pytest.skip(f"{package} could not be installed with apt-get: {result.stderr.strip()[-300:]}")
    return path
