"""Subnet routes and exit nodes: which advertised routes are served, and which node is the
primary router of each prefix.

A route is served when the node advertises it (Hostinfo.RoutableIPs) and it is approved (by an
admin or by the policy's autoApprovers). Several nodes serving one prefix form an HA group: the
primary stays primary while it is online; when it goes offline the lowest-numbered online
router takes over, and peers are told at once. Exit routes (0.0.0.0/0, ::/0) have no primary:
every approved exit node is offered.
"""

from __future__ import annotations

from ..storage.records import NodeRecord

EXIT_ROUTES = frozenset({"0.0.0.0/0", "::/0"})


def advertised(n: NodeRecord) -> set[str]:
    return set(n.hostinfo.routable_ips)  # valid and normalised by the Hostinfo's kind


def served(n: NodeRecord) -> set[str]:
    return advertised(n) & set(n.approved_routes)


def is_exit_node(n: NodeRecord) -> bool:
    return bool(served(n) & EXIT_ROUTES)


class RouteTable:
    def __init__(self) -> None:
        self.primary: dict[str, int] = {}  # prefix → node id
        self.unhealthy: set[int] = set()  # connected routers that missed their HA probe

    def primaries_of(self, node_id: int) -> list[str]:
        return sorted(p for p, n in self.primary.items() if n == node_id)

    def ha_members(self, nodes: dict[int, NodeRecord], online: set[int]) -> set[int]:
        """Online routers of prefixes that more than one online router serves."""
        by_prefix: dict[str, set[int]] = {}
        for node_id in online:
            n = nodes.get(node_id)
            for p in (served(n) - EXIT_ROUTES) if n else ():
                by_prefix.setdefault(p, set()).add(node_id)
        return set().union(*(ids for ids in by_prefix.values() if len(ids) > 1))

    def recompute(self, nodes: dict[int, NodeRecord], online: set[int]) -> set[int]:
        """Re-elect primaries; returns the ids of nodes whose primary routes changed."""
        candidates: dict[str, list[int]] = {}
        for node_id, n in nodes.items():
            if node_id not in online:
                continue
            for p in served(n) - EXIT_ROUTES:
                candidates.setdefault(p, []).append(node_id)
        new: dict[str, int] = {}
        for prefix, ids in candidates.items():
            # A router that stopped answering probes serves only when no other can.
            ids = [i for i in ids if i not in self.unhealthy] or ids
            current = self.primary.get(prefix)
            new[prefix] = current if current in ids else min(ids)
        changed = set()
        for prefix in set(new) | set(self.primary):
            old, now = self.primary.get(prefix), new.get(prefix)
            if old != now:
                changed |= {i for i in (old, now) if i is not None}
        self.primary = new
        return changed
