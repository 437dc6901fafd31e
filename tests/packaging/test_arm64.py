"""Issue 17: the arm64 zipapp and .deb, run for real on an arm64 Debian under emulation
(tests/packaging/emulation.py), each serving two official x86_64 tailscaled that join, see each
other and ping; dpkg installs the .deb there with its dependencies from apt; every native module
in both files is an aarch64 one.

One arm64 system serves the whole module: the zipapp runs first on its bare python3 (with -I -S
it never sees what the .deb adds later, and the test checks that it is bare), then the .deb is
installed into it. The emulated server is slow to start, so it gets minutes where the native one
gets seconds; this proves correctness, not speed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from ..realclient.harness import Node, Netns, Server, wait_until
from . import chroot, emulation
from .bare import assert_bare, bare_env

ELF_AARCH64 = 183  # e_machine in the ELF header
# Python versions whose native modules the artefacts must carry: Debian 12's, Ubuntu 24.04's,
# Debian 13's (packaging/staging.py adds the newest too).
RELEASE_PYTHONS = ("311", "312", "313")
START_TIMEOUT = 300  # the first start under emulation also compiles the bytecode


@pytest.fixture(scope="module")
def arm64(tmp_path_factory, request):
    if os.geteuid() != 0:
        pytest.skip("chroot, binfmt_misc and dpkg need root")
    try:
        arm = emulation.make(tmp_path_factory.mktemp("arm64") / "root")
    except (emulation.Impossible, chroot.Unavailable) as e:
        pytest.fail(f"cannot run arm64 programs on this machine: {e}")
    request.config.stash[emulation.HOW] = arm.describe()
    print(f"arm64 programs run through: {arm.describe()}")
    yield arm
    shutil.rmtree(arm.root, ignore_errors=True)


@pytest.fixture(scope="module")
def arm64_deb(arm64, deb_arm64):
    """The .deb on the arm64 system: dpkg -i after apt installed its dependencies. Through
    ``qemu-aarch64-static -L`` dpkg cannot start its maintainer scripts, so the files are only
    unpacked there, and ``dpkg_refused`` says why the dpkg test fails."""
    shutil.copy2(deb_arm64, arm64.root / "tmp" / deb_arm64.name)
    if not arm64.runs_foreign_children:
        chroot.unpack(deb_arm64, arm64.root)
        return {"dpkg_refused": "dpkg -i of the arm64 .deb needs binfmt_misc (dpkg starts the aarch64 maintainer "
                                f"scripts itself), which is unusable here: {arm64.why_not_binfmt}"}
    install = ("apt-get", "install", "-y", "-qq", "--no-install-recommends", *chroot.depends(deb_arm64))
    if arm64.run(*install, timeout=900, check=False).returncode != 0:
        # The cached system's package lists (chroot.py) may name versions the mirror has dropped.
        arm64.run("apt-get", "update", "-qq", timeout=900)
        arm64.run(*install, timeout=900)
    arm64.run("dpkg", "-i", f"/tmp/{deb_arm64.name}", timeout=900)
    return {"dpkg_refused": None}


class EmulatedServer(Server):
    """The harness's server, started from an arm64 artefact under emulation: ``command`` is how it
    starts inside the arm64 system (the zipapp on the bare python3, or /usr/bin/trioscale). Its
    files live in the arm64 system; the admin CLI is the artefact's too."""

    def __init__(self, ns: Netns, arm: emulation.Arm64, name: str, command: tuple[str, ...]) -> None:
        workdir = arm.root / "srv" / name
        data = workdir / "data"
        super().__init__(ns, workdir, overrides={
            "data_dir": arm.path(data),
            "unix_socket": arm.path(data / "trioscale.sock"),
            # As in tests/realclient/test_core.py: the relay on the plain-HTTP port, which a
            # client needs in its netmap before it counts itself running.
            "derp": {"server": {"enabled": True, "stun_listen_addr": "127.0.0.1:3478"}},
        })
        self.arm, self.command = arm, command
        self.home = workdir / "home"
        self.home.mkdir(exist_ok=True)
        self.bare_env = bare_env(Path(arm.path(self.home)))

    def start(self) -> None:
        log = open(self.log_path, "ab")
        argv = self.arm.argv(*self.command, "serve", "-c", self.arm.path(self.config_path))
        self.proc = subprocess.Popen(self.ns.wrap(argv), cwd=self.home, stdout=log, stderr=subprocess.STDOUT,
                                     env=self.bare_env)
        # Wait for the admin socket from here: polling with the emulated CLI would take the CPU
        # that the emulated server needs to start. The first CLI call is the test's own.
        deadline = time.monotonic() + START_TIMEOUT
        while not _accepts(self.dir / "data" / "trioscale.sock"):
            if self.proc.poll() is not None:
                raise AssertionError(f"the arm64 trioscale exited ({self.proc.returncode}): {self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the arm64 trioscale ({self.arm.how}) did not open its socket in {START_TIMEOUT}s")
            time.sleep(0.5)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.arm.run(*self.command, "-c", self.arm.path(self.config_path), *args, timeout=180,
                            check=check, env=self.bare_env)


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def two_clients_join_and_ping(server: EmulatedServer, netns: Netns, binaries, work: Path, prefix: str) -> None:
    """Two official x86_64 tailscaled join ``server``, see each other and ping each other."""
    nodes = [Node(netns, work, f"{prefix}-{n}", binaries, env={"TS_DEBUG_USE_DERP_HTTP": "1"}) for n in "ab"]
    try:
        server.start()
        server.cli("users", "create", "pi")
        key = server.cli("preauthkeys", "create", "--user", "pi", "--reusable").stdout.strip()
        for node in nodes:
            node.start()
            node.up(server, key)
        listed = {n["givenName"]: n for n in server.cli_json("nodes", "list")}
        assert set(listed) == {n.name for n in nodes}
        for node, other in (nodes, nodes[::-1]):
            assert node.status()["BackendState"] == "Running"
            assert sorted(node.ips()) == sorted(listed[node.name]["ipAddresses"])
            peer = wait_until(lambda: node.peers().get(other.name), 60, what=f"{node.name} to see {other.name}")
            assert sorted(peer["TailscaleIPs"]) == sorted(listed[other.name]["ipAddresses"])
        for node, other in (nodes, nodes[::-1]):
            out = node.ping(listed[other.name]["ipAddresses"][0])
            assert f"pong from {other.name}" in out, out
    except BaseException:
        print(server.log_text()[-5000:])
        raise
    finally:
        for node in nodes:
            node.stop()
        server.stop()


def _check_natives(files: dict[str, bytes], site: str) -> None:
    """``files``: each file's name and first bytes. Every native module and every other ELF file is
    an aarch64 one, and the modules for each release's Python are there."""
    natives = [n for n in files if n.endswith(".so") or ".so." in n]
    assert len(natives) >= 10, natives
    for name, head in files.items():
        if name in natives or head[:4] == b"\x7fELF":
            assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == ELF_AARCH64, name
    assert not [n for n in files if "x86_64" in n or "amd64" in n]
    for py in RELEASE_PYTHONS:
        for module in ("_cffi_backend", "zstandard/backend_c"):
            assert f"{site}{module}.cpython-{py}-aarch64-linux-gnu.so" in files, (module, py)
    for module in ("cryptography/hazmat/bindings/_rust.abi3.so", "nacl/_sodium.abi3.so"):
        assert site + module in files


def test_every_native_module_in_the_arm64_artefacts_is_aarch64(pyz_arm64, deb_arm64, tmp_path):
    assert pyz_arm64.name == "trioscale-0.1.0-linux_aarch64.pyz"
    with zipfile.ZipFile(pyz_arm64) as z:
        _check_natives({n: z.open(n).read(20) for n in z.namelist() if not n.endswith("/")}, "site-packages/")

    assert deb_arm64.name == "trioscale_0.1.0_arm64.deb"
    field = subprocess.run(["dpkg-deb", "-f", str(deb_arm64), "Architecture"], capture_output=True, text=True, check=True)
    assert field.stdout.strip() == "arm64"
    tree = tmp_path / "deb"
    subprocess.run(["dpkg-deb", "-x", str(deb_arm64), str(tree)], check=True, timeout=300)
    files = {}
    for p in tree.rglob("*"):
        if p.is_file() and not p.is_symlink():
            with p.open("rb") as f:
                files[str(p.relative_to(tree))] = f.read(20)
    _check_natives(files, "usr/lib/trioscale/site/")


def test_arm64_zipapp_runs_on_the_systems_python_and_serves_two_real_clients(arm64, pyz_arm64, netns,
                                                                            client_binaries, tmp_path):
    python = "/usr/bin/python3"
    assert_bare(*arm64.argv(python))
    pyz = arm64.root / "srv" / pyz_arm64.name
    pyz.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(pyz_arm64, pyz)
    command = (python, "-I", "-S", arm64.path(pyz))
    server = EmulatedServer(netns, arm64, "pyz", command)

    r = arm64.run(*command, "version", env=server.bare_env, timeout=300)
    assert r.stdout.strip() == "0.1.0", r
    r = arm64.run(*command, "configtest", "-c", arm64.path(server.config_path), env=server.bare_env)
    assert "configuration OK" in r.stderr and "listen_addr: 127.0.0.1:9911" in r.stdout, r
    two_clients_join_and_ping(server, netns, client_binaries, tmp_path, "pi-pyz")


def test_dpkg_installs_the_arm64_deb_with_its_dependencies_from_apt(arm64, arm64_deb):
    if arm64_deb["dpkg_refused"]:
        pytest.fail(arm64_deb["dpkg_refused"])
    r = arm64.run("dpkg-query", "-W", "-f", "${Status} ${Architecture} ${Version}", "trioscale")
    assert r.stdout == "install ok installed arm64 0.1.0"
    assert arm64.run("getent", "passwd", "trioscale").stdout.split(":")[5] == "/var/lib/trioscale"
    # postinst compiled the private modules with the arm64 python3.
    assert list((arm64.root / "usr/lib/trioscale/site/appliance/__pycache__").glob("cli.cpython-3*.pyc"))
    r = arm64.run("/usr/bin/trioscale", "version")
    assert r.stdout.strip() == "0.1.0"
    r = arm64.run("/usr/bin/trioscale", "configtest")
    assert "configuration OK (/etc/trioscale/config.yaml)" in r.stderr and "data_dir: /var/lib/trioscale" in r.stdout


def test_installed_arm64_deb_serves_two_real_clients(arm64, arm64_deb, netns, client_binaries, tmp_path):
    if arm64_deb["dpkg_refused"]:
        print(f"the .deb's files unpacked without dpkg: {arm64_deb['dpkg_refused']}")
    command = ("/usr/bin/trioscale",)
    server = EmulatedServer(netns, arm64, "deb", command)
    r = arm64.run(*command, "version", env=server.bare_env)
    assert r.stdout.strip() == "0.1.0", r
    r = arm64.run(*command, "configtest", "-c", arm64.path(server.config_path), env=server.bare_env)
    assert "configuration OK" in r.stderr and "listen_addr: 127.0.0.1:9911" in r.stdout, r
    two_clients_join_and_ping(server, netns, client_binaries, tmp_path, "pi-deb")
