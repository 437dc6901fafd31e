"""Issue 7's one-command install, run from the zipapp built in this run against a temporary root
(--root: files below it, the user in its /etc/passwd, no service started), and its refusals.

The commands run inside the network namespace of tests/realclient, where ports 80, 443 and 3478
are free unless a test takes them.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ..realclient.harness import REPO
from .bare import bare_python, run_pyz

sys.path.insert(0, str(REPO))
from appliance.config import load_config  # noqa: E402

DOMAIN = "vpn.example.com"


def make_root(base: Path, systemd: bool = True) -> Path:
    """A filesystem root with the host's account files, as useradd --prefix expects them."""
    root = base / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        if Path("/etc", name).exists():
            shutil.copy2(Path("/etc", name), root / "etc" / name)
    if systemd:
        (root / "run/systemd/system").mkdir(parents=True)
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path below ``root`` with its mode, owner and content hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else ""
        out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, digest)
    return out


class Runner:
    def __init__(self, pyz: Path, netns, tmp: Path) -> None:
        self.pyz, self.netns, self.python = pyz, netns, bare_python(str(tmp))
        self.home = tmp / "home"
        self.home.mkdir(exist_ok=True)

    def __call__(self, *args: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
        return run_pyz(self.python, self.pyz, self.home, *args,
                       prefix=prefix if prefix is not None else ["ip", "netns", "exec", self.netns.name])


@pytest.fixture
def trioscale(pyz, netns, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("install needs root")
    return Runner(pyz, netns, tmp_path)


def user_entry(root: Path) -> list[str] | None:
    for line in (root / "etc/passwd").read_text().splitlines():
        if line.startswith("trioscale:"):
            return line.split(":")
    return None


def test_install_upgrade_reconfigure_uninstall_purge(trioscale, tmp_path, pyz):
    root = make_root(tmp_path)
    pristine = snapshot(root)

    r = trioscale("install", "--domain", DOMAIN, "--email", "admin@example.com", "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert f"tailscale up --login-server https://{DOMAIN}" in r.stdout
    assert "trioscale users create" in r.stdout and "trioscale preauthkeys create" in r.stdout

    config_path = root / "etc/trioscale/config.yaml"
    cfg = load_config(config_path)
    assert cfg.server_url == f"https://{DOMAIN}"
    assert cfg.listen_addr == ":443"
    assert str(cfg.data_dir) == "/var/lib/trioscale"
    assert cfg.tls.letsencrypt_hostname == DOMAIN and cfg.tls.acme_email == "admin@example.com"
    assert "# Headscale" in config_path.read_text() or "Headscale" in config_path.read_text()  # the documentation stays

    user = user_entry(root)
    assert user is not None and user[5] == "/var/lib/trioscale" and user[6] == "/usr/sbin/nologin"
    assert int(user[2]) < 1000  # a system user
    state = (root / "var/lib/trioscale").stat()
    assert (state.st_uid, state.st_gid, state.st_mode & 0o777) == (int(user[2]), int(user[3]), 0o750)
    assert (root / "usr/local/lib/trioscale/trioscale.pyz").read_bytes() == pyz.read_bytes()
    wrapper = (root / "usr/local/bin/trioscale").read_text()
    assert "exec /usr/bin/python3 -I -S /usr/local/lib/trioscale/trioscale.pyz" in wrapper
    assert os.access(root / "usr/local/bin/trioscale", os.X_OK)
    unit = (root / "etc/systemd/system/trioscale.service").read_text()
    for line in ("ExecStart=/usr/local/bin/trioscale serve --config /etc/trioscale/config.yaml",
                 "ExecReload=/bin/kill -HUP $MAINPID", "User=trioscale", "StateDirectory=trioscale",
                 "AmbientCapabilities=CAP_NET_BIND_SERVICE", "ProtectSystem=strict", "ProtectHome=true",
                 "PrivateTmp=true", "NoNewPrivileges=true", "Restart=always", "WantedBy=multi-user.target"):
        assert line in unit.splitlines(), line
    # The installed program accepts the written config.
    r = trioscale("configtest", "-c", str(config_path), prefix=[])
    assert r.returncode == 0, r.stderr

    # Upgrade: the same command from a newer zipapp (here: the same one) keeps config and data.
    (root / "var/lib/trioscale/db.sqlite").write_bytes(b"pretend database")
    edited = config_path.read_text().replace("  level: info", "  level: debug")
    config_path.write_text(edited)
    r = trioscale("install", "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert config_path.read_text() == edited
    assert (root / "var/lib/trioscale/db.sqlite").read_bytes() == b"pretend database"
    assert sum(1 for line in (root / "etc/passwd").read_text().splitlines() if line.startswith("trioscale:")) == 1

    # A new domain: install's keys change, the admin's edits stay, the old file is kept aside.
    r = trioscale("install", "--domain", "ts.example.net", "--root", str(root))
    assert r.returncode == 0, r.stderr
    cfg = load_config(config_path)
    assert cfg.server_url == "https://ts.example.net" and cfg.log.level == "debug"
    assert cfg.tls.acme_email == "admin@example.com"
    backups = list((root / "etc/trioscale").glob("config.yaml.before-install-*"))
    assert len(backups) == 1 and backups[0].read_text() == edited

    # Uninstall keeps the config, the data and the user.
    r = trioscale("uninstall", "--root", str(root))
    assert r.returncode == 0, r.stderr
    for gone in ("etc/systemd/system/trioscale.service", "usr/local/bin/trioscale", "usr/local/lib/trioscale"):
        assert not (root / gone).exists(), gone
    assert config_path.exists() and (root / "var/lib/trioscale/db.sqlite").exists() and user_entry(root)

    # --purge leaves the root as it was before the install, account files included.
    r = trioscale("uninstall", "--purge", "--root", str(root))
    assert r.returncode == 0, r.stderr
    after = snapshot(root)
    leftover = {k for k in set(after) - set(pristine) if not k.endswith("-")}  # passwd-, group-: useradd's backups
    # Only the standard directories that held our files (/usr/local/bin, /var/lib, ...) remain.
    assert all((root / k).is_dir() and not any(p.is_file() for p in (root / k).rglob("*")) for k in leftover), leftover
    for name in ("passwd", "group", "shadow", "gshadow"):
        if f"etc/{name}" in pristine:
            assert (root / "etc" / name).read_bytes() == Path("/etc", name).read_bytes(), name


def _refused(r: subprocess.CompletedProcess, why: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "refused" in r.stderr and why in r.stderr and "Nothing was changed" in r.stderr, r.stderr


def test_refuses_without_systemd(trioscale, tmp_path):
    root = make_root(tmp_path, systemd=False)
    before = snapshot(root)
    _refused(trioscale("install", "--domain", DOMAIN, "--root", str(root)), "systemd is not running")
    _refused(trioscale("uninstall", "--purge", "--root", str(root)), "systemd is not running")
    assert snapshot(root) == before


def test_refuses_when_a_port_is_taken(trioscale, tmp_path, netns):
    root = make_root(tmp_path)
    before = snapshot(root)
    for port in (443, 80):
        holder = subprocess.Popen(netns.wrap([
            sys.executable, "-c",
            f"import socket,time; s=socket.socket(); s.bind(('0.0.0.0', {port})); s.listen(); print('ok', flush=True); time.sleep(60)",
        ]), stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "ok"
            _refused(trioscale("install", "--domain", DOMAIN, "--root", str(root)), f"{port}/tcp already in use")
        finally:
            holder.kill()
            holder.wait(10)
    assert snapshot(root) == before


def test_cert_domain_sets_up_the_zone_and_prints_the_ns_record(trioscale, tmp_path, netns):
    root = make_root(tmp_path)
    before = snapshot(root)
    # The zone must not hold the server's own name (clients would resolve it inside the tailnet).
    _refused(trioscale("install", "--domain", DOMAIN, "--cert-domain", "example.com", "--root", str(root)),
             "dns.base_domain: must not be server_url's host")
    # The DNS port taken: refused with the usual suspect named.
    holder = subprocess.Popen(netns.wrap([
        sys.executable, "-c",
        "import socket,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.53', 53)); "
        "print('ok', flush=True); time.sleep(60)",
    ]), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        _refused(trioscale("install", "--domain", DOMAIN, "--cert-domain", "ts.example.com", "--root", str(root)),
                 "53/udp already in use")
    finally:
        holder.kill()
        holder.wait(10)
    assert snapshot(root) == before

    r = trioscale("install", "--domain", DOMAIN, "--cert-domain", "ts.example.com", "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert "ts.example.com.  NS  vpn.example.com." in r.stdout and "53/udp and 53/tcp" in r.stdout
    cfg = load_config(root / "etc/trioscale/config.yaml")
    assert cfg.dns.base_domain == "ts.example.com" and cfg.dns.magic_dns
    certs = cfg.dns.certificates
    assert (certs.enabled, certs.provider, certs.listen_addr, certs.ns_name) == (True, "embedded", ":53", DOMAIN)
    # Run again without the flags: the zone stays, and the record is printed again.
    r = trioscale("install", "--root", str(root))
    assert r.returncode == 0 and "ts.example.com.  NS  vpn.example.com." in r.stdout, r.stderr


def test_refuses_when_not_root(trioscale, tmp_path):
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) missing")
    # nobody must be able to read the zipapp and write its unpack directory.
    shared = Path(tempfile.mkdtemp(prefix="trioscale-nobody-"))
    try:
        shared.chmod(0o755)
        pyz = shared / trioscale.pyz.name
        shutil.copy2(trioscale.pyz, pyz)
        pyz.chmod(0o644)
        home = shared / "home"
        home.mkdir()
        os.chown(home, 65534, 65534)
        root = make_root(tmp_path)
        before = snapshot(root)
        r = run_pyz(trioscale.python, pyz, home, "install", "--domain", DOMAIN, "--root", str(root),
                    prefix=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
        _refused(r, "must run as root")
        assert snapshot(root) == before
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_refuses_a_first_install_without_domain(trioscale, tmp_path):
    root = make_root(tmp_path)
    before = snapshot(root)
    _refused(trioscale("install", "--root", str(root)), "--domain is needed")
    _refused(trioscale("install", "--domain", "localhost", "--root", str(root)), "full DNS name")
    assert snapshot(root) == before


def test_refuses_on_this_machine_without_systemd(trioscale):
    """The real thing, without --root, where systemd is not running: refused, / untouched."""
    if Path("/run/systemd/system").exists() or Path("/etc/trioscale").exists():
        pytest.skip("this machine runs systemd or has trioscale installed: a real install is not for a test")
    r = trioscale("install", "--domain", DOMAIN, "--email", "admin@example.com")
    _refused(r, "systemd is not running")
    assert not Path("/etc/trioscale").exists() and not Path("/usr/local/lib/trioscale").exists()
    with pytest.raises(KeyError):
        pwd.getpwnam("trioscale")


def test_install_refuses_from_a_source_checkout(tmp_path):
    r = subprocess.run([sys.executable, "-m", "appliance", "install", "--domain", DOMAIN, "--root", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    _refused(r, "from the zipapp")


def test_upgrade_prunes_what_older_zipapps_unpacked(tmp_path):
    from appliance.install import prune_unpacked

    for i, build in enumerate(("old1", "old2", "new")):
        d = tmp_path / f"trioscale.pyz_{build}"
        (d / "site-packages").mkdir(parents=True)
        (tmp_path / f".trioscale.pyz_{build}_lock").touch()
        os.utime(d, (1_000_000 + i, 1_000_000 + i))
    prune_unpacked(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".trioscale.pyz_new_lock", "trioscale.pyz_new"]
