"""Offline evaluation: what every node of a topology would get."""

from __future__ import annotations

import json

from .engine import DEFAULT_SERVER_URL, PolicyEngine
from .errors import PolicyError
from .model import Node, User, normalize_role


def tailnet_from_topology(topology: dict) -> tuple[list[User], list[Node]]:
    """Users and nodes from the conformance corpus's ``topology`` format.

    Node ids follow the sorted hostnames, so output is stable."""
    users = [User(id=int(u["id"]), name=u.get("name", ""), email=u.get("email", ""),
                  role=normalize_role(u.get("role")), groups=tuple(u.get("groups") or ()))
             for u in topology.get("users", [])]
    by_name = {u.name: u.id for u in users}
    nodes = []
    for i, (host, n) in enumerate(sorted(topology.get("nodes", {}).items()), start=1):
        tags = tuple(n.get("tags") or ())
        uid = None if tags else by_name.get(n.get("user") or "")
        if not tags and uid is None and users:
            uid = users[0].id
        nodes.append(Node(id=i, hostname=n.get("hostname", host), user_id=uid, tags=tags,
                          ipv4=n.get("ipv4"), ipv6=n.get("ipv6"),
                          routable_ips=tuple(n.get("routable_ips") or ()),
                          approved_routes=tuple(n.get("approved_routes") or ())))
    return users, nodes


def evaluate(policy_text: str | bytes | dict, topology: dict, *,
             server_url: str = DEFAULT_SERVER_URL) -> dict:
    """{"error": None or message, "nodes": {hostname: {...}}} for a topology.

    Never raises PolicyError: a refused policy is reported in "error" with
    Tailscale's message, and "nodes" is then empty.
    """
    users, nodes = tailnet_from_topology(topology)
    engine = PolicyEngine(None, users, nodes, server_url=server_url)
    if isinstance(policy_text, dict):
        policy_text = json.dumps(policy_text)
    try:
        engine.set_policy(policy_text)
    except PolicyError as exc:
        out = {"error": exc.message, "nodes": {}}
        if exc.line is not None:
            out["error_position"] = {"line": exc.line, "column": exc.column, "field": exc.field}
        failures = getattr(exc, "failures", None)
        if failures:
            out["test_failures"] = failures
        return out
    names = {n.id: n.hostname for n in nodes}
    result = {}
    for n in nodes:
        r = engine.result(n.id)
        result[n.hostname] = {
            "packet_filter_rules": r.packet_filter_rules,
            "ssh_policy": r.ssh_policy,
            "self_cap_map": r.self_cap_map,
            "peers": sorted(names[p] for p in r.peers),
        }
    return {"error": None, "nodes": result}
