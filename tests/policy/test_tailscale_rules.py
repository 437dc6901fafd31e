"""Tailscale's validation and resolution rules that the captured corpus does not reach, as
cases of our own in the corpus format (tests/policy/corpus.py): refusals in Tailscale's
reserved namespaces and address ranges, tests that cannot pass, rules whose sources name
nobody, SSH rules mixing tagged sources with localpart users, and the role autogroups.

Each case says where its rule comes from. Expected outputs are written out by hand; only
the nodes a case lists are compared (all four results of each: packet filter, SSH policy,
policy capabilities, peers)."""

from __future__ import annotations

import json

import pytest

from appliance.policy import Node, PolicyEngine, User
from appliance.policy.evaluate import evaluate

from .corpus import compare

USERS = [
    {"id": 1, "name": "odin", "email": "odin@example.com", "role": "owner"},
    {"id": 2, "name": "thor", "email": "thor@example.org", "role": "admin"},
    {"id": 3, "name": "freya", "email": "freya@example.com", "role": "network-admin"},
    {"id": 4, "name": "loki", "email": "loki@example.com"},
]
IPS = {
    "odin-pc": ("100.64.0.1", "fd7a:115c:a1e0::1"),
    "thor-pc": ("100.64.0.2", "fd7a:115c:a1e0::2"),
    "freya-pc": ("100.64.0.3", "fd7a:115c:a1e0::3"),
    "loki-pc": ("100.64.0.4", "fd7a:115c:a1e0::4"),
    "server": ("100.64.0.10", "fd7a:115c:a1e0::a"),
    "client": ("100.64.0.11", "fd7a:115c:a1e0::b"),
}
OWNER = {"odin-pc": "odin", "thor-pc": "thor", "freya-pc": "freya", "loki-pc": "loki"}
TAGS = {"server": ["tag:server"], "client": ["tag:client"]}
TOPOLOGY = {
    "users": USERS,
    "nodes": {h: {"hostname": h, "ipv4": v4, "ipv6": v6, "tags": TAGS.get(h, []),
                  "user": OWNER.get(h), "routable_ips": [], "approved_routes": []}
              for h, (v4, v6) in IPS.items()},
}
TAG_OWNERS = {"tag:server": ["autogroup:admin"], "tag:client": ["autogroup:admin"]}
ACCEPT = {"accept": True, "allowAgentForwarding": True, "allowLocalPortForwarding": True,
          "allowRemotePortForwarding": True}


def ips(*hosts: str) -> list[str]:
    return [ip for h in hosts for ip in IPS[h]]


def host_prefixes(host: str) -> list[str]:
    v4, v6 = IPS[host]
    return [f"{v4}/32", f"{v6}/128"]


def principals(*hosts: str) -> list[dict]:
    return [{"nodeIP": ip} for ip in ips(*hosts)]


def node(rules=(), ssh=None, caps=None, peers=()) -> dict:
    return {"packet_filter_rules": list(rules), "ssh_policy": ssh or {"rules": []},
            "self_cap_map": caps or {}, "peers": [{"name": p} for p in peers]}


def case(id_: str, why: str, policy: dict, *, error: str | None = None, nodes=None) -> dict:
    return {"id": id_, "category": id_.split("-", 1)[0], "description": why,
            "policy": json.dumps(policy), "expect_error": error is not None,
            "api_response_body": {"message": error} if error else None,
            "topology": TOPOLOGY, "nodes": nodes or {}}


def refused(id_: str, why: str, policy: dict, message: str) -> dict:
    return case(id_, why, dict({"tagOwners": TAG_OWNERS}, **policy), error=message)


def accepted(id_: str, why: str, policy: dict, nodes=None) -> dict:
    return case(id_, why, dict({"tagOwners": TAG_OWNERS}, **policy), nodes=nodes)


RESERVED = "capability name must not be in the tailscale.com domain"
FORM = "capability name must have the form {domain}/{path}"
FAILED = "test(s) failed"
NO_ACCESS = {"grants": []}   # a filter that allows nothing: no peers, no rules


def _app_grant(cap: str) -> dict:
    return {"grants": [{"src": ["autogroup:member"], "dst": ["tag:server"], "app": {cap: [{}]}}]}


CASES = [
    # --- capability names in Tailscale's namespace (tailcfg.PeerCapability*, issue
    # tailscale#16312, Headscale's validateCapabilityName) ---
    refused("grant-reserved-companion-cap", "drive-sharer is added by the server, never granted",
            _app_grant("tailscale.com/cap/drive-sharer"), RESERVED),
    refused("grant-reserved-unknown-cap", "an unknown cap in tailscale.com",
            _app_grant("tailscale.com/cap/nope"), RESERVED),
    refused("grant-reserved-url-form", "URL-form caps are node caps, not grantable",
            _app_grant("https://tailscale.com/cap/file-send"), FORM),
    accepted("grant-grantable-tailscale-cap", "setec's cap is on the grantable list",
             _app_grant("tailscale.com/cap/secrets"), nodes={
                 "server": node([{"SrcIPs": ips("odin-pc", "thor-pc", "freya-pc", "loki-pc"),
                                  "CapGrant": [{"Dsts": host_prefixes("server"),
                                                "CapMap": {"tailscale.com/cap/secrets": [{}]}}]}],
                                peers=["odin-pc", "thor-pc", "freya-pc", "loki-pc"]),
                 "client": node(),
             }),
    refused("nodeattrs-reserved-app-cap", "nodeAttrs app: only app connectors in tailscale.com",
            {"nodeAttrs": [{"target": ["*"], "app": {"tailscale.com/cap/drive": [{}]}}]}, RESERVED),
    accepted("nodeattrs-app-connectors", "the app connector cap is a node cap Tailscale documents",
             dict(NO_ACCESS, nodeAttrs=[{"target": ["tag:server"], "app": {
                 "tailscale.com/app-connectors": [{"name": "ex", "connectors": ["tag:server"],
                                                   "domains": ["example.com"]}]}}]),
             nodes={"server": node(caps={"tailscale.com/app-connectors": [
                 {"name": "ex", "connectors": ["tag:server"], "domains": ["example.com"]}]}),
                    "client": node()}),
    # --- reserved address ranges: ipPool (kb/1304; Headscale's validateNodeAttrIPPool) ---
    refused("nodeattrs-ippool-quad100", "100.100.100.0/24 is MagicDNS",
            {"nodeAttrs": [{"target": ["autogroup:member"], "ipPool": ["100.100.100.0/24"]}]},
            'ipPool "100.100.100.0/24": nodeAttrs ipPool must not overlap reserved Tailscale '
            "range 100.100.100.0/24"),
    refused("nodeattrs-ippool-chromeos", "100.115.92.0/23 is kept back",
            {"nodeAttrs": [{"target": ["autogroup:member"], "ipPool": ["100.115.0.0/16"]}]},
            'ipPool "100.115.0.0/16": nodeAttrs ipPool must not overlap reserved Tailscale '
            "range 100.115.92.0/23"),
    refused("nodeattrs-ippool-outside-cgnat", "pools come from 100.64.0.0/10",
            {"nodeAttrs": [{"target": ["autogroup:member"], "ipPool": ["10.0.0.0/8"]}]},
            'ipPool "10.0.0.0/8": nodeAttrs ipPool must be within 100.64.0.0/10'),
    refused("nodeattrs-ippool-whole-cgnat", "the whole range holds the reserved parts",
            {"nodeAttrs": [{"target": ["autogroup:member"], "ipPool": ["100.64.0.0/10"]}]},
            'ipPool "100.64.0.0/10": nodeAttrs ipPool must not overlap reserved Tailscale '
            "range 100.100.100.0/24"),
    accepted("nodeattrs-ippool-ok", "a pool inside CGNAT clear of reserved ranges",
             dict(NO_ACCESS, nodeAttrs=[{"target": ["autogroup:member"], "ipPool": ["100.81.0.0/16"]}]),
             nodes={"odin-pc": node()}),
    # --- autogroups in places they cannot be (kb/1396) ---
    refused("acl-internet-src", "the internet never opens a connection",
            {"acls": [{"action": "accept", "src": ["autogroup:internet"], "dst": ["*:*"]}]},
            "autogroup:internet can only be used in ACL destinations"),
    refused("ssh-internet-dst", "SSH destinations are nodes",
            {"ssh": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:internet"],
                      "users": ["root"]}]},
            "autogroup:internet can only be used in ACL destinations"),
    refused("grant-nonroot-src", "autogroup:nonroot names SSH login users",
            {"grants": [{"src": ["autogroup:nonroot"], "dst": ["*"], "ip": ["*"]}]},
            '"autogroup:nonroot" can only be used in the users of an SSH rule'),
    # --- checkPeriod read as Go's time.ParseDuration reads it ---
    refused("ssh-checkperiod-days", "Go durations have no days",
            {"ssh": [{"action": "check", "src": ["autogroup:member"], "dst": ["autogroup:self"],
                      "users": ["root"], "checkPeriod": "1d"}]},
            'time: unknown unit "d" in duration "1d"'),
    refused("ssh-checkperiod-garbage", "not a duration",
            {"ssh": [{"action": "check", "src": ["autogroup:member"], "dst": ["autogroup:self"],
                      "users": ["root"], "checkPeriod": "soon"}]},
            'time: invalid duration "soon"'),
    # --- tests that cannot pass (Headscale's validateTests / validateSSHTestDestination) ---
    accepted("policytest-default-proto-any", "no proto: a udp-only rule satisfies the test",
             {"grants": [{"src": ["autogroup:member"], "dst": ["tag:server"], "ip": ["udp:53"]}],
              "tests": [{"src": "loki@example.com", "accept": ["tag:server:53"]},
                        {"src": "autogroup:member", "proto": "udp", "accept": ["server:53"]},
                        {"src": "autogroup:admin", "proto": "17", "accept": ["100.64.0.10:53"]}],
              "hosts": {"server": "100.64.0.10"}}),
    refused("policytest-proto-portless", "GRE has no ports to test",
            {"grants": [{"src": ["*"], "dst": ["*"], "ip": ["*"]}],
             "tests": [{"src": "loki@example.com", "proto": "gre", "accept": ["tag:server:22"]}]},
            FAILED),
    refused("policytest-dst-prefix32", "a dst written as a prefix is a range, even a /32",
            {"grants": [{"src": ["*"], "dst": ["*"], "ip": ["*"]}],
             "tests": [{"src": "loki@example.com", "accept": ["100.64.0.10/32:22"]}]},
            FAILED),
    refused("sshtest-dst-host-range", "a hosts entry naming a /24 is no SSH server",
            {"hosts": {"lan": "10.0.0.0/24"},
             "ssh": [{"action": "accept", "src": ["autogroup:member"], "dst": ["tag:server"], "users": ["root"]}],
             "sshTests": [{"src": "loki@example.com", "dst": ["lan"], "accept": ["root"]}]},
            'SSH tests dst contains disallowed element "lan"'),
    refused("sshtest-dst-bare-ipv6", "an IPv6 literal names no SSH server for sshTests",
            {"ssh": [{"action": "accept", "src": ["autogroup:member"], "dst": ["tag:server"], "users": ["root"]}],
             "sshTests": [{"src": "loki@example.com", "dst": ["fd7a:115c:a1e0::a"], "accept": ["root"]}]},
            FAILED),
    accepted("sshtest-dst-ipv4-self-member", "an IPv4 literal, autogroup:self and autogroup:member",
             {"ssh": [{"action": "accept", "src": ["autogroup:member"], "dst": ["tag:server"], "users": ["root"]},
                      {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["root"]}],
              "grants": [],
              "sshTests": [{"src": "loki@example.com", "dst": ["100.64.0.10/32", "100.64.0.10", "autogroup:self"],
                            "accept": ["root"]},
                           {"src": "tag:client", "dst": ["autogroup:member"], "deny": ["root"]}]}),
    # --- sources that name nobody (Headscale's compileOtherDests) ---
    accepted("grant-app-src-nobody", "an app grant from nobody still reaches its destination; "
             "a network grant from nobody gives nothing",
             {"groups": {"group:empty": []},
              "grants": [{"src": ["group:empty"], "dst": ["tag:server"], "app": {"example.com/cap/x": [{}]}},
                         {"src": ["group:empty"], "dst": ["tag:server"], "ip": ["*"]},
                         {"src": ["group:empty"], "dst": ["tag:client"], "app": {"tailscale.com/cap/drive": [{}]}}]},
             nodes={
                 "server": node([{"SrcIPs": [], "CapGrant": [{"Dsts": host_prefixes("server"),
                                                              "CapMap": {"example.com/cap/x": [{}]}}]}]),
                 "client": node([{"SrcIPs": [], "CapGrant": [{"Dsts": host_prefixes("client"),
                                                              "CapMap": {"tailscale.com/cap/drive": [{}]}}]}]),
                 "loki-pc": node(),
             }),
    accepted("grant-app-src-literally-empty", "src: [] gives nothing, app or not",
             {"grants": [{"src": [], "dst": ["tag:server"], "app": {"example.com/cap/x": [{}]}}]},
             nodes={"server": node()}),
    # --- SSH: tagged sources with localpart users (Headscale's compileSSHPolicy) ---
    accepted("ssh-localpart-tagged-sources", "users by id each followed by their local part, "
             "then the tagged devices; a source outside the destinations gets its own rule",
             dict(NO_ACCESS, ssh=[{"action": "accept", "src": ["tag:client", "autogroup:member"],
                                   "dst": ["tag:server"], "users": ["localpart:*@example.com"]}]),
             nodes={
                 "server": node(ssh={"rules": [
                     {"principals": principals("odin-pc"), "sshUsers": {"root": ""}, "action": ACCEPT},
                     {"principals": principals("odin-pc"), "sshUsers": {"odin": "odin"}, "action": ACCEPT},
                     {"principals": principals("thor-pc"), "sshUsers": {"root": ""}, "action": ACCEPT},
                     {"principals": principals("freya-pc"), "sshUsers": {"root": ""}, "action": ACCEPT},
                     {"principals": principals("freya-pc"), "sshUsers": {"freya": "freya"}, "action": ACCEPT},
                     {"principals": principals("loki-pc"), "sshUsers": {"root": ""}, "action": ACCEPT},
                     {"principals": principals("loki-pc"), "sshUsers": {"loki": "loki"}, "action": ACCEPT},
                     {"principals": principals("client"), "sshUsers": {"root": ""}, "action": ACCEPT},
                 ]}),
                 "client": node(ssh={"rules": [
                     {"principals": principals("client"), "sshUsers": {"root": ""}, "action": ACCEPT}]}),
                 "odin-pc": node(ssh={"rules": [
                     {"principals": principals("odin-pc"), "sshUsers": {"root": ""}, "action": ACCEPT},
                     {"principals": principals("odin-pc"), "sshUsers": {"odin": "odin"}, "action": ACCEPT}]}),
                 "thor-pc": node(ssh={"rules": [
                     {"principals": principals("thor-pc"), "sshUsers": {"root": ""}, "action": ACCEPT}]}),
             }),
    accepted("ssh-tagged-sources-no-localpart", "without localpart: one rule from every source; "
             "sources outside the destinations get nothing",
             dict(NO_ACCESS, ssh=[{"action": "accept", "src": ["autogroup:tagged", "loki@example.com"],
                                   "dst": ["tag:server"], "users": ["root"]}]),
             nodes={
                 "server": node(ssh={"rules": [{"principals": principals("loki-pc", "server", "client"),
                                                "sshUsers": {"root": "root"}, "action": ACCEPT}]}),
                 "client": node(),
                 "loki-pc": node(),
             }),
    accepted("ssh-self-and-tag-dst", "autogroup:self and another destination: two rules",
             dict(NO_ACCESS, ssh=[{"action": "accept", "src": ["autogroup:member"],
                                   "dst": ["autogroup:self", "loki@example.com"], "users": ["root"]}]),
             nodes={
                 "loki-pc": node(ssh={"rules": [
                     {"principals": principals("loki-pc"), "sshUsers": {"root": "root"}, "action": ACCEPT},
                     {"principals": principals("odin-pc", "thor-pc", "freya-pc", "loki-pc"),
                      "sshUsers": {"root": "root"}, "action": ACCEPT}]}),
                 "thor-pc": node(ssh={"rules": [
                     {"principals": principals("thor-pc"), "sshUsers": {"root": "root"}, "action": ACCEPT}]}),
             }),
    # --- role autogroups (kb/1396: "all members with the X role"; the Owner counts as Admin) ---
    accepted("nodeattrs-role-targets", "each role autogroup targets its users' devices",
             dict(NO_ACCESS, nodeAttrs=[
                 {"target": ["autogroup:admin"], "attr": ["admins"]},
                 {"target": ["autogroup:owner"], "attr": ["owner"]},
                 {"target": ["autogroup:network-admin"], "attr": ["netadmin"]},
                 {"target": ["autogroup:auditor", "autogroup:it-admin", "autogroup:billing-admin"],
                  "attr": ["nobody"]}]),
             nodes={
                 "odin-pc": node(caps={"admins": None, "owner": None}),
                 "thor-pc": node(caps={"admins": None}),
                 "freya-pc": node(caps={"netadmin": None}),
                 "loki-pc": node(),
                 "server": node(),
             }),
    accepted("grant-role-src", "a role autogroup as source: its users' devices",
             {"grants": [{"src": ["autogroup:admin"], "dst": ["tag:server"], "ip": ["tcp:22"]},
                         {"src": ["autogroup:auditor"], "dst": ["tag:server"], "ip": ["tcp:80"]}]},
             nodes={
                 "server": node([{"SrcIPs": ips("odin-pc", "thor-pc"), "IPProto": [6],
                                  "DstPorts": [{"IP": ip, "Ports": {"First": 22, "Last": 22}}
                                               for ip in IPS["server"]]}],
                                peers=["odin-pc", "thor-pc"]),
                 "thor-pc": node(peers=["server"]),
                 "loki-pc": node(),
             }),
]


@pytest.mark.parametrize("c", [pytest.param(c, id=c["id"]) for c in CASES])
def test_case(c):
    got = evaluate(c["policy"], c["topology"])
    diffs = compare(c, got)
    assert not diffs, "\n".join(diffs)


def test_cases_are_distinct():
    assert len({c["id"] for c in CASES}) == len(CASES)


def _engine(policy: str, users) -> PolicyEngine:
    e = PolicyEngine(None, users, [Node(1, "n1", 1, (), "100.64.0.1", None)])
    e.set_policy(policy)
    return e


def test_role_autogroups_own_tags():
    policy = json.dumps({"tagOwners": {"tag:a": ["autogroup:admin"], "tag:n": ["autogroup:network-admin"],
                                       "tag:o": ["autogroup:owner"]}})
    users = [User(1, "odin", "odin@example.com", role="owner"),
             User(2, "thor", "thor@example.org", role="Admin"),
             User(3, "freya", "freya@example.com", role="network_admin"),
             User(4, "loki", "loki@example.com")]
    e = _engine(policy, users)
    assert [e.owns_tag(u, "tag:a") for u in (1, 2, 3, 4)] == [True, True, False, False]
    assert [e.owns_tag(u, "tag:n") for u in (1, 2, 3, 4)] == [False, False, True, False]
    assert [e.owns_tag(u, "tag:o") for u in (1, 2, 3, 4)] == [True, False, False, False]


def test_first_user_owns_a_tailnet_without_roles():
    """A user store that knows no roles yet: the first user created the tailnet and owns it."""
    policy = json.dumps({"tagOwners": {"tag:o": ["autogroup:owner"], "tag:a": ["autogroup:admin"]}})
    e = _engine(policy, [User(2, "b", "b@example.com"), User(1, "a", "a@example.com")])
    assert e.owns_tag(1, "tag:o") and e.owns_tag(1, "tag:a")
    assert not e.owns_tag(2, "tag:o") and not e.owns_tag(2, "tag:a")
    # Once the store names an owner, the first user is an ordinary member.
    e.upsert_user(User(2, "b", "b@example.com", role="owner"))
    assert e.owns_tag(2, "tag:o") and not e.owns_tag(1, "tag:o")


def test_role_change_recompiles_affected_nodes():
    policy = json.dumps({"grants": [{"src": ["autogroup:auditor"], "dst": ["*"], "ip": ["*"]}]})
    users = [User(1, "a", "a@example.com"), User(2, "b", "b@example.com")]
    nodes = [Node(1, "a1", 1, (), "100.64.0.1", None), Node(2, "b1", 2, (), "100.64.0.2", None)]
    e = PolicyEngine(policy, users, nodes)
    assert e.result(1).packet_filter_rules == []
    changed = e.upsert_user(User(2, "b", "b@example.com", role="auditor"))
    assert changed == {1, 2}
    assert e.result(1).packet_filter_rules[0]["SrcIPs"] == ["100.64.0.2"]
