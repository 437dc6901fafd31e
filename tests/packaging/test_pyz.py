"""Issue 7's zipapp bar: the .pyz built in this run, on a bare python3, serves a real client."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path


from ..realclient.harness import Node, Server, http_get, wait_until
from .bare import assert_bare, bare_env, bare_python, run_pyz


class PyzServer(Server):
    """The harness's server, started from the zipapp on a bare interpreter instead of the tree."""

    def __init__(self, ns, workdir: Path, pyz: Path, python: str, **kw) -> None:
        super().__init__(ns, workdir, **kw)
        self.pyz = pyz
        self.python = python
        self.home = workdir / "home"
        self.home.mkdir(exist_ok=True)

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.ns.wrap([self.python, "-I", "-S", str(self.pyz), "serve", "-c", str(self.config_path)]),
            cwd=self.home, stdout=log, stderr=subprocess.STDOUT, env=bare_env(self.home),
        )
        wait_until(lambda: self.cli_ok("users", "list"), 60, what="trioscale from the zipapp to answer")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = run_pyz(self.python, self.pyz, self.home, "-c", str(self.config_path), *args, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"trioscale {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc


def test_zipapp_carries_every_native_module(pyz):
    names = zipfile.ZipFile(pyz).namelist()
    for py in ("311", "312", "313", "314"):
        for module in ("_cffi_backend", "zstandard/backend_c"):
            assert any(n.startswith(f"site-packages/{module}.cpython-{py}-") for n in names), (module, py)
    assert any(n.startswith("site-packages/cryptography/hazmat/bindings/_rust.abi3") for n in names)
    assert "site-packages/appliance/config-example.yaml" in names
    assert "site-packages/appliance/trioscale.service" in names


def test_every_verb_runs_from_the_zipapp(pyz, tmp_path):
    python = bare_python(str(tmp_path))
    assert_bare(python)
    home = tmp_path / "home"
    home.mkdir()
    r = run_pyz(python, pyz, home, "version")
    assert r.returncode == 0 and r.stdout.strip() == "0.1.0", r
    r = run_pyz(python, pyz, home, "version", "-o", "json")
    assert json.loads(r.stdout) == {"version": "0.1.0"}
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\n")
    r = run_pyz(python, pyz, home, "configtest", "-c", str(cfg))
    assert r.returncode == 0 and "configuration OK" in r.stderr, r
    help_text = run_pyz(python, pyz, home, "--help").stdout
    for verb in ("serve", "configtest", "version", "install", "uninstall", "users", "preauthkeys", "nodes"):
        assert verb in help_text
        assert run_pyz(python, pyz, home, verb, "--help").returncode == 0, verb


def test_zipapp_serves_a_real_client_and_survives_a_restart(pyz, netns, client_binaries, tmp_path):
    python = bare_python(str(tmp_path))
    assert_bare(python)
    # As in tests/realclient/test_core.py: the embedded relay on the plain-HTTP port, which a
    # client needs in its netmap before it counts itself running.
    server = PyzServer(netns, tmp_path / "server", pyz, python, overrides={
        "derp": {"server": {"enabled": True, "stun_listen_addr": "127.0.0.1:3478"}},
    })
    node = Node(netns, tmp_path, "pyzclient", client_binaries, env={"TS_DEBUG_USE_DERP_HTTP": "1"})
    try:
        server.start()
        server.cli("users", "create", "alice")
        key = server.cli("preauthkeys", "create", "--user", "alice").stdout.strip()
        node.start()
        node.up(server, key)
        listed = server.cli_json("nodes", "list")
        assert [n["givenName"] for n in listed] == ["pyzclient"]
        assert node.status()["BackendState"] == "Running"
        assert sorted(node.ips()) == sorted(listed[0]["ipAddresses"])
        # The web console's files are package data: the zipapp carries them.
        assert "X-CSRF-Token" in http_get(netns, server.url + "/admin/static/console.js")
        assert ".scroll" in http_get(netns, server.url + "/admin/static/console.css")

        # What an upgrade does to the tailnet: the server goes away and comes back; the client
        # reconnects by itself with the same addresses.
        server.stop()
        server.start()
        wait_until(lambda: server.cli_json("nodes", "list")[0]["online"], 60, interval=0.5,
                   what="the client back online after the server restart")
        assert sorted(node.ips()) == sorted(listed[0]["ipAddresses"])
    except BaseException:
        print(server.log_text()[-5000:])
        raise
    finally:
        node.stop()
        server.stop()
