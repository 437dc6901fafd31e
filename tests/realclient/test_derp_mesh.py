"""Two DERP servers meshed as one region carry traffic between real clients attached to
different servers.

The region lists two nodes: trioscale's embedded relay first (999a, on 10.255.255.1) and a
standalone `trioscale derp` second (999b, on 127.0.0.1); both share a mesh key and dial each
other. A Tailscale client uses the first node of its home region it can open a TCP connection
to (derphttp's dialRegion), so to put the two clients on different servers, beta is given an
HTTPS proxy that does not exist: derphttp sends its dial to 10.255.255.1 through it and fails,
then dials 127.0.0.1 directly (Go never proxies loopback addresses) and lands on the second
server. Alpha has no proxy and lands on the first. Control traffic goes to 127.0.0.1 for both.

The embedded relay runs in one process (its TLS on the relay's TLSStream, control traffic
included) and the second server on two worker processes (issue 14): each of them links to the
embedded relay, and the embedded relay's one link lands on one of them, which passes packets
for beta on to the other worker if beta is there. tests/realclient/test_derp.py runs the
embedded relay itself on workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import trustme

from .harness import REPO, Node, Server, make_certs, random_blob, serve_files, socks_fetch, wait_until

PORT, SECOND_PORT = 8443, 8445
SECOND_WORKERS = 2
OUTER_IP = "10.255.255.1"  # the namespace's veth address (harness.Netns)
CODE = "mesh"


@pytest.fixture(scope="module")
def mesh(netns, client_binaries, tmp_path_factory):
    work = tmp_path_factory.mktemp("mesh")
    ca = trustme.CA()
    first_certs = make_certs(work / "tls1", "127.0.0.1", OUTER_IP, ca=ca)
    second_certs = make_certs(work / "tls2", "127.0.0.1", ca=ca)
    mesh_key = work / "mesh.key"
    mesh_key.write_text(os.urandom(32).hex() + "\n")
    mesh_key.chmod(0o600)
    derp_map = work / "derpmap.yaml"
    derp_map.write_text(json.dumps({"Regions": {"999": {
        "RegionID": 999, "RegionCode": CODE, "RegionName": "Meshed Pair",
        "Nodes": [
            {"Name": "999a", "RegionID": 999, "HostName": OUTER_IP, "IPv4": OUTER_IP, "IPv6": "none",
             "DERPPort": PORT, "STUNPort": 3478},
            {"Name": "999b", "RegionID": 999, "HostName": "127.0.0.1", "IPv4": "127.0.0.1", "IPv6": "none",
             "DERPPort": SECOND_PORT, "STUNPort": -1},
        ],
    }}}))
    second_log = open(work / "second-derp.log", "ab")
    second = subprocess.Popen(
        netns.wrap([sys.executable, "-m", "appliance", "derp", "-a", f"127.0.0.1:{SECOND_PORT}",
                    "--cert", str(second_certs.cert), "--key", str(second_certs.key),
                    "--key-file", str(work / "second-derp.key"), "--no-stun",
                    "--mesh-key-file", str(mesh_key), "--mesh-with", f"https://{OUTER_IP}:{PORT}",
                    "--mesh-ca", str(second_certs.ca), "--workers", str(SECOND_WORKERS),
                    "--log-level", "DEBUG"]),
        cwd=REPO, stdout=second_log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    server = Server(netns, work / "server", port=PORT, tls=first_certs,
                    env={"SSL_CERT_FILE": str(first_certs.ca)}, overrides={
        "listen_addr": f"0.0.0.0:{PORT}",
        "metrics_listen_addr": "127.0.0.1:9090",
        "derp": {
            "server": {
                "enabled": True, "stun_listen_addr": "0.0.0.0:3478", "region_id": 999,
                "automatically_add_embedded_derp_region": False,
                "mesh_key_path": str(mesh_key), "mesh_with": [f"https://127.0.0.1:{SECOND_PORT}"],
                "workers": 1,
            },
            "paths": [str(derp_map)],
        },
    })
    nodes: dict[str, Node] = {}
    try:
        server.start()
        server.cli("users", "create", "alice")
        base = {"TS_DEBUG_ALWAYS_USE_DERP": "1", "SSL_CERT_FILE": str(first_certs.ca)}
        nodes["alpha"] = Node(netns, work, "alpha", client_binaries, env=base, socks_port=1080)
        nodes["beta"] = Node(netns, work, "beta", client_binaries,
                             env={**base, "HTTPS_PROXY": "http://127.0.0.1:9"})  # nothing listens there
        for n in nodes.values():
            n.start()
        key = server.cli("preauthkeys", "create", "--user", "alice", "--reusable").stdout.strip()
        for n in nodes.values():
            n.up(server, key)
        yield {"server": server, "nodes": nodes, "work": work, "second_log": work / "second-derp.log"}
    finally:
        for n in nodes.values():
            n.stop()
        server.stop()
        second.terminate()
        try:
            second.wait(10)
        except subprocess.TimeoutExpired:
            second.kill()
            second.wait()


def metrics(netns) -> dict[str, float]:
    code = "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:9090/metrics', timeout=5).read().decode())"
    out = subprocess.run(netns.wrap([sys.executable, "-c", code]), capture_output=True, text=True, timeout=20,
                         check=True).stdout
    return {name: float(v) for name, _, v in (l.rpartition(" ") for l in out.splitlines() if l and l[0] != "#")}


def test_clients_on_different_servers_of_one_region_reach_each_other(mesh, netns):
    alpha, beta = mesh["nodes"]["alpha"], mesh["nodes"]["beta"]
    for n in (alpha, beta):
        wait_until(lambda: n.status()["Self"].get("Relay") == CODE, 30, interval=0.5, what=f"{n.name}'s home DERP")

    # Where each one is attached: trioscale holds alpha only, and knows beta through the mesh
    # (its link to the second server; each of the second server's workers links to it).
    def attached():
        m = metrics(netns)
        return m if m["trioscale_derp_clients"] == 1 and m["trioscale_derp_mesh_links_connected"] == 1 \
            and m["trioscale_derp_mesh_peers_inbound"] == SECOND_WORKERS \
            and m["trioscale_derp_remote_keys"] >= 1 else None

    wait_until(attached, 30, interval=0.5, what="alpha on the first server, beta on the second")
    short = {n.name: n.status()["Self"]["PublicKey"].removeprefix("nodekey:")[:8] for n in (alpha, beta)}
    first_log, second_log = mesh["server"].log_text(), mesh["second_log"].read_text(errors="replace")
    assert f"client {short['alpha']} connected" in first_log
    assert f"client {short['beta']} connected" not in first_log
    assert f"client {short['beta']} connected" in second_log
    assert f"client {short['alpha']} connected" not in second_log

    before = metrics(netns)
    for src, dst in ((alpha, beta), (beta, alpha)):
        ip = dst.ips()[0]
        out = wait_until(lambda: (o := src.ping(ip, count=3)) and f"via DERP({CODE})" in o and o, 30, interval=1,
                         what=f"{src.name} → {dst.name} pong via the relay")
        assert f"pong from {dst.name}" in out, out

    expected = random_blob(mesh["work"] / "site", 2 * 1024 * 1024)
    with serve_files(netns, mesh["work"] / "site", 8999):
        got = wait_until(lambda: socks_fetch(netns, 1080, beta.ips()[0], 8999, "/blob"), 60, interval=1,
                         what="a fetch from alpha to beta across the mesh")
        assert got == expected

    after = metrics(netns)
    # Packets to beta left through the mesh link; packets from beta came in through it.
    assert after["trioscale_derp_packets_forwarded_out_total"] - before["trioscale_derp_packets_forwarded_out_total"] > 100
    assert after["trioscale_derp_packets_forwarded_in_total"] - before["trioscale_derp_packets_forwarded_in_total"] > 100
    assert after["trioscale_derp_clients"] == 1
