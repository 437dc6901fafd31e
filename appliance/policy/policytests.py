"""The policy's own "tests" and "sshTests": assertions checked on save.

A failing assertion refuses the whole policy, with Tailscale's message
"test(s) failed"; the per-test reasons go in PolicyTestFailure.failures.
"""

from __future__ import annotations

import ipaddress

from .aliases import parse_alias, split_dst_port
from .compile import CompiledRule, FilterCompiler
from .errors import PolicyTestFailure, ValidationError
from .ipset import IPSet
from .model import Node
from .ports import parse_proto
from .ssh import ssh_policy_for

FAILED = "test(s) failed"
# A test without a proto passes when any protocol a rule allows by default would carry it
# (tailcfg.FilterRule.IPProto's default set; Headscale's test evaluator reads the captures so).
DEFAULT_PROTOS = (6, 17, 1, 58)
# A test is one connection attempt to one port: only protocols with ports can be tested
# (Headscale: "test protocol must be tcp, udp, sctp, or empty"; names or IANA numbers).
TESTABLE_PROTOS = {6, 17, 132}
# Autogroups that name a fixed set of nodes, and so may be a test's source (or an SSH
# test's destination): members, tagged devices and the role autogroups.
NODE_AUTOGROUPS = {"autogroup:member", "autogroup:tagged", "autogroup:owner", "autogroup:admin",
                   "autogroup:network-admin", "autogroup:it-admin", "autogroup:billing-admin",
                   "autogroup:auditor", "autogroup:shared"}


def _endpoint_addrs(fc: FilterCompiler, text: str, *, autogroups: bool = False,
                    ipv6_literals: bool = True) -> tuple[list[str], list[Node]] | None:
    """Addresses (and nodes) a test endpoint names; None if Tailscale would not accept it
    as one ("*", a prefix wider than one address, a name resolving to no node, an
    autogroup unless ``autogroups`` allows those that name nodes)."""
    try:
        a = parse_alias(text.strip(), fc.policy.hosts)
    except ValidationError:
        return None
    if a.kind == "wildcard" or (a.kind == "autogroup" and not (autogroups and a.value in NODE_AUTOGROUPS)):
        return None
    if a.kind in ("prefix", "host"):
        value = a.value if a.kind == "prefix" else fc.policy.hosts[a.value]
        net = ipaddress.ip_network(value, strict=False)
        if net.num_addresses != 1 or (net.version == 6 and not ipv6_literals):
            return None
        ip = str(net.network_address)
        return [ip], [n for n in fc.tailnet.nodes if ip in n.ips]
    if a.kind == "tag" and a.value not in fc.policy.tag_owners:
        return None
    if a.kind == "group" and a.value not in fc.policy.groups and a.value not in fc.r.idp_groups:
        return None
    nodes = fc.r.alias_nodes(a) or []
    if not nodes:
        return None
    return [ip for n in nodes for ip in n.ips], nodes


def _rule_allows(fc: FilterCompiler, cr: CompiledRule, src_ip: str, src_node: Node | None,
                 dst_ip: str, dst_node: Node | None, port: int, proto: int | None) -> bool:
    """Does one rule allow the connection? ``proto`` None: any of the default protocols."""
    if cr.app is not None or cr.via:
        return False
    if cr.protocols is not None:
        wanted = DEFAULT_PROTOS if proto is None else (proto,)
        if not any(p in cr.protocols for p in wanted):
            return False
    src = IPSet.parse(src_ip)
    dst = IPSet.parse(dst_ip)
    for t, ports in cr.dsts:
        if not any(lo <= port <= hi for lo, hi in ports):
            continue
        if t.kind == "self":
            if (src_node and dst_node and not dst_node.is_tagged and not src_node.is_tagged
                    and src_node.user_id == dst_node.user_id and src_node.id in cr.self_srcs):
                return True
            continue
        if not (cr.src_all or cr.src_set.overlaps(src)):
            continue
        if t.kind == "wildcard":
            return True
        if t.kind == "nodes" and dst_node is not None and dst_node.id in t.node_ids:
            return True
        if t.kind == "prefix" and t.prefix.overlaps(dst):
            return True
    return False


def allowed(fc: FilterCompiler, src_ip: str, src_node, dst_ip: str, dst_node, port: int,
            proto: int | None = 6) -> CompiledRule | None:
    """The first rule allowing the connection, or None."""
    for cr in fc.rules:
        if _rule_allows(fc, cr, src_ip, src_node, dst_ip, dst_node, port, proto):
            return cr
    return None


def _family(ip: str) -> int:
    return ipaddress.ip_address(ip).version


def run_acl_tests(fc: FilterCompiler) -> list[str]:
    failures: list[str] = []
    for i, t in enumerate(fc.policy.tests):
        src = _endpoint_addrs(fc, t.src, autogroups=True) if t.src else None
        if src is None:
            failures.append(f"tests[{i}]: invalid src {t.src!r}")
            continue
        if not t.accept and not t.deny:
            failures.append(f"tests[{i}]: no accept or deny")
            continue
        proto = None
        if t.proto:
            try:
                protos = parse_proto(str(t.proto))
            except ValidationError:
                failures.append(f"tests[{i}]: bad proto {t.proto!r}")
                continue
            proto = protos[0]
            if proto not in TESTABLE_PROTOS:
                failures.append(f"tests[{i}]: proto {t.proto!r} has no ports to test")
                continue
        src_ips, src_nodes = src
        node_of = {ip: n for n in src_nodes for ip in n.ips}
        for want, dsts in ((True, t.accept), (False, t.deny)):
            for d in dsts:
                try:
                    host, port_s = split_dst_port(d)
                except ValidationError:
                    failures.append(f"tests[{i}]: bad dst {d!r}")
                    continue
                if not port_s.isdigit() or not 0 < int(port_s) <= 65535:
                    failures.append(f"tests[{i}]: bad port in {d!r}")
                    continue
                if "/" in host:
                    # One host, not a range, even when the prefix holds one address.
                    failures.append(f"tests[{i}]: dst {d!r} is a range, not a host")
                    continue
                dst = _endpoint_addrs(fc, host)
                if dst is None:
                    failures.append(f"tests[{i}]: invalid dst {d!r}")
                    continue
                dst_ips, dst_nodes = dst
                dnode_of = {ip: n for n in dst_nodes for ip in n.ips}
                results = [allowed(fc, s, node_of.get(s), dd, dnode_of.get(dd), int(port_s), proto) is not None
                           for s in src_ips for dd in dst_ips if _family(s) == _family(dd)]
                ok = bool(results) and (all(results) if want else not any(results))
                if not ok:
                    verb = "accept" if want else "deny"
                    failures.append(f"tests[{i}]: {t.src} -> {d}: expected {verb}")
    return failures


def _check_ssh_test_dst(fc: FilterCompiler, d: str) -> None:
    """An sshTests dst names SSH servers: a tag, user, group, node-naming autogroup, host or
    single address. Tailscale refuses the policy outright (its words) for anything else."""
    try:
        a = parse_alias(d.strip(), fc.policy.hosts)
    except ValidationError:
        a = None
    if a is None or (a.kind == "tag" and a.value not in fc.policy.tag_owners):
        # "tag:server:22" lands here too: a port makes it an unknown tag.
        raise PolicyTestFailure(f'SSH tests dst contains unknown tag "{d}"', [])
    wide = a.kind in ("prefix", "host") and ipaddress.ip_network(
        a.value if a.kind == "prefix" else fc.policy.hosts[a.value], strict=False).num_addresses != 1
    if wide or a.value == "autogroup:internet":
        raise PolicyTestFailure(f'SSH tests dst contains disallowed element "{d}"', [])


def _ssh_test_dst_nodes(fc: FilterCompiler, d: str, src_nodes: list[Node]) -> list[Node] | None:
    """The SSH servers an sshTests dst names; None when it names none. autogroup:self is the
    source user's own devices; a bare IPv6 address names no server (Tailscale fails such a
    test while it passes the same test written with the IPv4 address)."""
    if d.strip() == "autogroup:self":
        users = {n.user_id for n in src_nodes if not n.is_tagged and n.user_id is not None}
        if len(users) != 1:
            return None
        nodes = [n for n in fc.tailnet.nodes if not n.is_tagged and n.user_id in users]
        return nodes or None
    dst = _endpoint_addrs(fc, d, autogroups=True, ipv6_literals=False)
    return dst[1] or None if dst else None


def run_ssh_tests(fc: FilterCompiler, server_url: str) -> list[str]:
    failures: list[str] = []
    for i, t in enumerate(fc.policy.ssh_tests):
        for d in t.dst:
            _check_ssh_test_dst(fc, d)
        src = _endpoint_addrs(fc, t.src, autogroups=True) if t.src else None
        if src is None:
            failures.append(f"sshTests[{i}]: invalid src {t.src!r}")
            continue
        if not (t.accept or t.check or t.deny):
            failures.append(f"sshTests[{i}]: no accept, check or deny")
            continue
        src_ips = set(src[0])
        for d in t.dst:
            nodes = _ssh_test_dst_nodes(fc, d, src[1])
            if nodes is None:
                failures.append(f"sshTests[{i}]: dst {d!r} names no SSH server")
                continue
            for node in nodes:
                pol = ssh_policy_for(fc.policy, fc.r, node, server_url) or {"rules": []}
                for want, users in (("accept", t.accept), ("check", t.check), ("deny", t.deny)):
                    for user in users:
                        got = _ssh_outcome(pol, src_ips, user)
                        ok = got != "deny" if want != "deny" else got == "deny"
                        if want == "check" and got == "accept":
                            ok = False
                        if not ok:
                            failures.append(f"sshTests[{i}]: {t.src} -> {d} as {user}: expected {want}, got {got}")
    return failures


def _ssh_outcome(pol: dict, src_ips: set[str], user: str) -> str:
    """What the first matching SSH rule does for this login (first match
    wins, as in tailssh)."""
    for rule in pol.get("rules", []):
        if not any(p.get("nodeIP") in src_ips or p.get("any") for p in rule["principals"]):
            continue
        users = rule["sshUsers"]
        mapped = users.get(user, users.get("*"))
        if mapped is None or mapped == "":
            continue
        return "accept" if rule["action"].get("accept") else "check"
    return "deny"


def check_policy_tests(fc: FilterCompiler, server_url: str) -> None:
    """Raise PolicyTestFailure if any test or sshTest fails."""
    failures = run_acl_tests(fc) + run_ssh_tests(fc, server_url)
    if failures:
        raise PolicyTestFailure(FAILED, failures)
