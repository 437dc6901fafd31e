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
# Without a proto, a rule allows TCP, UDP and ICMP (tailcfg.FilterRule.IPProto).
DEFAULT_PROTOS = (6, 17, 1, 58)


def _endpoint_addrs(fc: FilterCompiler, text: str) -> tuple[list[str], list[Node]] | None:
    """Addresses (and nodes) a test endpoint names; None if Tailscale would
    not accept it as a test endpoint (autogroups, "*", wider prefixes)."""
    try:
        a = parse_alias(text.strip(), fc.policy.hosts)
    except ValidationError:
        return None
    if a.kind in ("wildcard", "autogroup"):
        return None
    if a.kind in ("prefix", "host"):
        value = a.value if a.kind == "prefix" else fc.policy.hosts[a.value]
        net = ipaddress.ip_network(value, strict=False)
        if net.num_addresses != 1:
            return None
        ip = str(net.network_address)
        return [ip], [n for n in fc.tailnet.nodes if ip in n.ips]
    if a.kind == "tag" and a.value not in fc.policy.tag_owners:
        return None
    if a.kind == "group" and a.value not in fc.policy.groups:
        return None
    nodes = fc.r.alias_nodes(a) or []
    if not nodes:
        return None
    return [ip for n in nodes for ip in n.ips], nodes


def _rule_allows(fc: FilterCompiler, cr: CompiledRule, src_ip: str, src_node: Node | None,
                 dst_ip: str, dst_node: Node | None, port: int, proto: int) -> bool:
    if cr.app is not None or cr.via:
        return False
    protos = cr.protocols if cr.protocols is not None else DEFAULT_PROTOS
    if proto not in protos:
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
            proto: int = 6) -> CompiledRule | None:
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
        src = _endpoint_addrs(fc, t.src) if t.src else None
        if src is None:
            failures.append(f"tests[{i}]: invalid src {t.src!r}")
            continue
        if not t.accept and not t.deny:
            failures.append(f"tests[{i}]: no accept or deny")
            continue
        proto = 6
        if t.proto:
            try:
                protos = parse_proto(str(t.proto))
            except ValidationError:
                failures.append(f"tests[{i}]: bad proto {t.proto!r}")
                continue
            proto = protos[0]
            if proto in (1, 58):
                # Tests name a port, which ICMP does not have.
                failures.append(f"tests[{i}]: proto {t.proto!r} has no ports")
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


def run_ssh_tests(fc: FilterCompiler, server_url: str) -> list[str]:
    failures: list[str] = []
    for i, t in enumerate(fc.policy.ssh_tests):
        for d in t.dst:
            try:
                a = parse_alias(d.strip(), fc.policy.hosts)
            except ValidationError:
                a = None
            if a is not None and (a.kind == "autogroup" or (a.kind == "prefix" and "/" in a.value)):
                raise PolicyTestFailure(f'SSH tests dst contains disallowed element "{d}"', [])
            if a is None or (a.kind == "tag" and a.value not in fc.policy.tag_owners):
                raise PolicyTestFailure(f'SSH tests dst contains unknown tag "{d}"', [])
        src = _endpoint_addrs(fc, t.src) if t.src else None
        if src is None:
            failures.append(f"sshTests[{i}]: invalid src {t.src!r}")
            continue
        if not (t.accept or t.check or t.deny):
            failures.append(f"sshTests[{i}]: no accept, check or deny")
            continue
        src_ips = set(src[0])
        for d in t.dst:
            dst = _endpoint_addrs(fc, d)
            if dst is None:
                failures.append(f"sshTests[{i}]: invalid dst {d!r}")
                continue
            for node in dst[1]:
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
