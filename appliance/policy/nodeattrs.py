"""Node attributes from "nodeAttrs": the policy part of a node's CapMap."""

from __future__ import annotations

from .document import Policy
from .model import Node
from .resolve import Resolver


FUNNEL_PORTS = "https://tailscale.com/cap/funnel-ports?ports=443,8443,10000"
FUNNEL_NO_HTTPS = "https://tailscale.com/cap/warn-funnel-no-https"


def self_cap_map(policy: Policy, r: Resolver, node: Node) -> dict:
    """{capability: values-or-None} that the policy gives ``node``.

    Only what the policy decides; the server adds its own defaults
    (is-admin, file-sharing, ssh, …) that Tailscale derives from tailnet
    settings rather than the policy file.
    """
    caps: dict = {}
    if policy.randomize_client_port:
        caps["randomize-client-port"] = None
    ips = r.node_ips[node.id]
    for na in policy.node_attrs:
        if not any(_targets(r, a, node, ips) for a in na.targets):
            continue
        for attr in na.attrs:
            caps.setdefault(attr, None)
            if attr == "funnel":
                # Tailscale expands "funnel" into the ports Funnel may use and,
                # with no HTTPS certificates in the tailnet, a warning cap.
                caps.setdefault(FUNNEL_PORTS, None)
                caps.setdefault(FUNNEL_NO_HTTPS, None)
        for name, values in (na.app or {}).items():
            caps.setdefault(name, [])
            caps[name] = (caps[name] or []) + list(values)
    return caps


def _targets(r: Resolver, a, node: Node, ips) -> bool:
    if a.kind == "wildcard":
        return True
    nodes = r.alias_nodes(a)
    if nodes is not None:
        return any(n.id == node.id for n in nodes)
    return r.alias_addrs(a).overlaps(ips)
