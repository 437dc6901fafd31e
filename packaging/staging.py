"""Shared by build_pyz.py and build_deb.py: stage trioscale and its dependencies in one directory.

The result is a plain directory that goes first on ``sys.path`` (a site directory without
``site``): our three packages, copied from the source tree, and every dependency installed from
PyPI's manylinux wheels for one machine architecture. Native extension modules carry the Python
version in their file name (``_yaml.cpython-312-x86_64-linux-gnu.so``), so the wheels for several
Python versions install side by side in the one directory, and the same zipapp or .deb runs on
each of those versions. The versions are pinned by the first resolution, so the pure-Python parts
are the same for all of them.

Not an importable package on purpose: ``packaging`` would shadow PyPI's ``packaging`` (pip and
setuptools import it). Run the scripts by path.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
OUR_PACKAGES = ("appliance", "derp", "autocert")

# Python versions whose native modules go in, for each architecture: 3.11 is the floor
# (pyproject's requires-python; Debian 12 bookworm), 3.12 is Ubuntu 24.04's, 3.13 Debian 13
# trixie's, 3.14 the newest.
PYTHONS = ("3.11", "3.12", "3.13", "3.14")

# The glibc floor: manylinux_2_28 wheels run on glibc 2.28 or newer (Debian 10, Ubuntu 20.04,
# RHEL 8 and later). Older tags are listed too: pip does not always widen a given tag to them
# (zstandard ships manylinux_2_17 wheels only).
MANYLINUX = ("manylinux_2_28", "manylinux_2_24", "manylinux_2_17", "manylinux2014")

ARCHES = {"x86_64": "amd64", "aarch64": "arm64"}  # machine name → Debian architecture

# Change when stage_dependencies changes what it makes, so that cached stagings are made anew.
STAGING_REVISION = "2"

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trioscale-build"


def version() -> str:
    text = (REPO / "appliance" / "__init__.py").read_text()
    m = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if not m:
        raise SystemExit("no __version__ in appliance/__init__.py")
    return m.group(1)


def dependencies() -> list[str]:
    with open(REPO / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def host_arch() -> str:
    m = os.uname().machine
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def log(msg: str) -> None:
    print(f"[packaging] {msg}", file=sys.stderr, flush=True)


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    subprocess.run(cmd, check=True, timeout=900)


def _pins(site: Path) -> list[str]:
    """name==version for every distribution installed in ``site``."""
    pins = []
    for d in sorted(site.glob("*.dist-info")):
        m = re.match(r"(.+?)-([^-]+)\.dist-info$", d.name)
        if m:
            pins.append(f"{m.group(1)}=={m.group(2)}")
    return pins


def staging_key(arch: str, pythons: tuple[str, ...]) -> str:
    """Everything that decides a staging: the dependency list, the Python versions, the platform
    tags, and whether a strip for the architecture is at hand."""
    return "\n".join([STAGING_REVISION, *MANYLINUX, arch, *pythons, f"strip={strip_tool(arch)}",
                      *dependencies()]) + "\n"


def stage_dependencies(arch: str, work: Path, pythons: tuple[str, ...] = PYTHONS) -> Path:
    """Install the dependencies' wheels for ``arch`` and each of ``pythons`` into one directory.

    Returns that directory (``work/deps``), reused while staging_key stays the same. Needs PyPI
    (pip's cache makes reruns quick).
    """
    if arch not in ARCHES:
        raise SystemExit(f"unknown architecture {arch!r}; one of {', '.join(ARCHES)}")
    deps = work / "deps"
    key = staging_key(arch, pythons)
    strip = strip_tool(arch)
    stamp = work / "key.txt"
    if deps.is_dir() and stamp.is_file() and stamp.read_text() == key:
        log(f"dependencies for {arch}: reusing {deps}")
        return deps
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    constraints = work / "constraints.txt"
    for i, py in enumerate(pythons):
        target = work / f"py{py}"
        log(f"dependencies for CPython {py} on manylinux {arch}")
        args = [
            "install", "--quiet", "--target", str(target), "--only-binary=:all:", "--no-compile",
            "--implementation", "cp", "--python-version", py,
        ]
        for tag in MANYLINUX:
            args += ["--platform", f"{tag}_{arch}"]
        if i:
            args += ["--constraint", str(constraints)]
        _pip(*args, *dependencies())
        if i == 0:
            constraints.write_text("\n".join(_pins(target)) + "\n")
        shutil.rmtree(target / "bin", ignore_errors=True)  # console scripts of the dependencies
        shutil.copytree(target, deps, dirs_exist_ok=True)
        shutil.rmtree(target)
    # PyYAML's C speedup links a copy of libyaml into the module, which Debian forbids
    # (lintian: embedded-library); our loader is the pure-Python SafeLoader anyway.
    for so in (deps / "yaml").glob("_yaml*.so"):
        so.unlink()
    strip_native(deps, strip)
    stamp.write_text(key)
    return deps


def strip_tool(arch: str) -> str | None:
    """The strip that knows ``arch``'s object files: the host's own, or binutils for that machine
    (Debian: binutils-aarch64-linux-gnu, binutils-x86-64-linux-gnu). None when there is none."""
    for tool in (["strip"] if arch == host_arch() else []) + [f"{arch}-linux-gnu-strip"]:
        if shutil.which(tool):
            return tool
    return None


def strip_native(tree: Path, tool: str | None) -> None:
    """Drop debug symbols from the wheels' native modules: zstandard's alone shrink from 12 MB to
    1 MB each, and there is one per Python version. Without a strip for the architecture the
    files stay as they are (bigger, and lintian warns)."""
    if tool is None:
        log("no strip for this architecture: native modules stay unstripped")
        return
    files = [str(p) for p in tree.rglob("*.so*") if p.is_file() and not p.is_symlink()]
    for i in range(0, len(files), 50):
        subprocess.run([tool, "--strip-unneeded", *files[i:i + 50]], capture_output=True, timeout=300)


def copy_our_packages(dest: Path) -> None:
    """Our packages from the source tree, plus the files the installer needs at run time."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")
    for name in OUR_PACKAGES:
        shutil.rmtree(dest / name, ignore_errors=True)
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    # appliance/install.py reads the unit template from its own package when it is not run from a
    # source checkout (there it reads packaging/systemd/ directly).
    shutil.copy2(HERE / "systemd" / "trioscale.service", dest / "appliance" / "trioscale.service")


def stage_site(arch: str, out: Path, pythons: tuple[str, ...] = PYTHONS) -> Path:
    """A complete site directory at ``out``: dependencies for ``arch`` and our packages."""
    # One directory per key, so that trees with other dependencies (another branch, an older
    # checkout) keep their own staging instead of remaking each other's; builds of one key on one
    # machine (test runs side by side) take turns.
    digest = hashlib.sha256(staging_key(arch, pythons).encode()).hexdigest()[:12]
    work = CACHE / f"stage-{arch}-{digest}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(f"{work}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        deps = stage_dependencies(arch, work, pythons)
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(deps, out)
    copy_our_packages(out)
    return out
