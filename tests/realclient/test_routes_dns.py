"""Issue 6's real-client bar: subnet routers (manual, auto-approved, HA), exit nodes, MagicDNS."""

from __future__ import annotations

import json
import signal
import time

import pytest

from .harness import Node, Server, wait_until

POLICY = """
{
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
  "autoApprovers": {"routes": {"10.98.0.0/24": ["alice@example.com"]}},
}
"""


@pytest.fixture(scope="module")
def net(netns, client_binaries, tmp_path_factory):
    work = tmp_path_factory.mktemp("routes")
    records = work / "records.json"
    records.write_text(json.dumps([{"name": "db.ts.test", "type": "A", "value": "100.64.0.250"}]))
    server = Server(netns, work / "server", overrides={
        "derp": {"server": {"enabled": True, "stun_listen_addr": "127.0.0.1:3478"}},
        "policy": {"mode": "database"},
        "node": {"routes": {"ha": {"probe_interval": "2s", "probe_timeout": "1s"}}},
        "dns": {"magic_dns": True, "base_domain": "ts.test", "extra_records_path": str(records),
                "nameservers": {"split": {"corp.example": ["10.99.0.53"]}}},
    })
    server.start()
    server.cli("users", "create", "alice", "--email", "alice@example.com")
    (work / "policy.hujson").write_text(POLICY)
    server.cli("policy", "set", "-f", str(work / "policy.hujson"))
    env = {"TS_DEBUG_USE_DERP_HTTP": "1"}
    nodes = {name: Node(netns, work, name, client_binaries, env=env) for name in ("a", "b", "r1", "r2", "e")}
    authkey = server.cli("preauthkeys", "create", "--user", "alice", "--reusable").stdout.strip()
    for n in nodes.values():
        n.start()
        n.up(server, authkey)
    yield {"server": server, "nodes": nodes, "work": work, "records": records}
    for n in nodes.values():
        n.stop()
    server.stop()


def ids(server: Server) -> dict[str, str]:
    return {n["givenName"]: n["id"] for n in server.cli_json("nodes", "list")}


def primary(node: Node, peer: str) -> list[str]:
    return node.peers().get(peer, {}).get("PrimaryRoutes") or []


def test_manual_approval_then_primary_within_two_seconds(net):
    server, nodes = net["server"], net["nodes"]
    nodes["r1"].ts("set", "--advertise-routes=10.99.0.0/24")
    wait_until(lambda: "10.99.0.0/24" in server.cli_json("nodes", "list-routes")[0]["availableRoutes"], 5,
               what="the server to learn the advertised route")
    time.sleep(1)
    assert primary(nodes["a"], "r1") == []
    assert "10.99.0.0/24" not in (nodes["a"].peers()["r1"].get("AllowedIPs") or [])
    server.cli("nodes", "approve-routes", "-i", ids(server)["r1"], "-r", "10.99.0.0/24")
    t0 = time.monotonic()
    wait_until(lambda: primary(nodes["a"], "r1") == ["10.99.0.0/24"], 2, interval=0.05, what="r1's primary route at a")
    assert time.monotonic() - t0 < 2.0
    table = server.cli("nodes", "list-routes").stdout
    assert "10.99.0.0/24" in table and "r1" in table


def test_auto_approver_needs_no_manual_step(net):
    nodes = net["nodes"]
    nodes["r2"].ts("set", "--advertise-routes=10.98.0.0/24")
    wait_until(lambda: primary(nodes["a"], "r2") == ["10.98.0.0/24"], 5, interval=0.1,
               what="the auto-approved route at a")


def test_two_routers_fail_over(net):
    server, nodes = net["server"], net["nodes"]
    ha = "10.97.0.0/24"
    for r in ("r1", "r2"):
        nodes[r].ts("set", f"--advertise-routes={'10.99.0.0/24' if r == 'r1' else '10.98.0.0/24'},{ha}")
        server.cli("nodes", "approve-routes", "-i", ids(server)[r], "-r",
                   f"{'10.99.0.0/24' if r == 'r1' else '10.98.0.0/24'},{ha}")
    wait_until(lambda: ha in primary(nodes["a"], "r1") + primary(nodes["a"], "r2"), 5, what="an HA primary")
    first = "r1" if ha in primary(nodes["a"], "r1") else "r2"
    second = "r2" if first == "r1" else "r1"
    assert ha not in primary(nodes["a"], second)
    nodes[first].stop()
    wait_until(lambda: ha in primary(nodes["a"], second), 10, interval=0.1, what=f"{second} to take over {ha}")
    assert ha not in primary(nodes["a"], first)
    nodes[first].start()  # state dir kept: it comes back as the same node
    wait_until(lambda: nodes[first].status()["BackendState"] == "Running", 30, what=f"{first} back")


def test_a_hung_primary_fails_over_by_probe(net):
    """A router that stays connected but stops answering (SIGSTOP) loses its primary routes
    within the probe interval plus timeout; it answers again after SIGCONT."""
    server, nodes = net["server"], net["nodes"]
    ha = "10.97.0.0/24"
    wait_until(lambda: ha in primary(nodes["a"], "r1") + primary(nodes["a"], "r2"), 10, what="an HA primary")
    first = "r1" if ha in primary(nodes["a"], "r1") else "r2"
    second = "r2" if first == "r1" else "r1"
    nodes[first].proc.send_signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        wait_until(lambda: ha in primary(nodes["a"], second), 10, interval=0.1,
                   what=f"{second} to take over from the hung {first}")
        assert time.monotonic() - t0 < 2 + 1 + 2  # interval + timeout + delivery
        assert "did not answer its HA probe" in server.log_text()
    finally:
        nodes[first].proc.send_signal(signal.SIGCONT)
    wait_until(lambda: "answers its HA probe again" in server.log_text(), 15, what=f"{first} to recover")
    assert ha in primary(nodes["a"], second)  # the healthy primary keeps the route


def test_exit_node(net):
    server, nodes = net["server"], net["nodes"]
    nodes["e"].ts("set", "--advertise-exit-node")
    server.cli("nodes", "approve-routes", "-i", ids(server)["e"], "-r", "0.0.0.0/0,::/0")
    wait_until(lambda: nodes["a"].peers()["e"].get("ExitNodeOption"), 5, what="e offered as an exit node")
    nodes["a"].ts("set", "--exit-node=e")
    st = wait_until(lambda: (s := nodes["a"].status()).get("ExitNodeStatus") and s, 10, what="a to use e")
    assert st["Peer"][[k for k, p in st["Peer"].items() if p["HostName"] == "e"][0]]["ExitNode"] is True
    assert st["ExitNodeStatus"]["Online"] is True
    nodes["a"].ts("set", "--exit-node=")


def dns_answer(node: Node, name: str) -> str:
    return node.ts("dns", "query", name, check=False).stdout


def test_magic_dns_names_extra_records_and_split_dns(net):
    nodes = net["nodes"]
    b_ip = nodes["b"].ips()[0]
    assert b_ip in dns_answer(nodes["a"], "b.ts.test")
    assert "100.64.0.250" in dns_answer(nodes["a"], "db.ts.test")
    netmap = nodes["a"].ts("debug", "netmap").stdout
    assert "corp.example" in netmap and "10.99.0.53" in netmap
    # the records file is watched
    net["records"].write_text(json.dumps([{"name": "db.ts.test", "type": "A", "value": "100.64.0.251"}]))
    wait_until(lambda: "100.64.0.251" in dns_answer(nodes["a"], "db.ts.test"), 5, what="the new extra record")


def test_rename_reaches_peers_within_two_seconds(net):
    server, nodes = net["server"], net["nodes"]
    b_ip = nodes["b"].ips()[0]
    server.cli("nodes", "rename", "-i", ids(server)["b"], "bravo")
    t0 = time.monotonic()
    wait_until(lambda: nodes["a"].peers()["b"]["DNSName"] == "bravo.ts.test.", 2, interval=0.05,
               what="a to see the new name")
    assert time.monotonic() - t0 < 2.0
    assert b_ip in dns_answer(nodes["a"], "bravo.ts.test")
