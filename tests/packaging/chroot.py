"""A clean Debian system in a folder, made by debootstrap, for testing the .deb.

The first run makes a minimal bookworm (the release of the CI machine) with debootstrap from the
Debian mirror this machine's apt uses, and keeps it as a tarball in ~/.cache/trioscale-tests/;
later runs unpack the tarball (a few seconds). Every run gets its own copy, so nothing a test
installs leaks into the next.

The same for another architecture (arm64, run under emulation: tests/packaging/emulation.py):
debootstrap's second stage runs the foreign maintainer scripts through binfmt_misc. Where the
kernel has no binfmt_misc for it, ``configured=False`` makes a system whose packages are unpacked
but not configured (debootstrap's first stage, then every downloaded package extracted), enough
for a foreign python3 started through ``qemu-aarch64-static -L``.
"""

from __future__ import annotations

import fcntl
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


def apt_install(tools: dict[str, str]) -> None:
    """Install from this machine's apt the package of each command (``{command: package}``) that is
    not on PATH. Waits for a dpkg lock that another run holds."""
    missing = sorted({pkg for cmd, pkg in tools.items() if shutil.which(cmd) is None})
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    subprocess.run(["apt-get", *lock, "update", "-qq"], check=True, timeout=600, capture_output=True, env=env)
    r = subprocess.run(["apt-get", *lock, "install", "-y", "-qq", *missing],
                       timeout=900, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise Unavailable(f"apt-get install {' '.join(missing)} failed: {r.stderr[-500:]}")


def ensure_tools() -> None:
    apt_install({"debootstrap": "debootstrap", "lintian": "lintian"})


def base_tarball(arch: str | None = None, include: tuple[str, ...] = (), configured: bool = True,
                 apt_lists: bool = False) -> Path:
    """The cached minimal system for the Debian architecture ``arch`` (default: this machine's)
    with the packages ``include``, made now if missing or stale. ``apt_lists``: with apt's package
    lists, fetched when it is made (under emulation ``apt-get update`` takes most of a minute)."""
    arch = arch or debian_arch()
    name = (f"debootstrap-{SUITE}-{arch}" + "".join(f"+{p}" for p in include) + ("+lists" if apt_lists else "")
            + ("" if configured else "-unpacked"))
    tar = CACHE / f"{name}.tar"
    if tar.exists() and time.time() - tar.stat().st_mtime < MAX_AGE:
        return tar
    CACHE.mkdir(parents=True, exist_ok=True)
    # Test runs side by side on one machine make it once, not over each other's work.
    with open(CACHE / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tar.exists() and time.time() - tar.stat().st_mtime < MAX_AGE:
            return tar
        _debootstrap(name, tar, arch, include, configured, apt_lists)
    return tar


def _debootstrap(name: str, tar: Path, arch: str, include: tuple[str, ...], configured: bool, apt_lists: bool) -> None:
    ensure_tools()
    work = CACHE / f"{name}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    argv = ["debootstrap", "--variant=minbase", f"--arch={arch}"]
    argv += [f"--include={','.join(include)}"] if include else []
    argv += [] if configured else ["--foreign"]
    r = subprocess.run([*argv, SUITE, str(work), mirror()], capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise Unavailable(f"debootstrap failed: {r.stdout[-1500:]} {r.stderr[-500:]}")
    archives = work / "var/cache/apt/archives"
    archives.mkdir(parents=True, exist_ok=True)
    if not configured:
        # The first stage unpacked only the required packages; the rest (python3 among them)
        # waits for a second stage that needs to run foreign programs. Unpack them all as the
        # first stage does, keeping the merged /usr's symlinks.
        for deb in sorted(archives.glob("*.deb")):
            unpack(deb, work)
        shutil.rmtree(work / "debootstrap", ignore_errors=True)
    elif apt_lists:
        shutil.copy2("/etc/resolv.conf", work / "etc/resolv.conf", follow_symlinks=True)
        r = run(work, "apt-get", "update", "-qq", timeout=1200, check=False)
        if r.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            raise Unavailable(f"apt-get update in the new system failed: {r.stdout[-1000:]} {r.stderr[-1000:]}")
    for deb in archives.glob("*.deb"):
        deb.unlink()
    subprocess.run(["tar", "-C", str(work), "-cf", f"{tar}.part", "."], check=True, timeout=600)
    os.replace(f"{tar}.part", tar)
    shutil.rmtree(work, ignore_errors=True)


def depends(deb: Path) -> list[str]:
    """The names of the packages that ``deb`` depends on."""
    field = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True, text=True, check=True).stdout
    return [re.split(r"[\s(]", d.strip())[0] for d in field.split(",") if d.strip()]


def unpack(deb: Path, root: Path) -> None:
    """The files of ``deb`` below ``root``, as dpkg would unpack them, with no maintainer script
    run; the symlinks of a merged /usr stay symlinks."""
    data = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-C", str(root), "--keep-directory-symlink", "-xf", "-"], stdin=data.stdout,
                         capture_output=True, timeout=300)
    data.stdout.close()
    if data.wait(60) != 0 or tar.returncode != 0:
        raise Unavailable(f"cannot unpack {deb.name}: {tar.stderr.decode(errors='replace')[-500:]}")


def make_root(dest: Path, arch: str | None = None, include: tuple[str, ...] = (), configured: bool = True,
              apt_lists: bool = False) -> Path:
    """A fresh copy of the minimal system (see base_tarball) at ``dest``, with this machine's DNS
    for apt."""
    tar = base_tarball(arch, include, configured, apt_lists)
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-C", str(dest), "-xf", str(tar)], check=True, timeout=600)
    shutil.copy2("/etc/resolv.conf", dest / "etc/resolv.conf", follow_symlinks=True)
    # No service starts inside the chroot, whatever a maintainer script asks.
    policy = dest / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    return dest


ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8",
       "HOME": "/root"}


def execute(command: list[str], what: list[str], timeout: float = 600, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``command`` (which runs ``what`` in a chroot); AssertionError with its output if it
    fails and ``check``."""
    r = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env or ENV)
    if check and r.returncode != 0:
        raise AssertionError(f"in chroot: {' '.join(what)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def run(root: Path, *argv: str, timeout: float = 600, check: bool = True,
        prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    return execute([*(prefix or []), "chroot", str(root), *argv], list(argv), timeout, check)
