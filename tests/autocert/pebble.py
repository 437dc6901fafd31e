"""Start Debian's pebble (a real ACME server) on loopback for tests.

pebble's validation ports are pointed at ports the test then listens on, and it resolves
names through DNSStub, so any test hostname resolves to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from .dnsstub import DNSStub

PEBBLE_PACKAGE = "pebble"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_or_install_pebble() -> str:
    """Path of the pebble binary; installs Debian's package as root; else skips the test."""
    path = shutil.which("pebble") or ("/usr/bin/pebble" if os.path.exists("/usr/bin/pebble") else None)
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("pebble (ACME test server) is not installed and cannot be installed here: "
                    "run as root on Debian/Ubuntu, or `apt-get install pebble`")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", PEBBLE_PACKAGE]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        # The package lists may be missing on a fresh machine.
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    path = shutil.which("pebble")
    if result.returncode != 0 or not path:
        pytest.skip(f"pebble could not be installed with apt-get: {result.stderr.strip()[-300:]}")
    return path


@dataclass
class Pebble:
    directory_url: str
    management_url: str
    ca_bundle: str          # trusts pebble's own HTTPS listener
    root_path: str          # pebble's issuing root, trusted by TLS clients in tests
    tls_port: int           # where pebble connects for TLS-ALPN-01
    http_port: int          # where pebble connects for HTTP-01
    log_path: str

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")


@contextlib.contextmanager
def run_pebble(workdir: Path, *, validity: int | None = None) -> Iterator[Pebble]:
    binary = find_or_install_pebble()
    workdir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = workdir / "pebble-cert.pem", workdir / "pebble-key.pem", workdir / "trust.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(cert_path))
    server_cert.private_key_pem.write_to_path(str(key_path))
    ca.cert_pem.write_to_path(str(ca_path))
    listen, mgmt = free_port(), free_port()
    tls_port, http_port = free_port(), free_port()
    conf: dict[str, object] = {
        "listenAddress": f"127.0.0.1:{listen}",
        "managementListenAddress": f"127.0.0.1:{mgmt}",
        "certificate": str(cert_path),
        "privateKey": str(key_path),
        "httpPort": http_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }
    if validity is not None:
        conf["certificateValidityPeriod"] = validity
    conf_path = workdir / "pebble-config.json"
    conf_path.write_text(json.dumps({"pebble": conf}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
    env.update(PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
    dns = DNSStub()
    log_path = workdir / "pebble.log"
    log_file = open(log_path, "wb")
    proc = subprocess.Popen([binary, "-config", str(conf_path), "-dnsserver", f"127.0.0.1:{dns.port}"],
                            stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        ctx = ssl.create_default_context(cafile=str(ca_path))
        directory_url = f"https://127.0.0.1:{listen}/dir"
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(directory_url, context=ctx, timeout=2) as r:
                    json.load(r)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("pebble did not start:\n" + log_path.read_text(errors="replace"))
                time.sleep(0.1)
        management_url = f"https://127.0.0.1:{mgmt}"
        with urllib.request.urlopen(management_url + "/roots/0", context=ctx, timeout=5) as r:
            root_pem = r.read()
        root_path = workdir / "pebble-root.pem"
        root_path.write_bytes(root_pem)
        yield Pebble(directory_url, management_url, str(ca_path), str(root_path), tls_port,
                     http_port, str(log_path))
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()
        dns.close()
