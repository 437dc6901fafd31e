"""Start Debian's pebble (a real ACME server) on loopback for tests.

pebble's validation ports are pointed at ports the test then listens on, and it resolves
names through DNSStub, so any test hostname resolves to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme

from tests.aptinstall import find_or_install

from .dnsstub import DNSStub
from tests.ports import free_port

PEBBLE_PACKAGE = "pebble"
REPO = Path(__file__).resolve().parents[2]




def find_or_install_pebble() -> str:
    """Path of the pebble binary; installs Debian's package as root; else skips the test."""
    return find_or_install("pebble", PEBBLE_PACKAGE)


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


def wait_ready(directory_url: str, management_url: str, ca_path: str, root_path: str,
               timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Poll pebble's directory until it answers, then save its issuing root to root_path.

    Raises RuntimeError after timeout or when alive() turns false.
    """
    ctx = ssl.create_default_context(cafile=ca_path)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(directory_url, context=ctx, timeout=2) as r:
                json.load(r)
            break
        except OSError:
            if not alive() or time.monotonic() > deadline:
                raise RuntimeError("pebble did not start") from None
            time.sleep(0.1)
    with urllib.request.urlopen(management_url + "/roots/0", context=ctx, timeout=5) as r:
        Path(root_path).write_bytes(r.read())


def terminate(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def run_pebble(workdir: Path, *, validity: int | None = None,
               wrap: Callable[[list[str]], list[str]] | None = None,
               tls_port: int | None = None, http_port: int | None = None,
               dns_server: str | None = None) -> Iterator[Pebble]:
    """Run pebble (and its DNS stub) until the block exits.

    Args:
        validity: lifetime of issued certificates in seconds (pebble's default otherwise).
        wrap: runs pebble and the DNS stub inside a network namespace: turns an argv into the
            argv that runs it there (``Netns.wrap``). Without it they run here, on loopback.
        tls_port, http_port: where pebble connects for TLS-ALPN-01 / HTTP-01 (free ports by
            default; 443 and 80 inside a namespace).
        dns_server: host:port of the DNS server pebble asks (for DNS-01: the zone's
            authoritative server) instead of the stub that resolves every name to loopback.
    """
    binary = find_or_install_pebble()
    workdir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = workdir / "pebble-cert.pem", workdir / "pebble-key.pem", workdir / "trust.pem"
    server_cert.cert_chain_pems[0].write_to_path(str(cert_path))
    server_cert.private_key_pem.write_to_path(str(key_path))
    ca.cert_pem.write_to_path(str(ca_path))
    listen, mgmt = free_port(), free_port()
    tls_port = tls_port or free_port()
    http_port = http_port or free_port()
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
    dns: DNSStub | None = None
    dns_proc: subprocess.Popen | None = None
    if dns_server is None and wrap is None:
        dns = DNSStub()
        dns_server = f"127.0.0.1:{dns.port}"
    elif dns_server is None:
        # The stub must live where pebble resolves: inside the namespace, as a process.
        dns_port = free_port()
        dns_server = f"127.0.0.1:{dns_port}"
        dns_proc = subprocess.Popen(wrap([sys.executable, "-m", "tests.autocert.dnsstub", str(dns_port)]),
                                    cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    log_path = workdir / "pebble.log"
    log_file = open(log_path, "wb")
    argv = [binary, "-config", str(conf_path), "-dnsserver", dns_server]
    proc = subprocess.Popen(wrap(argv) if wrap else argv, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        directory_url = f"https://127.0.0.1:{listen}/dir"
        management_url = f"https://127.0.0.1:{mgmt}"
        root_path = workdir / "pebble-root.pem"
        args = (directory_url, management_url, str(ca_path), str(root_path))
        try:
            if wrap is None:
                wait_ready(*args, 20, alive=lambda: proc.poll() is None)
            else:
                subprocess.run(wrap([sys.executable, "-m", "tests.autocert.pebble", *args]), cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)}, check=True, timeout=30,
                               capture_output=True)
        except (RuntimeError, subprocess.SubprocessError) as exc:
            raise RuntimeError(f"pebble did not start ({exc}):\n" + log_path.read_text(errors="replace")) from None
        yield Pebble(directory_url, management_url, str(ca_path), str(root_path), tls_port,
                     http_port, str(log_path))
    finally:
        terminate(proc)
        log_file.close()
        if dns is not None:
            dns.close()
        if dns_proc is not None:
            terminate(dns_proc)


if __name__ == "__main__":
    # Used by run_pebble(wrap=...): wait for pebble from inside its namespace.
    wait_ready(*sys.argv[1:5], 20)
