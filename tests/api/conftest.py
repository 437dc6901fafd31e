"""One real `trioscale serve` per test module, over https on loopback (a test CA from trustme),
with its admin socket; and the CLI run against it, locally or as a remote client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.realclient.harness import make_certs, wait_until
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]




class ApiServer:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.port = free_port()
        self.certs = make_certs(workdir / "tls", "localhost", "127.0.0.1")
        self.url = f"https://localhost:{self.port}"
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump({
            "server_url": self.url, "listen_addr": f"127.0.0.1:{self.port}", "data_dir": str(workdir / "data"),
            "unix_socket": str(workdir / "admin.sock"), "tls_cert_path": str(self.certs.cert),
            "tls_key_path": str(self.certs.key), "derp": {"server": {"enabled": False}},
            "policy": {"mode": "database"}, "dns": {"base_domain": "tailnet.internal"},
        }))
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "serve", "-c", str(self.config_path)], cwd=REPO,
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        wait_until(lambda: self.proc.poll() is None and self.cli("users", "list").returncode == 0, 30,
                   what="trioscale to answer on its socket")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        base = {k: v for k, v in os.environ.items() if not k.endswith(("_CLI_ADDRESS", "_CLI_API_KEY"))}
        return subprocess.run(
            [sys.executable, "-m", "appliance", "-c", str(self.config_path), *args], cwd=REPO,
            capture_output=True, text=True, timeout=60,
            env={**base, "PYTHONPATH": str(REPO), **(env or {})},
        )

    def ok(self, *args: str, env: dict[str, str] | None = None) -> str:
        res = self.cli(*args, env=env)
        assert res.returncode == 0, f"trioscale {' '.join(args)}: {res.stderr.strip()}"
        return res.stdout

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    server = ApiServer(tmp_path_factory.mktemp("api"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
