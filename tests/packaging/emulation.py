"""Run the arm64 artefacts on an x86_64 machine: Debian's qemu-user-static and an arm64 Debian
made by debootstrap (chroot.py, cached like the amd64 one).

Two ways to start an aarch64 program; the first that this machine allows is used:

- binfmt_misc: the kernel hands every aarch64 ELF to qemu, in a chroot too, since Debian
  registers qemu with the F flag (the kernel opens the interpreter once, outside). Everything
  runs as on an ARM machine: ``chroot ROOT /usr/bin/trioscale``, dpkg and the maintainer scripts
  it starts. If the handler is not registered yet, it is registered from qemu-user-static's own
  rule, mounting binfmt_misc first where needed (what systemd-binfmt does at boot).
- ``qemu-aarch64-static -L ROOT``: where binfmt_misc cannot be used (a container may neither
  mount nor register it). qemu runs one program, the chroot's python3, and looks up absolute
  paths below ROOT first. A program that one starts in turn cannot run, so ``dpkg -i`` (whose
  maintainer scripts are aarch64 programs) needs binfmt_misc; the chroot is then made without
  debootstrap's second stage (chroot.py, ``configured=False``).

On an aarch64 machine nothing is emulated. TRIOSCALE_ARM64_EMULATION=qemu-L forces the second
way, to try it on a machine that has the first.
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import chroot

DEBIAN_ARCH = "arm64"
# What both artefacts need from the release to start; the .deb's other dependencies come from
# apt in its own test.
INCLUDE = ("python3",)

BINFMT = Path("/proc/sys/fs/binfmt_misc")
HANDLER = BINFMT / "qemu-aarch64"
DEBIAN_RULE = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")  # shipped by qemu-user-static
QEMU = "qemu-aarch64-static"

NATIVE = "native (an aarch64 machine)"
BINFMT_MISC = "binfmt_misc"
QEMU_L = "qemu-aarch64-static -L"

HOW = pytest.StashKey[str]()  # which way ran, for the end of the test report


class Impossible(Exception):
    """This machine cannot run aarch64 programs; the message says why."""


def register_binfmt() -> str | None:
    """Make the kernel start aarch64 programs through qemu. None when it does, else why not."""
    if not HANDLER.exists():
        if not (BINFMT / "register").exists():
            r = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
                               capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                return f"binfmt_misc is not mounted and cannot be mounted here: {r.stderr.strip()}"
        try:
            (BINFMT / "register").write_text(DEBIAN_RULE.read_text().strip())
        except OSError as e:
            if not HANDLER.exists():  # else another run registered it first
                return f"cannot register {DEBIAN_RULE} with binfmt_misc: {e}"
    lines = HANDLER.read_text().splitlines()
    if lines[0] != "enabled":
        return f"the kernel's qemu-aarch64 handler is disabled ({HANDLER})"
    flags = next((line.split(":", 1)[1] for line in lines if line.startswith("flags:")), "")
    if "F" not in flags:
        return f"the kernel's qemu-aarch64 handler lacks the F flag, so it cannot start programs in a chroot ({HANDLER})"
    return None


def choose() -> tuple[str, str]:
    """(how aarch64 programs will run here, why not through binfmt_misc when they will not)."""
    if platform.machine() == "aarch64":
        return NATIVE, ""
    chroot.apt_install({QEMU: "qemu-user-static"})
    if os.environ.get("TRIOSCALE_ARM64_EMULATION") == "qemu-L":
        return QEMU_L, "TRIOSCALE_ARM64_EMULATION=qemu-L"
    why = register_binfmt()
    return (QEMU_L, why) if why else (BINFMT_MISC, "")


@dataclass(frozen=True)
class Arm64:
    """An arm64 Debian at ``root`` and the way its programs start here (``how``)."""

    root: Path
    how: str
    why_not_binfmt: str

    @property
    def runs_foreign_children(self) -> bool:
        """Whether a program started here can itself start others (dpkg its maintainer scripts)."""
        return self.how != QEMU_L

    def describe(self) -> str:
        return self.how + (f" (binfmt_misc unusable: {self.why_not_binfmt})" if self.why_not_binfmt else "")

    def path(self, p: Path) -> str:
        """How the programs started here name the file ``p`` below ``root``."""
        if self.how == QEMU_L:
            # Host paths: qemu tries ROOT + path first, and a file made later would then be
            # looked for on the host (qemu remembers the first answer), so never the short form.
            return str(p)
        return "/" + str(p.relative_to(self.root))

    def argv(self, program: str, *args: str) -> list[str]:
        """The command that runs ``program`` (a path inside the chroot) with ``args``."""
        if self.how != QEMU_L:
            return ["chroot", str(self.root), program, *args]
        target = self._inside(program)
        head = target.read_bytes()[:256]
        if head.startswith(b"#!"):
            # As the kernel reads a script's first line: the interpreter, then one argument.
            interpreter, _, arg = head[2:].split(b"\n", 1)[0].decode().strip().partition(" ")
            return self.argv(interpreter, *([arg.strip()] if arg.strip() else []), program, *args)
        return [QEMU, "-L", str(self.root), str(target), *args]

    def run(self, program: str, *args: str, timeout: float = 600, check: bool = True,
            env: dict[str, str] | None = None, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
        return chroot.execute([*(prefix or []), *self.argv(program, *args)], [program, *args], timeout, check, env)

    def _inside(self, program: str) -> Path:
        """The host path of ``program``, following its symlinks inside the chroot."""
        p = self.root / program.lstrip("/")
        for _ in range(16):
            if not p.is_symlink():
                return p
            link = os.readlink(p)
            p = self.root / link.lstrip("/") if link.startswith("/") else p.parent / link
        raise Impossible(f"{program}: too many symlinks in the chroot")


def make(dest: Path) -> Arm64:
    """An arm64 Debian at ``dest`` with python3, and the way to run it. Raises Impossible or
    chroot.Unavailable."""
    how, why = choose()
    configured = how != QEMU_L
    root = chroot.make_root(dest, DEBIAN_ARCH, INCLUDE, configured=configured, apt_lists=configured)
    arm = Arm64(root, how, why)
    r = arm.run("/usr/bin/python3", "-I", "-S", "-c", "import platform; print(platform.machine())",
                check=False, timeout=120)
    if r.returncode != 0 or r.stdout.strip() != "aarch64":
        raise Impossible(f"the arm64 python3 does not run through {arm.describe()}: {r.stdout.strip()} {r.stderr[-500:]}")
    return arm
