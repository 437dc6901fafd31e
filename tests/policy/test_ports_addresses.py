"""Ports, protocols and address sets."""

import pytest

from appliance.policy import Node, PolicyEngine, User
from appliance.policy.errors import ValidationError
from appliance.policy.ipset import TAILNET_SPACE, IPSet
from appliance.policy.parse import parse_ip_entry
from appliance.policy.ports import parse_ports


@pytest.mark.parametrize("text, want", [
    ("*", ((0, 65535),)),
    ("22", ((22, 22),)),
    ("80-443", ((80, 443),)),
    ("22,80,443-445", ((22, 22), (80, 80), (443, 445))),
])
def test_parse_ports(text, want):
    assert parse_ports(text) == want


@pytest.mark.parametrize("text, message", [
    ("ssh", 'port range "ssh": invalid first integer'),
    ("0", "port range \"0\": first port must be >0, or use '*' for wildcard"),
    ("70000", 'port range "70000": invalid first integer'),
    ("90-80", 'port range "90-80": last port must be >= first port'),
])
def test_bad_ports(text, message):
    with pytest.raises(ValidationError) as ei:
        parse_ports(text)
    assert ei.value.message == message


def test_grant_ip_entries():
    assert parse_ip_entry("*").protocols is None
    e = parse_ip_entry("tcp:443")
    assert (e.protocols, e.ports) == ((6,), ((443, 443),))
    assert parse_ip_entry("icmp:*").protocols == (1,)
    with pytest.raises(ValidationError):
        parse_ip_entry("icmp")       # a bare entry is ports only


def test_tailnet_space_skips_chromeos_range():
    assert TAILNET_SPACE.strings() == [
        "100.64.0.0-100.115.91.255", "100.115.94.0-100.127.255.255", "fd7a:115c:a1e0::/48"]


def test_ipset_spelling_and_ops():
    s = IPSet.parse("10.0.0.0/24", "10.0.1.0/24", "100.64.0.1")
    assert s.strings() == ["10.0.0.0/23", "100.64.0.1"]
    assert s.overlaps(IPSet.parse("10.0.1.7"))
    assert not s.overlaps(IPSet.parse("fd7a::1"))
    assert (s - IPSet.parse("10.0.0.0/23")).strings() == ["100.64.0.1"]


USERS = [User(1, "alice", "alice@example.com"), User(2, "bob", "bob@example.com")]
NODES = [
    Node(1, "a1", 1, (), "100.64.0.1", "fd7a:115c:a1e0::1"),
    Node(2, "a2", 1, (), "100.64.0.2", "fd7a:115c:a1e0::2"),
    Node(3, "b1", 2, (), "100.64.0.3", "fd7a:115c:a1e0::3"),
    Node(4, "srv", None, ("tag:server",), "100.64.0.4", "fd7a:115c:a1e0::4"),
    Node(5, "rtr", None, ("tag:router",), "100.64.0.5", None, ("10.1.0.0/16",), ("10.1.0.0/16",)),
]
POLICY = """{
  // HuJSON: comments and trailing commas
  "groups": {"group:eng": ["alice@example.com",],},
  "tagOwners": {"tag:server": ["group:eng"], "tag:router": ["group:eng"]},
  "hosts": {"lan": "10.1.0.0/16"},
  "acls": [
    {"action": "accept", "src": ["group:eng"], "dst": ["tag:server:22,443"]},
    {"action": "accept", "src": ["bob@"], "dst": ["lan:80"]},
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
  ],
}"""


def test_address_expansion_per_node():
    eng = PolicyEngine(POLICY, USERS, NODES)
    srv = eng.result(4).packet_filter_rules
    assert srv == [{"SrcIPs": ["100.64.0.1-100.64.0.2", "fd7a:115c:a1e0::1-fd7a:115c:a1e0::2"],
                    "DstPorts": [{"IP": ip, "Ports": {"First": p, "Last": p}}
                                 for ip in ("100.64.0.4", "fd7a:115c:a1e0::4") for p in (22, 443)]}]
    rtr = eng.result(5).packet_filter_rules
    assert rtr == [{"SrcIPs": ["100.64.0.3", "fd7a:115c:a1e0::3"],
                    "DstPorts": [{"IP": "10.1.0.0/16", "Ports": {"First": 80, "Last": 80}}]}]
    # autogroup:self: alice's two nodes reach each other, bob only himself.
    a1 = eng.result(1).packet_filter_rules
    assert a1[0]["SrcIPs"] == ["100.64.0.1-100.64.0.2", "fd7a:115c:a1e0::1-fd7a:115c:a1e0::2"]
    assert eng.result(1).peers == {2, 4}
    assert eng.result(3).peers == {5}


def test_incremental_changes_report_affected_nodes():
    eng = PolicyEngine(POLICY, USERS, NODES)
    # A new tagged server changes what the sources and the server see.
    changed = eng.upsert_node(Node(6, "srv2", None, ("tag:server",), "100.64.0.6", None))
    assert {1, 2, 6} <= changed and 3 not in changed and 5 not in changed
    # Re-sending an identical node changes nothing.
    assert eng.upsert_node(Node(6, "srv2", None, ("tag:server",), "100.64.0.6", None)) == set()
    assert 6 in eng.remove_node(6)


def test_auto_approved_routes():
    pol = '{"tagOwners": {"tag:router": []}, "autoApprovers": {"routes": {"10.0.0.0/8": ["tag:router"]}, "exitNode": ["tag:router"]}}'
    node = Node(1, "r", None, ("tag:router",), "100.64.0.9", None, ("10.2.0.0/16", "192.168.0.0/24", "0.0.0.0/0"))
    eng = PolicyEngine(pol, [], [node])
    assert eng.auto_approved_routes(1) == ("10.2.0.0/16", "0.0.0.0/0")


def test_reach_helper():
    from appliance.policy.reach import reach
    eng = PolicyEngine(POLICY, USERS, NODES)
    ok, why = reach(eng, NODES[0], NODES[3], 22)
    assert ok and why.startswith("acls[0]")
    ok, _ = reach(eng, NODES[2], NODES[3], 22)
    assert not ok


def test_failing_policy_test_refuses_policy():
    from appliance.policy import PolicyTestFailure
    eng = PolicyEngine(None, USERS, NODES)
    bad = POLICY.rstrip()[:-1] + '"tests": [{"src": "bob@example.com", "accept": ["tag:server:22"]}]}'
    with pytest.raises(PolicyTestFailure) as ei:
        eng.set_policy(bad)
    assert ei.value.message == "test(s) failed" and ei.value.failures
