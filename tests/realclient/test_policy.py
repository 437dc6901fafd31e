"""Issue 5's real-client bar: the policy decides who reaches whom, and changes apply live."""

from __future__ import annotations

import time

import pytest

from .harness import REPO, Node, Server, serve_files, socks_fetch, wait_until

POLICY = """
// alice may reach bob's web port, nothing else; tag:isolated reaches and is reached by no one
{
  "tagOwners": {"tag:isolated": ["alice@example.com"]},
  "acls": [
    {"action": "accept", "src": ["alice@example.com"], "dst": ["bob@example.com:8080"]},
  ],
}
"""

POLICY_WIDER = """
{
  "tagOwners": {"tag:isolated": ["alice@example.com"]},
  "acls": [
    {"action": "accept", "src": ["alice@example.com"], "dst": ["bob@example.com:8080,8081"]},
    {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:isolated:*"]},
  ],
}
"""


@pytest.fixture(scope="module")
def net(netns, client_binaries, tmp_path_factory):
    work = tmp_path_factory.mktemp("policy")
    server = Server(netns, work / "server", overrides={
        "derp": {"server": {"enabled": True, "stun_listen_addr": "127.0.0.1:3478"}},
        "policy": {"mode": "database"},
    })
    server.start()
    for u in ("alice", "bob"):
        server.cli("users", "create", u, "--email", f"{u}@example.com")
    (work / "policy.hujson").write_text(POLICY)
    server.cli("policy", "set", "-f", str(work / "policy.hujson"))
    env = {"TS_DEBUG_USE_DERP_HTTP": "1"}
    nodes = {
        "a": Node(netns, work, "a", client_binaries, env=env, socks_port=1080),
        "b": Node(netns, work, "b", client_binaries, env=env),
        "c": Node(netns, work, "c", client_binaries, env=env),
    }
    for n in nodes.values():
        n.start()
    key = lambda *f: server.cli("preauthkeys", "create", *f).stdout.strip()
    nodes["a"].up(server, key("--user", "alice"))
    nodes["b"].up(server, key("--user", "bob"))
    nodes["c"].up(server, key("--user", "alice", "--tags", "tag:isolated"))
    with serve_files(netns, REPO / "tests", 8080), serve_files(netns, REPO / "tests", 8081):
        yield {"server": server, "nodes": nodes, "work": work, "netns": netns}
    for n in nodes.values():
        n.stop()
    server.stop()


def fetch(netns, ip: str, port: int, timeout: float) -> bool:
    return socks_fetch(netns, 1080, ip, port, "/__init__.py", timeout) is not None


def test_port_rule_is_enforced(net):
    b_ip = net["nodes"]["b"].ips()[0]
    wait_until(lambda: "b" in net["nodes"]["a"].peers(), 10, what="a to see b")
    try:
        assert wait_until(lambda: fetch(net["netns"], b_ip, 8080, 10), 30, interval=1, what="a → b:8080")
    except AssertionError:
        print(net["nodes"]["b"].ts("debug", "netmap").stdout[:6000])
        raise
    assert not fetch(net["netns"], b_ip, 8081, 5)


def test_isolated_node_is_invisible(net):
    nodes = net["nodes"]
    wait_until(lambda: "b" in nodes["a"].peers() and "a" in nodes["b"].peers(), 10, what="a and b to see each other")
    assert "c" not in nodes["a"].peers()
    assert "c" not in nodes["b"].peers()
    assert nodes["c"].peers() == {}


def test_reach_explains_the_decision(net):
    server = net["server"]
    ok = server.cli("policy", "reach", "a", "b:8080", check=False)
    assert ok.returncode == 0 and ok.stdout.startswith("allowed: acls[0]")
    no = server.cli("policy", "reach", "a", "b:8081", check=False)
    assert no.returncode == 1 and no.stdout.startswith("denied")


def test_advertised_tags_follow_tag_owners(net, client_binaries):
    """`tailscale up --advertise-tags`: applied when tagOwners allow the user, refused otherwise."""
    server, netns, work = net["server"], net["netns"], net["work"]
    key = lambda user: server.cli("preauthkeys", "create", "--user", user).stdout.strip()
    allowed = Node(netns, work, "tagged", client_binaries, env={"TS_DEBUG_USE_DERP_HTTP": "1"})
    denied = Node(netns, work, "notowner", client_binaries, env={"TS_DEBUG_USE_DERP_HTTP": "1"})
    try:
        allowed.start()
        allowed.up(server, key("alice"), "--advertise-tags=tag:isolated")
        listed = {n["givenName"]: n for n in server.cli_json("nodes", "list")}
        assert listed["tagged"]["tags"] == ["tag:isolated"]
        assert allowed.status()["Self"].get("Tags") == ["tag:isolated"]
        denied.start()
        res = denied.up(server, key("bob"), "--advertise-tags=tag:isolated", check=False)
        assert res.returncode != 0 and "not permitted" in res.stderr + res.stdout, res
        assert "notowner" not in {n["givenName"] for n in server.cli_json("nodes", "list")}
    finally:
        allowed.stop()
        denied.stop()
    server.cli("nodes", "delete", "-i", listed["tagged"]["id"])


def test_bad_policy_is_refused_and_the_old_one_stays(net):
    server, work = net["server"], net["work"]
    bad = work / "bad.hujson"
    bad.write_text('{"acls": [{"action": "accept", "src": ["nobody@nowhere"], "dst": ["*:*"]}], "bogus": 1}')
    res = server.cli("policy", "set", "-f", str(bad), check=False)
    assert res.returncode == 1 and res.stderr.strip()
    assert server.cli("policy", "get").stdout.strip() == POLICY.strip()
    check = server.cli("policy", "check", "-f", str(bad), check=False)
    assert check.returncode == 1


def test_policy_set_applies_live_without_reconnect(net):
    server, nodes, work = net["server"], net["nodes"], net["work"]
    opened_before = server.log_text().count("map stream of node")
    (work / "wider.hujson").write_text(POLICY_WIDER)
    server.cli("policy", "set", "-f", str(work / "wider.hujson"))
    t0 = time.monotonic()
    wait_until(lambda: "c" in nodes["a"].peers(), 2, interval=0.05, what="a to see c under the new policy")
    assert time.monotonic() - t0 < 2.0
    b_ip = nodes["b"].ips()[0]
    assert wait_until(lambda: fetch(net["netns"], b_ip, 8081, 5), 20, interval=0.5, what="a → b:8081 after the change")
    assert server.log_text().count("map stream of node") == opened_before, "clients reconnected"
