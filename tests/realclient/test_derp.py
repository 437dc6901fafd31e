"""Issue 3's bar, against the official tailscaled 1.96.4: with every node forced onto DERP
(TS_DEBUG_ALWAYS_USE_DERP=1) and the server on https with a CA made at run time, the embedded
relay carries the tailnet; STUN answers netcheck; unknown keys are refused; the DERP map follows
its sources. The relay runs on two worker processes (issue 14), so TLS, DERP and the control
traffic they pass back all take the worker path; tests/unit/test_tls_relay.py covers the
relay in one process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from .harness import REPO, Node, Server, make_certs, random_blob, serve_files, socks_fetch, wait_until

PORT = 8443
WORKERS = 2
MAP_PORT = 8444  # the stand-in for a remote DERP map (derp.urls)
REGION = {"id": 950, "code": "tsint", "name": "Trioscale Integration"}
EXTRA_REGION = {  # from derp.urls; never measured nor chosen, so clients do not dial it
    "RegionID": 960, "RegionCode": "far", "RegionName": "Far Away", "NoMeasureNoHome": True,
    "Nodes": [{"Name": "960a", "RegionID": 960, "HostName": "far.invalid", "IPv4": "192.0.2.1", "IPv6": "none"}],
}


@pytest.fixture(scope="module")
def tailnet(netns, client_binaries, tmp_path_factory):
    work = tmp_path_factory.mktemp("derp")
    certs = make_certs(work / "tls", "127.0.0.1", "localhost")
    site = work / "derpmap"
    site.mkdir()
    (site / "map.json").write_text(json.dumps({"Regions": {"960": EXTRA_REGION}}))
    map_server = subprocess.Popen(
        netns.wrap([sys.executable, "-m", "tests.realclient.httpsfile", str(MAP_PORT), str(certs.cert),
                    str(certs.key), str(site)]),
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    server = Server(netns, work / "server", port=PORT, tls=certs, env={"SSL_CERT_FILE": str(certs.ca)}, overrides={
        "metrics_listen_addr": "127.0.0.1:9090",
        "derp": {
            "server": {
                "enabled": True, "stun_listen_addr": "127.0.0.1:3478", "verify_clients": True,
                "region_id": REGION["id"], "region_code": REGION["code"], "region_name": REGION["name"],
                "ipv4": "127.0.0.1", "workers": WORKERS,
            },
            "urls": [f"https://127.0.0.1:{MAP_PORT}/map.json"],
            "auto_update_enabled": True,
            "update_frequency": "2s",
        },
    })
    server.start()
    server.cli("users", "create", "alice")
    env = {"TS_DEBUG_ALWAYS_USE_DERP": "1", "SSL_CERT_FILE": str(certs.ca)}
    nodes = {name: Node(netns, work, name, client_binaries, env=env, socks_port=port)
             for name, port in (("alpha", 1080), ("beta", None))}
    for n in nodes.values():
        n.start()
    state = {"server": server, "nodes": nodes, "work": work, "certs": certs, "site": site,
             "binaries": client_binaries, "env": env}
    try:
        key = server.cli("preauthkeys", "create", "--user", "alice", "--reusable").stdout.strip()
        state["key"] = key
        for n in nodes.values():
            n.up(server, key)
        yield state
    finally:
        for n in nodes.values():
            n.stop()
        server.stop()
        map_server.kill()
        map_server.wait()


def metrics(netns) -> dict[str, float]:
    """The server's /metrics, as name{labels} → value."""
    code = "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:9090/metrics', timeout=5).read().decode())"
    out = subprocess.run(netns.wrap([sys.executable, "-c", code]), capture_output=True, text=True, timeout=20,
                         check=True).stdout
    values = {}
    for line in out.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def home_region(node: Node) -> str | None:
    return node.status()["Self"].get("Relay") or None


def test_ping_goes_through_the_embedded_relay_over_tls(tailnet):
    alpha, beta = tailnet["nodes"]["alpha"], tailnet["nodes"]["beta"]
    for n in (alpha, beta):
        wait_until(lambda: home_region(n) == REGION["code"], 30, interval=0.5, what=f"{n.name}'s home DERP")
    beta_ip = beta.ips()[0]
    out = wait_until(lambda: (o := alpha.ping(beta_ip, count=3)) and f"via DERP({REGION['code']})" in o and o, 30,
                     interval=1, what="a pong via the relay")
    pong = [line for line in out.splitlines() if line.startswith("pong from beta")]
    assert pong and all(f"via DERP({REGION['code']})" in line for line in pong), out
    m = metrics(tailnet["nodes"]["alpha"].ns)
    assert m["trioscale_derp_clients"] == 2
    assert m["trioscale_derp_packets_relayed_total"] > 0
    assert m["trioscale_derp_workers"] == WORKERS
    # The server really serves TLS: the clients reached it only through https.
    assert tailnet["server"].url.startswith("https://")


def test_ten_megabytes_through_the_relay(tailnet, netns):
    nodes = tailnet["nodes"]
    expected = random_blob(tailnet["work"] / "site", 10 * 1024 * 1024)
    with serve_files(netns, tailnet["work"] / "site", 8999):
        before = metrics(netns)
        beta_ip = nodes["beta"].ips()[0]
        got = wait_until(lambda: socks_fetch(netns, 1080, beta_ip, 8999, "/blob", timeout=120), 120, interval=1,
                         what="a 10 MB fetch through alpha's SOCKS5 proxy")
        assert got == expected
        after = metrics(netns)
        # All of it crossed the relay (WireGuard adds its overhead on top).
        relayed = after["trioscale_derp_bytes_relayed_total"] - before["trioscale_derp_bytes_relayed_total"]
        assert relayed > 10 * 1024 * 1024, relayed


def test_netcheck_measures_the_embedded_region_by_stun(tailnet, netns):
    alpha = tailnet["nodes"]["alpha"]
    before = metrics(netns)["trioscale_stun_responses_total"]
    out = alpha.ts("netcheck", timeout=60, in_netns=True).stdout
    assert "* UDP: true" in out, out
    assert re.search(r"\* IPv4: yes, 127\.0\.0\.1:\d+", out), out
    assert f"* Nearest DERP: {REGION['name']}" in out, out
    line = re.search(rf"- +{REGION['code']}: +(\S+) +\(.*{REGION['name']}\)", out)
    assert line and re.fullmatch(r"[\d.]+(µs|ms|s)", line.group(1)), out
    assert metrics(netns)["trioscale_stun_responses_total"] > before


def test_relay_admits_only_keys_of_the_tailnet(tailnet, netns):
    server, certs = tailnet["server"], tailnet["certs"]
    gamma = Node(netns, tailnet["work"], "gamma", tailnet["binaries"], env=tailnet["env"])
    gamma.start()
    try:
        gamma.up(server, tailnet["key"])
    finally:
        gamma.stop()  # registered and unexpired, and its key free for us to use
    registered = gamma.private_node_key()
    random_key = "privkey:" + os.urandom(32).hex()

    def probe(key: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            netns.wrap([sys.executable, "-m", "tests.realclient.derpprobe", server.url, str(certs.ca), key]),
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )

    refused_before = metrics(netns)["trioscale_derp_refused_total"]
    ok = probe(registered)
    assert ok.returncode == 0 and ok.stdout.strip() == "accepted", ok.stdout + ok.stderr
    bad = probe(random_key)
    assert bad.returncode == 3 and bad.stdout.startswith("refused"), bad.stdout + bad.stderr
    ids = {n["givenName"]: int(n["id"]) for n in server.cli_json("nodes", "list")}
    server.cli("nodes", "expire", "-i", str(ids["gamma"]))
    expired = probe(registered)
    assert expired.returncode == 3 and expired.stdout.startswith("refused"), expired.stdout
    assert metrics(netns)["trioscale_derp_refused_total"] - refused_before == 2
    server.cli("nodes", "delete", "-i", str(ids["gamma"]), "--force")


def derp_map(node: Node) -> dict:
    return json.loads(node.ts("debug", "derp-map").stdout)


def test_derp_map_merges_urls_and_follows_changes(tailnet):
    alpha, beta = tailnet["nodes"]["alpha"], tailnet["nodes"]["beta"]
    regions = derp_map(alpha)["Regions"]
    assert set(regions) == {str(REGION["id"]), "960"}
    embedded = regions[str(REGION["id"])]
    assert embedded["RegionCode"] == REGION["code"] and embedded["RegionName"] == REGION["name"]
    node = embedded["Nodes"][0]
    assert (node["HostName"], node["IPv4"], node["DERPPort"], node["STUNPort"]) == ("127.0.0.1", "127.0.0.1", PORT, 3478)

    changed = dict(EXTRA_REGION, RegionID=961, RegionCode="farther", Nodes=[dict(EXTRA_REGION["Nodes"][0], Name="961a", RegionID=961)])
    (tailnet["site"] / "map.json").write_text(json.dumps({"Regions": {"960": EXTRA_REGION, "961": changed}}))
    start = time.monotonic()
    for n in (alpha, beta):
        wait_until(lambda: "961" in derp_map(n)["Regions"], 15, interval=0.5, what=f"{n.name} to get the new DERP map")
    assert time.monotonic() - start < 15
    # The map-only delta left the rest of the netmap alone: peers and the relay still work.
    assert "beta" in alpha.peers()
    out = alpha.ping(beta.ips()[0], count=3)
    assert f"via DERP({REGION['code']})" in out, out
