"""Run the zipapp the way a fresh machine would: a stock python3 with none of our dependencies."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path


def _version_ok(python: str) -> bool:
    r = subprocess.run([python, "-c", "import sys; print(sys.version_info >= (3, 11))"],
                       capture_output=True, text=True, timeout=30)
    return r.stdout.strip() == "True"


@lru_cache(maxsize=1)
def bare_python(workdir: str) -> str:
    """The distribution's /usr/bin/python3 if it is 3.11 or newer, else a venv made without pip
    from this interpreter (a venv sees no site-packages but its own, which is empty)."""
    if os.path.exists("/usr/bin/python3") and _version_ok("/usr/bin/python3"):
        return "/usr/bin/python3"
    venv = Path(workdir) / "bare-venv"
    if not (venv / "bin" / "python3").exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    return str(venv / "bin" / "python3")


def bare_env(home: Path) -> dict[str, str]:
    """No PYTHONPATH, a home of its own, and the zipapp's unpack directory in it."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home), "SHIV_ROOT": str(home / "shiv"),
            "LC_ALL": "C.UTF-8"}


def run_pyz(python: str, pyz: Path, home: Path, *args: str, timeout: float = 120,
            prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    # -I: no PYTHON* variables, no user site, no script directory on sys.path; -S: no site-packages.
    return subprocess.run([*(prefix or []), python, "-I", "-S", str(pyz), *args], capture_output=True, text=True,
                          timeout=timeout, env=bare_env(home), cwd=home)


def assert_bare(*python: str) -> None:
    """The interpreter (its command: a path, or an emulator's argv) really lacks our dependencies,
    so the zipapp must carry them."""
    r = subprocess.run([*python, "-I", "-S", "-c", "import trio"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "No module named 'trio'" in r.stderr, r
