"""A clean Debian system in a folder, made by debootstrap, for testing the .deb.

The first run makes a minimal bookworm (the release of the CI machine) with debootstrap from the
Debian mirror this machine's apt uses, and keeps it as a tarball in ~/.cache/trioscale-tests/;
later runs unpack the tarball (a few seconds). Every run gets its own copy, so nothing a test
installs leaks into the next.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

SUITE = "bookworm"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trioscale-tests"
MAX_AGE = 14 * 86400  # older bases are made anew, so that their apt lists don't drift too far


class Unavailable(Exception):
    pass


def debian_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()


def mirror() -> str:
    """The Debian mirror this machine's own apt uses (deb822 or one-line sources)."""
    if os.environ.get("TRIOSCALE_DEBIAN_MIRROR"):
        return os.environ["TRIOSCALE_DEBIAN_MIRROR"]
    texts = []
    for p in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if p.is_file():
            texts.append(p.read_text(errors="replace"))
    for text in texts:
        for m in re.finditer(r"^URIs:\s*(\S+)", text, re.M):
            if not m.group(1).rstrip("/").endswith("-security"):
                return m.group(1)
        for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
            if "security" not in m.group(2):
                return m.group(1)
    raise Unavailable("no Debian mirror in this machine's apt sources")


def ensure_tools() -> None:
    missing = [t for t in ("debootstrap", "lintian") if shutil.which(t) is None]
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=300, capture_output=True)
        r = subprocess.run(["apt-get", "install", "-y", "-qq", *missing], timeout=600, capture_output=True, text=True,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if r.returncode != 0:
            raise Unavailable(f"apt-get install {' '.join(missing)} failed: {r.stderr[-500:]}")


def base_tarball() -> Path:
    """The cached minimal system, made now if missing or stale."""
    arch = debian_arch()
    tar = CACHE / f"debootstrap-{SUITE}-{arch}.tar"
    if tar.exists() and time.time() - tar.stat().st_mtime < MAX_AGE:
        return tar
    ensure_tools()
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / f"debootstrap-{SUITE}-{arch}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    r = subprocess.run(
        ["debootstrap", "--variant=minbase", f"--arch={arch}", SUITE, str(work), mirror()],
        capture_output=True, text=True, timeout=1200,
    )
    if r.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise Unavailable(f"debootstrap failed: {r.stdout[-1500:]} {r.stderr[-500:]}")
    (work / "var/cache/apt/archives").mkdir(parents=True, exist_ok=True)
    for deb in (work / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    subprocess.run(["tar", "-C", str(work), "-cf", f"{tar}.part", "."], check=True, timeout=600)
    os.replace(f"{tar}.part", tar)
    shutil.rmtree(work, ignore_errors=True)
    return tar


def make_root(dest: Path) -> Path:
    """A fresh copy of the minimal system at ``dest``, with this machine's DNS for apt."""
    tar = base_tarball()
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-C", str(dest), "-xf", str(tar)], check=True, timeout=600)
    shutil.copy2("/etc/resolv.conf", dest / "etc/resolv.conf", follow_symlinks=True)
    # No service starts inside the chroot, whatever a maintainer script asks.
    policy = dest / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    return dest


def run(root: Path, *argv: str, timeout: float = 600, check: bool = True,
        prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8",
           "HOME": "/root"}
    r = subprocess.run([*(prefix or []), "chroot", str(root), *argv], capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"in chroot: {' '.join(argv)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r
