"""Start Debian's BIND 9 (``named``) for tests: the primary server of one zone that accepts
dynamic updates signed with one TSIG key, as an admin would set it up for
``dns.certificates.provider: rfc2136``.

It listens on 127.0.0.1:PORT (UDP and TCP), runs in the foreground as the calling user with
everything in its work directory, and refuses recursion.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

from tests.aptinstall import find_or_install
from tests.autocert.pebble import terminate

KEY_NAME = "trioscale-updates"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Named:
    port: int
    zone: str
    key_name: str
    secret: str  # base64
    algorithm: str
    log_path: Path

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _conf(workdir: Path, zone: str, port: int, key_name: str, secret: str, algorithm: str) -> str:
    return f"""
key "{key_name}" {{ algorithm {algorithm}; secret "{secret}"; }};
options {{
    directory "{workdir}";
    pid-file "{workdir}/named.pid";
    session-keyfile "{workdir}/session.key";
    managed-keys-directory "{workdir}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    allow-query {{ any; }};
    dnssec-validation no;
    notify no;
}};
controls {{ }};
zone "{zone}" {{
    type primary;
    file "{workdir}/{zone}.zone";
    # Only this key, only TXT records, only below the zone's apex: the least a server gives
    # trioscale.
    update-policy {{ grant {key_name} subdomain {zone}. TXT; }};
}};
"""


def _zone_file(zone: str) -> str:
    return f"""$TTL 300
@   IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 30
@   IN NS  ns.{zone}.
ns  IN A   127.0.0.1
"""


@contextlib.contextmanager
def run_named(workdir: Path, zone: str, port: int, *, algorithm: str = "hmac-sha256",
              wrap: Callable[[list[str]], list[str]] | None = None) -> Iterator[Named]:
    """Run named for ``zone`` on 127.0.0.1:``port`` until the block exits; ``wrap`` runs it
    inside a network namespace (``Netns.wrap``)."""
    binary = find_or_install("named", "bind9", sbin=True)
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    (workdir / "named.conf").write_text(_conf(workdir, zone, port, KEY_NAME, secret, algorithm))
    (workdir / f"{zone}.zone").write_text(_zone_file(zone))
    log_path = workdir / "named.log"
    log = open(log_path, "wb")
    argv = [binary, "-g", "-4", "-c", str(workdir / "named.conf")]
    proc = subprocess.Popen(wrap(argv) if wrap else argv, stdout=log, stderr=subprocess.STDOUT)
    named = Named(port, zone, KEY_NAME, secret, algorithm, log_path)
    try:
        if wrap is None:
            wait_serving(named, proc)
        else:
            # Queries must come from inside the namespace too.
            subprocess.run(wrap([sys.executable, "-m", "tests.certdns.bind9", zone, str(port)]),
                           cwd=REPO, check=True, timeout=40, env={**os.environ, "PYTHONPATH": str(REPO)})
        yield named
    except (RuntimeError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"named did not start ({e}):\n{log_path.read_text(errors='replace')[-3000:]}") from None
    finally:
        terminate(proc)
        log.close()


def soa_answered(zone: str, port: int) -> bool:
    try:
        answer = dns.query.udp(dns.message.make_query(zone, "SOA"), "127.0.0.1", port=port, timeout=1)
    except (OSError, dns.exception.Timeout):
        return False
    return answer.rcode() == dns.rcode.NOERROR and bool(answer.answer)


def wait_serving(named: Named, proc: subprocess.Popen | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not soa_answered(named.zone, named.port):
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            raise RuntimeError("named is not answering for its zone")
        time.sleep(0.2)


def txt_at(server_port: int, name: str) -> set[str]:
    """The TXT values the server holds at ``name`` now."""
    answer = dns.query.tcp(dns.message.make_query(name, "TXT"), "127.0.0.1", port=server_port, timeout=5)
    return {b"".join(r.strings).decode() for rrset in answer.answer for r in rrset}


if __name__ == "__main__":
    # Used by run_named(wrap=...): wait for named from inside its namespace.
    zone_arg, port_arg = sys.argv[1], int(sys.argv[2])
    deadline = time.monotonic() + 30
    while not soa_answered(zone_arg, port_arg):
        if time.monotonic() > deadline:
            raise SystemExit("named is not answering for its zone")
        time.sleep(0.2)
