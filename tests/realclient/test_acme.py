"""Issue 4's bar, against the official tailscaled 1.96.4: the one-flag appliance
(`trioscale serve --domain NAME --email ...`) obtains its certificate over TLS-ALPN-01 from a
real ACME server (pebble, inside the test namespace, validating on :443), and clients that
trust pebble's root (SSL_CERT_FILE) join through https://NAME and reach each other.

NAME resolves through /etc/hosts inside the namespace (Netns.add_host); pebble resolves it
through its DNS stub, also inside the namespace."""

from __future__ import annotations

import pytest

from tests.autocert.pebble import run_pebble

from .harness import Node, Server, wait_until

DOMAIN = "vpn.trioscale.test"


@pytest.fixture(scope="module")
def tailnet(netns, client_binaries, tmp_path_factory):
    work = tmp_path_factory.mktemp("acme")
    netns.add_host(DOMAIN)
    with run_pebble(work / "pebble", wrap=netns.wrap, tls_port=443, http_port=80) as pebble:
        server = Server(
            netns, work / "server", port=443, url=f"https://{DOMAIN}",
            serve_args=("--domain", DOMAIN, "--email", "admin@trioscale.test"),
            overrides={"acme_url": pebble.directory_url, "acme_ca_bundle": pebble.ca_bundle,
                       "derp": {"server": {"stun_listen_addr": "127.0.0.1:3478"}}},
        )
        # Every packet through the embedded relay: DERP dials DOMAIN (the map's host name) over
        # TLS and must accept the ACME certificate too.
        env = {"SSL_CERT_FILE": pebble.root_path, "TS_DEBUG_ALWAYS_USE_DERP": "1"}
        nodes = [Node(netns, work, name, client_binaries, env=env) for name in ("acme-a", "acme-b")]
        try:
            server.start()
            yield {"server": server, "nodes": nodes, "pebble": pebble}
        finally:
            for n in nodes:
                n.stop()
            server.stop()


def test_one_flag_appliance_gets_a_certificate_and_clients_join_over_https(tailnet):
    server, nodes = tailnet["server"], tailnet["nodes"]
    doc = wait_until(lambda: (d := server.cli_json("certs"))["certificate"]["names"] and d, 60,
                     what="a certificate from pebble")
    cert = doc["certificate"]
    assert cert["names"] == [DOMAIN] and cert["challenge_type"] == "tls-alpn-01"
    assert "Pebble" in cert["issuer"] and cert["last_error"] is None
    table = server.cli("certs").stdout
    assert DOMAIN in table and "Next renewal" in table

    server.cli("users", "create", "alice")
    key = server.cli("preauthkeys", "create", "--user", "alice", "--reusable").stdout.strip()
    for n in nodes:
        n.start()
        n.up(server, key)
    a, b = nodes
    wait_until(lambda: "acme-b" in a.peers(), 30, what="acme-b in acme-a's netmap")

    def pong() -> str | None:
        out = a.ping(b.ips()[0])
        return out if "pong from acme-b" in out and "via DERP(trioscale)" in out else None

    out = wait_until(pong, 60, interval=1, what="acme-a pinging acme-b through the relay")
    assert "pong from acme-b" in out
    assert a.status()["BackendState"] == "Running"
    assert "ordering a certificate for vpn.trioscale.test" in server.log_text()
