"""/machine/set-dns against the real server in-process (appliance.serve) with certificates on
and the embedded DNS server on loopback, driven by our own protocol client: the netmap's
CertDomains and capability, a machine publishing its own challenge record (visible over DNS),
and every refusal with its status and reason."""

from __future__ import annotations

import json
import logging

import dns.asyncquery
import dns.message
import dns.rcode
import pytest
import trio

from appliance.config import config_from_dict
from appliance.control.setdns import RATE_BURST, SetDNSRequest
from appliance.control.codec import WireError
from appliance.serve import serve
from bench.controlclient import SimClient, fetch_server_key
from tests.autocert.pebble import free_port

HOST = "127.0.0.1"
WAIT = 10
TOKEN = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"


def config(tmp_path, port: int, certificates: dict | None):
    dns_cfg: dict = {"base_domain": "ts.test", "override_local_dns": False}
    if certificates is not None:
        dns_cfg["certificates"] = certificates
    return config_from_dict({
        "server_url": f"http://{HOST}:{port}", "listen_addr": f"{HOST}:{port}",
        "data_dir": str(tmp_path / "data"), "unix_socket": str(tmp_path / "data" / "trioscale.sock"),
        "dns": dns_cfg, "derp": {"server": {"enabled": False}},
    })


async def start(nursery, tmp_path, certificates: dict | None):
    port = free_port()
    running = await nursery.start(serve, config(tmp_path, port, certificates))
    user = await running.tailnet.create_user("alice")
    _, key = await running.tailnet.create_preauth_key(user.name, reusable=True)
    with trio.fail_after(WAIT):
        public = await fetch_server_key(HOST, port)
    clients = []
    for name in ("alpha", "beta"):
        c = SimClient(HOST, port, public, name, record=True)
        with trio.fail_after(WAIT):
            await c.connect(nursery)
            await c.register(key)
            await c.open_map()
        clients.append(c)
    return running, clients


@pytest.fixture
async def tailnet(nursery, tmp_path):
    running, clients = await start(nursery, tmp_path, {"enabled": True, "listen_addr": f"{HOST}:0",
                                                       "ns_name": "vpn.example.com"})
    yield running, *clients
    running.cancel_scope.cancel()


async def set_dns(c: SimClient, name: str, value: str = TOKEN, rtype: str = "TXT", **extra) -> tuple[int, str]:
    doc = {"Version": 133, "NodeKey": c.node_key, "Name": name, "Type": rtype, "Value": value, **extra}
    with trio.fail_after(WAIT):
        status, body = await c.post_json("/machine/set-dns", doc)
    return status, body.decode()


async def lookup(port: int, name: str, rdtype: str = "TXT") -> dns.message.Message:
    with trio.fail_after(WAIT):
        return await dns.asyncquery.udp(dns.message.make_query(name, rdtype), HOST, port=port)


async def test_netmap_offers_certificates_for_the_own_name(tailnet):
    running, a, b = tailnet
    dns_config = a.map.messages[0]["DNSConfig"]
    assert dns_config["CertDomains"] == ["alpha.ts.test"]
    assert "https" in a.map.self_node["CapMap"]
    assert b.map.messages[0]["DNSConfig"]["CertDomains"] == ["beta.ts.test"]
    # A rename moves the certificate name with it.
    await running.tailnet.rename_node(a.node_id, "renamed")
    with trio.fail_after(WAIT):
        await a.wait_until(lambda: any(m.get("DNSConfig", {}).get("CertDomains") == ["renamed.ts.test"]
                                       for m in a.map.messages))


async def test_own_challenge_record_is_published_and_served(tailnet):
    running, a, b = tailnet
    status, body = await set_dns(a, "_acme-challenge.alpha.ts.test")
    assert (status, json.loads(body)) == (200, {})
    answer = await lookup(running.dns_port, "_acme-challenge.ALPHA.ts.test")
    assert answer.rcode() == dns.rcode.NOERROR
    assert [b"".join(r.strings).decode() for r in answer.answer[0]] == [TOKEN]
    zone = running.cert_zone.status()
    assert zone["records"][0]["name"] == "_acme-challenge.alpha.ts.test" and zone["published"] == 1
    assert zone["ns_record"] == "ts.test. NS vpn.example.com."


@pytest.mark.parametrize("name,rtype,reason", [
    ("_acme-challenge.alpha.ts.test", "TXT", "only its own challenge record, _acme-challenge.beta.ts.test"),
    ("beta.ts.test", "TXT", "only the ACME challenge record"),
    ("_acme-challenge.beta.ts.test.evil.com", "TXT", "only its own challenge record"),
    ("_acme-challenge.beta.ts.test", "A", "only TXT records"),
    ("_acme-challenge.beta.ts.test", "CNAME", "only TXT records"),
])
async def test_refusals(tailnet, caplog, name, rtype, reason):
    running, a, b = tailnet
    status, body = await set_dns(b, name, rtype=rtype)
    assert status == 403 and reason in body
    assert (await lookup(running.dns_port, "_acme-challenge.alpha.ts.test")).rcode() == dns.rcode.NXDOMAIN
    assert running.cert_zone.status()["records"] == []
    assert any("set-dns refused" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


async def test_another_machines_node_key_is_refused(tailnet):
    # B names A's node key: the Noise session proves B's machine key, which is not A's.
    running, a, b = tailnet
    doc = {"Version": 133, "NodeKey": a.node_key, "Name": "_acme-challenge.alpha.ts.test", "Type": "TXT",
           "Value": TOKEN}
    with trio.fail_after(WAIT):
        status, body = await b.post_json("/machine/set-dns", doc)
    assert status == 403 and b"unknown node key" in body


async def test_malformed_bodies_get_400(tailnet):
    running, a, b = tailnet
    for value in ("", "x" * 256, "has space", "é"):
        status, body = await set_dns(a, "_acme-challenge.alpha.ts.test", value=value)
        assert status == 400 and "Value" in body, value
    status, body = await set_dns(a, "_acme-challenge.alpha.ts.test", NodeKey="nodekey:zz")
    assert status == 400
    with trio.fail_after(WAIT):
        status, body = await a.post_json("/machine/set-dns", "a string")
    assert status == 400
    # The client still works afterwards.
    assert (await set_dns(a, "_acme-challenge.alpha.ts.test"))[0] == 200


async def test_rate_limit_per_machine(tailnet):
    running, a, b = tailnet
    for i in range(RATE_BURST):
        assert (await set_dns(a, "_acme-challenge.alpha.ts.test", value=f"v{i}"))[0] == 200
    status, body = await set_dns(a, "_acme-challenge.alpha.ts.test", value="one-more")
    assert status == 429 and "too many" in body
    assert (await set_dns(b, "_acme-challenge.beta.ts.test"))[0] == 200  # B has its own budget
    # Only the per-name maximum of values is held; the oldest went.
    assert len(running.cert_zone.status()["records"]) == 5


async def test_without_certificates_nothing_is_offered(nursery, tmp_path):
    running, (a, b) = await start(nursery, tmp_path, None)
    assert "CertDomains" not in (a.map.messages[0].get("DNSConfig") or {})
    assert "https" not in a.map.self_node["CapMap"]
    status, body = await set_dns(a, "_acme-challenge.alpha.ts.test")
    assert status == 403 and "not enabled" in body
    assert running.cert_zone is None and running.dns_port is None
    running.cancel_scope.cancel()


def test_request_parsing_limits():
    key = "nodekey:" + "ab" * 32
    ok = SetDNSRequest.parse(json.dumps({"NodeKey": key, "Name": "n", "Type": "TXT", "Value": "v", "Extra": 1}).encode())
    assert (ok.node_key, ok.name, ok.type, ok.value) == (key, "n", "TXT", "v")
    bad = [
        b"x" * 3000,
        b"[1]",
        b"{\"NodeKey\": 5}",
        json.dumps({"NodeKey": key, "Name": "n" * 254, "Type": "TXT", "Value": "v"}).encode(),
        json.dumps({"NodeKey": key, "Name": "n", "Type": "T" * 17, "Value": "v"}).encode(),
        json.dumps({"NodeKey": key, "Name": "n", "Type": "TXT"}).encode(),
        b"\xff\xfe",
        b"[" * 5000,
    ]
    for body in bad:
        with pytest.raises(WireError):
            SetDNSRequest.parse(body)
    with pytest.raises(WireError):
        SetDNSRequest.parse(json.dumps({"NodeKey": "nodekey:00", "Name": "n", "Type": "TXT", "Value": "v"}).encode())
