"""Issue 7's Debian package bar: the .deb built in this run installs into a clean Debian made by
debootstrap (tests/packaging/chroot.py), works there, upgrades keeping config and data, and leaves
nothing behind when purged; lintian reports no error."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from . import chroot

# Bookkeeping that dpkg, apt and the account tools keep whatever is installed, and /run (a tmpfs
# on a booted system; adduser and systemctl leave lock and marker files there in a chroot).
VOLATILE = re.compile(
    r"^(var/lib/dpkg|var/log|var/cache/(apt|debconf|ldconfig)|var/lib/apt|tmp|run|etc/(passwd|group|shadow|gshadow)-$)")


@pytest.fixture
def debian(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chroot and dpkg inside it need root")
    try:
        root = chroot.make_root(tmp_path / "debian")
    except chroot.Unavailable as e:
        pytest.fail(f"cannot make the Debian system: {e}")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def files(root: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames + filenames:
            path = os.path.normpath(os.path.join(rel, name))
            if not VOLATILE.match(path):
                out.add(path)
    return out


def newer(deb: Path, work: Path, version: str) -> Path:
    """The same package under a higher version, as a later release would be."""
    tree = work / "repack"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, timeout=300)
    control = tree / "DEBIAN/control"
    control.write_text(re.sub(r"^Version: .*$", f"Version: {version}", control.read_text(), flags=re.M))
    out = work / f"trioscale_{version}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(tree), str(out)], check=True, timeout=300,
                   stdout=subprocess.DEVNULL)
    shutil.rmtree(tree)
    return out


@pytest.mark.parametrize("package", ["deb", "deb_arm64"])
def test_lintian_reports_no_error(package, request):
    # For arm64 too: lintian checks that every ELF file is one for the package's architecture.
    deb = request.getfixturevalue(package)
    chroot.ensure_tools()
    r = subprocess.run(["lintian", "--fail-on", "error", str(deb)], capture_output=True, text=True, timeout=600)
    errors = [line for line in r.stdout.splitlines() if line.startswith("E:")]
    assert not errors and r.returncode == 0, r.stdout + r.stderr


def test_deb_installs_upgrades_and_purges_in_a_clean_debian(deb, debian, tmp_path, netns):
    run = lambda *argv, **kw: chroot.run(debian, *argv, **kw)  # noqa: E731
    run("apt-get", "update", "-qq", timeout=600)
    # The package's dependencies from apt, and systemd for systemd-analyze (a VPS has it).
    run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *chroot.depends(deb), "systemd", timeout=900)
    before = files(debian)
    shutil.copy2(deb, debian / "tmp" / deb.name)

    run("dpkg", "-i", f"/tmp/{deb.name}")
    assert run("trioscale", "version").stdout.strip() == "0.1.0"
    r = run("trioscale", "configtest")
    assert "configuration OK (/etc/trioscale/config.yaml)" in r.stderr
    assert "data_dir: /var/lib/trioscale" in r.stdout
    r = run("systemd-analyze", "verify", "/lib/systemd/system/trioscale.service", check=False)
    assert r.returncode == 0 and "trioscale" not in r.stderr, r.stderr
    user = run("getent", "passwd", "trioscale").stdout.split(":")
    assert user[5] == "/var/lib/trioscale"
    assert (debian / "var/lib/trioscale").stat().st_uid == int(user[2])
    # The private environment wins over whatever python3-* the release has.
    r = run("python3", "-c", "import sys; sys.argv=['trioscale']; exec(open('/usr/bin/trioscale').read().split('from appliance')[0]); import yaml, appliance; print(yaml.__file__, appliance.__file__)")
    assert r.stdout.split() == ["/usr/lib/trioscale/site/yaml/__init__.py", "/usr/lib/trioscale/site/appliance/__init__.py"]

    # `trioscale install` from the package: no systemd in the chroot, so refused; with --root /
    # (and systemd's marker) it configures the package's conffile and starts nothing. Inside the
    # test namespace, so that its port check sees free ports.
    conf = debian / "etc/trioscale/config.yaml"
    packaged = conf.read_text()
    r = run("trioscale", "install", "--domain", "vpn.example.com", check=False)
    assert r.returncode == 2 and "systemd is not running" in r.stderr, r.stderr
    assert conf.read_text() == packaged
    (debian / "run/systemd/system").mkdir(parents=True)
    r = run("trioscale", "install", "--domain", "vpn.example.com", "--email", "admin@example.com", "--root", "/",
            prefix=["ip", "netns", "exec", netns.name])
    (debian / "run/systemd/system").rmdir()
    assert "tailscale up --login-server https://vpn.example.com" in r.stdout
    assert not (debian / "usr/local/lib/trioscale").exists() and not (debian / "etc/systemd/system/trioscale.service").exists()
    r = run("trioscale", "configtest")
    assert "server_url: https://vpn.example.com" in r.stdout and "data_dir: /var/lib/trioscale" in r.stdout

    # An upgrade keeps the admin's config edits and the data.
    edited = conf.read_text().replace("  level: info", "  level: debug")
    assert edited != conf.read_text()
    conf.write_text(edited)
    (debian / "var/lib/trioscale/db.sqlite").write_bytes(b"pretend database")
    upgrade = newer(deb, tmp_path, "0.1.0+1")
    shutil.copy2(upgrade, debian / "tmp" / upgrade.name)
    run("dpkg", "-i", f"/tmp/{upgrade.name}")
    assert run("dpkg-query", "-W", "-f", "${Version}", "trioscale").stdout == "0.1.0+1"
    assert conf.read_text() == edited
    assert (debian / "var/lib/trioscale/db.sqlite").read_bytes() == b"pretend database"
    assert run("trioscale", "version").stdout.strip() == "0.1.0"

    # Remove: the program goes, the config and the data stay.
    run("dpkg", "-r", "trioscale")
    assert not (debian / "usr/bin/trioscale").exists() and not (debian / "usr/lib/trioscale").exists()
    assert conf.exists() and (debian / "var/lib/trioscale/db.sqlite").exists()

    # Purge: nothing of it is left, the user neither.
    run("dpkg", "-P", "trioscale")
    after = files(debian)
    assert after - before == set() and before - after == set(), (after - before, before - after)
    assert run("getent", "passwd", "trioscale", check=False).returncode == 2
    assert run("getent", "group", "trioscale", check=False).returncode == 2
    for name in ("passwd", "group", "shadow", "gshadow"):
        assert "trioscale" not in (debian / "etc" / name).read_text()
