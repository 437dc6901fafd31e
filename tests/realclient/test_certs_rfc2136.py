"""Issue 15's bar for ``dns.certificates.provider: rfc2136``, against the official tailscaled
1.96.4: the zone lives on Debian's BIND 9 (started here, in the test namespace, with a TSIG key
allowed to change its TXT records), trioscale publishes the challenge there with signed dynamic
updates, pebble validates DNS-01 by asking BIND, and `tailscale cert` gets its certificate.
(Withdrawing the record after its lifetime is tested against BIND in tests/certdns/test_rfc2136.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.autocert.pebble import run_pebble
from tests.certdns.bind9 import run_named

from .harness import Node, Server
from .test_certs import chain_verifies

ZONE = "ts.test"
BIND_PORT = 53


@pytest.fixture(scope="module")
def tailnet(netns, client_binaries, tmp_path_factory):
    work = tmp_path_factory.mktemp("certs-rfc2136")
    with run_named(work / "named", ZONE, BIND_PORT, wrap=netns.wrap) as named, \
            run_pebble(work / "pebble", wrap=netns.wrap, dns_server=named.server) as pebble:
        secret_file = work / "tsig.secret"
        secret_file.write_text(named.secret + "\n")
        secret_file.chmod(0o600)
        server = Server(netns, work / "server", overrides={
            "dns": {"certificates": {"enabled": True, "provider": "rfc2136", "rfc2136": {
                "server": named.server, "tsig_key_name": named.key_name, "tsig_algorithm": named.algorithm,
                "tsig_secret_path": str(secret_file),
            }}},
            "derp": {"server": {"enabled": True, "stun_listen_addr": "127.0.0.1:3478"}},
        })
        env = {"TS_DEBUG_ACME_DIRECTORY_URL": pebble.directory_url, "SSL_CERT_FILE": pebble.ca_bundle,
               "TS_DEBUG_USE_DERP_HTTP": "1"}
        node = Node(netns, work, "rfc-a", client_binaries, env=env)
        try:
            server.start()
            server.cli("users", "create", "alice")
            node.start()
            node.up(server, server.cli("preauthkeys", "create", "--user", "alice").stdout.strip())
            yield {"server": server, "node": node, "pebble": pebble, "named": named, "work": work}
        finally:
            node.stop()
            server.stop()


def test_certificate_through_bind9(tailnet):
    node, pebble, named, work = tailnet["node"], tailnet["pebble"], tailnet["named"], tailnet["work"]
    name = f"rfc-a.{ZONE}"
    cert_file, key_file = work / "rfc-a.crt", work / "rfc-a.key"
    out = node.ts("cert", f"--cert-file={cert_file}", f"--key-file={key_file}", name, timeout=120)
    assert "Wrote public cert" in out.stdout + out.stderr, out
    assert chain_verifies(cert_file.read_bytes(), pebble.root_path, name)
    # BIND took the signed update (its log names the key and the record) and pebble asked it.
    log = named.log()
    assert f"/key {named.key_name}: updating zone '{ZONE}/IN': adding an RR at '_acme-challenge.{name}' TXT" in log
    status = tailnet["server"].cli_json("certs")["dns_zone"]
    assert status["provider"] == "rfc2136" and status["server"] == named.server and status["last_error"] is None
    assert [r["name"] for r in status["records"]] == [f"_acme-challenge.{name}"]
    table = tailnet["server"].cli("certs").stdout
    assert named.server in table and "Published" in table
    assert Path(key_file).stat().st_mode & 0o077 == 0
