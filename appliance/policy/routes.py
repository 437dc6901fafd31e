"""autoApprovers: which advertised routes the policy approves by itself."""

from __future__ import annotations

from .document import Policy
from .ipset import IPSet
from .model import Node
from .resolve import Resolver

EXIT = ("0.0.0.0/0", "::/0")


def _approver_matches(r: Resolver, aliases, node: Node) -> bool:
    for a in aliases:
        if a.kind == "wildcard":
            return True
        nodes = r.alias_nodes(a)
        if nodes is not None:
            if any(n.id == node.id for n in nodes):
                return True
        elif r.alias_addrs(a).overlaps(r.node_ips[node.id]):
            return True
    return False


def auto_approved(policy: Policy, r: Resolver, node: Node) -> tuple[str, ...]:
    """The subset of ``node.routable_ips`` that autoApprovers approve.

    A route is approved when an autoApprovers.routes prefix covers it and
    names the node (by tag, user, group…); exit routes are approved by
    autoApprovers.exitNode.
    """
    out = []
    for route in node.routable_ips:
        rset = IPSet.parse(route)
        if route in EXIT:
            if _approver_matches(r, policy.auto_exit, node):
                out.append(route)
                continue
        for prefix, aliases in policy.auto_routes.items():
            if IPSet.parse(prefix).contains_set(rset) and _approver_matches(r, aliases, node):
                out.append(route)
                break
    return tuple(out)
