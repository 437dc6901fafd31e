"""Issue 15's bar, against the official tailscaled 1.96.4: HTTPS certificates for MagicDNS names.

Inside the test namespace: Debian's pebble is the ACME server, validating DNS-01 through
trioscale's embedded authoritative DNS server (``-dnsserver``); two real tailscaled point their
ACME client at pebble (TS_DEBUG_ACME_DIRECTORY_URL) and trust pebble's API certificate
(SSL_CERT_FILE). ``tailscale cert`` obtains a certificate for the node's own name through
/machine/set-dns, ``tailscale serve --https=443`` serves a local app with it, and the other node
fetches it over the tailnet, verifying against pebble's root alone. The RFC 2136 path (BIND 9
as the zone's server) is in test_certs_rfc2136.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from tests.autocert.pebble import run_pebble

from .harness import REPO, Netns, Node, Server, random_blob, serve_files, socks_fetch, wait_until

DNS_PORT = 53  # the embedded server's real port, inside the namespace
APP_PORT = 8088
SOCKS_PORT = 1080
ZONE = "ts.test"


@pytest.fixture(scope="module")
def tailnet(netns, client_binaries, tmp_path_factory):
    work = tmp_path_factory.mktemp("certs")
    with run_pebble(work / "pebble", wrap=netns.wrap, dns_server=f"127.0.0.1:{DNS_PORT}") as pebble:
        server = Server(netns, work / "server", overrides={
            "dns": {"certificates": {"enabled": True, "listen_addr": f"127.0.0.1:{DNS_PORT}",
                                     "ns_name": "ns.trioscale.test"}},
            "derp": {"server": {"enabled": True, "stun_listen_addr": "127.0.0.1:3478"}},
        })
        env = {"TS_DEBUG_ACME_DIRECTORY_URL": pebble.directory_url, "SSL_CERT_FILE": pebble.ca_bundle,
               "TS_DEBUG_USE_DERP_HTTP": "1"}  # the relay shares the plain-HTTP control port here
        a = Node(netns, work, "certs-a", client_binaries, env=env)
        b = Node(netns, work, "certs-b", client_binaries, env=env, socks_port=SOCKS_PORT)
        try:
            server.start()
            server.cli("users", "create", "alice")
            key = server.cli("preauthkeys", "create", "--user", "alice", "--reusable").stdout.strip()
            for n in (a, b):
                n.start()
                n.up(server, key)
            yield {"server": server, "a": a, "b": b, "pebble": pebble, "work": work}
        finally:
            for n in (a, b):
                n.stop()
            server.stop()


def chain_verifies(cert_pem: bytes, root_path: str, name: str) -> bool:
    """The leaf is for ``name`` and chains to pebble's issuing root (and only that root)."""
    certs = x509.load_pem_x509_certificates(cert_pem)
    root = x509.load_pem_x509_certificates(Path(root_path).read_bytes())
    verifier = PolicyBuilder().store(Store(root)).build_server_verifier(x509.DNSName(name))
    chain = verifier.verify(certs[0], certs[1:])
    return chain[-1] == root[0]


def test_tailscale_cert_gets_a_certificate_for_the_own_name(tailnet):
    a, pebble, work = tailnet["a"], tailnet["pebble"], tailnet["work"]
    name = f"certs-a.{ZONE}"
    st = a.status()
    assert st["CertDomains"] == [name]  # what the netmap's DNSConfig says
    assert "https" in st["Self"]["CapMap"]
    cert_file, key_file = work / "a.crt", work / "a.key"
    out = a.ts("cert", f"--cert-file={cert_file}", f"--key-file={key_file}", name, timeout=120)
    assert "Wrote public cert" in out.stdout + out.stderr, out
    pem = cert_file.read_bytes()
    assert chain_verifies(pem, pebble.root_path, name)
    leaf = x509.load_pem_x509_certificates(pem)[0]
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == [name]
    assert key_file.stat().st_mode & 0o077 == 0
    zone = tailnet["server"].cli_json("certs")["dns_zone"]
    assert zone["published"] >= 1 and zone["records"][0]["name"] == f"_acme-challenge.{name}"
    assert zone["queries"].get("answered", 0) >= 1  # pebble asked us
    table = tailnet["server"].cli("certs").stdout
    assert "ts.test. NS ns.trioscale.test." in table and f"_acme-challenge.{name}" in table

    # A second run reuses it: same files, no new order.
    again = a.ts("cert", f"--cert-file={cert_file}", f"--key-file={key_file}", name, timeout=120)
    assert "Public cert unchanged" in again.stdout + again.stderr, again
    assert "Private key unchanged" in again.stdout + again.stderr, again
    assert cert_file.read_bytes() == pem
    assert tailnet["server"].cli_json("certs")["dns_zone"]["published"] == zone["published"]


def test_tailscale_serve_https_reached_from_the_other_node(tailnet, netns):
    a, b, pebble, work = tailnet["a"], tailnet["b"], tailnet["pebble"], tailnet["work"]
    expected = random_blob(work / "app", 200_000)
    with serve_files(netns, work / "app", APP_PORT):
        out = a.ts("serve", "--bg", "--https=443", f"http://127.0.0.1:{APP_PORT}", timeout=120)
        assert f"https://certs-a.{ZONE}" in out.stdout, out
        got = wait_until(
            lambda: socks_fetch(netns, SOCKS_PORT, f"certs-a.{ZONE}", 443, "/blob", timeout=60,
                                ca=Path(pebble.root_path)),
            120, interval=2, what="B fetching https://certs-a.ts.test/blob through its SOCKS5 proxy",
        )
        assert got == expected
        a.ts("serve", "--https=443", "off")


def test_set_dns_for_another_name_or_record_is_refused(tailnet):
    a, b = tailnet["a"], tailnet["b"]
    for name, reason in (
        ("_acme-challenge.certs-a.ts.test", "only its own challenge record, _acme-challenge.certs-b.ts.test"),
        ("certs-b.ts.test", "only the ACME challenge record"),
        ("_acme-challenge.certs-b.ts.test.example.com", "only its own challenge record"),
    ):
        status, body = b.localapi("POST", "/localapi/v0/set-dns?" + urlencode({"name": name, "value": "forged-value"}))
        assert status != 200 and "403" in body and reason in body, (status, body)
    # Its own record is allowed (the same call `tailscale cert` makes).
    status, body = b.localapi("POST", "/localapi/v0/set-dns?" + urlencode(
        {"name": "_acme-challenge.certs-b.ts.test", "value": "its-own"}))
    assert status == 200, body
    records = {r["name"]: r["value"] for r in tailnet["server"].cli_json("certs")["dns_zone"]["records"]}
    assert records.get("_acme-challenge.certs-b.ts.test") == "its-own"
    assert "forged-value" not in records.values()


def dig(netns: Netns, *queries: tuple[str, str, str, bool]) -> list[dict]:
    """Ask the embedded server from inside the namespace: (name, type, udp|tcp, recursion desired)."""
    p = subprocess.run(
        netns.wrap([sys.executable, "-m", "tests.realclient.dnsquery", "127.0.0.1", str(DNS_PORT),
                    json.dumps(queries)]),
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_dns_server_answers_its_zone_only_over_udp_and_tcp(tailnet, netns):
    status, body = tailnet["b"].localapi("POST", "/localapi/v0/set-dns?" + urlencode(
        {"name": "_acme-challenge.certs-b.ts.test", "value": "dns-test"}))
    assert status == 200, body
    for transport in ("udp", "tcp"):
        txt, soa, ns, missing, other, local = dig(
            netns,
            ("_acme-challenge.certs-b.ts.test", "TXT", transport, True),
            (ZONE, "SOA", transport, False),
            (ZONE, "NS", transport, True),
            ("nothing-here.ts.test", "A", transport, True),
            ("www.example.com", "A", transport, True),
            ("localhost", "A", transport, False),
        )
        assert txt["rcode"] == "NOERROR" and "AA" in txt["flags"] and "dns-test" in txt["txt"], txt
        assert soa["types"] == ["SOA"] and "AA" in soa["flags"]
        assert ns["types"] == ["NS"]
        assert missing["rcode"] == "NXDOMAIN"
        # Not a resolver: a name elsewhere with recursion desired is refused, never looked up.
        assert other["rcode"] == "REFUSED" and "RA" not in other["flags"] and not other["types"]
        assert local["rcode"] == "REFUSED"
