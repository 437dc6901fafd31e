"""Packet filter compilation: policy + tailnet → FilterRules per node.

Tailscale's control plane sends each node only the rules about traffic *to*
it (the filter is inbound-only), with DstPorts cut down to the node's own
addresses, its approved subnet routes and, for exit nodes, the internet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .aliases import Alias
from .document import Policy, Rule
from .ipset import EMPTY, IPSet
from .model import Node, Tailnet
from .resolve import INTERNET, Resolver

# Capabilities that Tailscale pairs with a reverse "companion" grant so the
# destination learns about the source too (tailcfg.PeerCapabilityTaildrive,
# PeerCapabilityRelay and their *-sharer / *-target partners).
COMPANION_CAPS = {
    "tailscale.com/cap/drive": "tailscale.com/cap/drive-sharer",
    "tailscale.com/cap/relay": "tailscale.com/cap/relay-target",
}


@dataclass
class Target:
    """One destination alias of a rule, resolved."""
    kind: str                 # wildcard | nodes | prefix | internet | self
    node_ids: frozenset[int] = frozenset()
    prefix: IPSet = EMPTY
    text: str = ""            # prefix as written, for DstPorts


@dataclass
class CompiledRule:
    index: int                                   # position in the policy
    src_strings: list[str]
    src_set: IPSet
    src_nodes: frozenset[int]
    src_all: bool                                # danger-all: "*"
    protocols: tuple[int, ...] | None
    dsts: list[tuple[Target, tuple[tuple[int, int], ...]]]
    app: dict | None = None
    via: tuple[str, ...] = ()
    self_srcs: frozenset[int] = frozenset()      # for autogroup:self targets
    dst_nodes: frozenset[int] = field(default_factory=frozenset)


def _fmt_ports(p: tuple[int, int]) -> dict:
    return {"First": p[0], "Last": p[1]}


class FilterCompiler:
    """Holds the resolved rules for one (policy, tailnet); answers per node."""

    def __init__(self, policy: Policy, tailnet: Tailnet, resolver: Resolver | None = None) -> None:
        self.policy = policy
        self.tailnet = tailnet
        self.r = resolver or Resolver(policy, tailnet)
        self.by_id = {n.id: n for n in tailnet.nodes}
        self.rules: list[CompiledRule] = []
        rules = policy.rules
        if not policy.has_filter:
            # No acls and no grants: Tailscale's default policy allows all.
            from .aliases import WILDCARD
            rules = (Rule(srcs=(WILDCARD,), dsts=((WILDCARD, ((0, 65535),)),), is_acl=True),)
        for i, rule in enumerate(rules):
            self.rules.extend(self._compile_rule(i, rule))
        for cr in self.rules:
            if cr.app is not None and not cr.via:
                cr.dst_nodes = frozenset(n.id for n in tailnet.nodes if self._cap_dsts(cr, n))
            else:
                cr.dst_nodes = frozenset(n.id for n in tailnet.nodes if self._entries_for(cr, n, probe=True))

    # --- per rule -----------------------------------------------------------
    def _target(self, a: Alias) -> Target:
        if a.kind == "wildcard":
            return Target("wildcard")
        if a.value == "autogroup:self":
            return Target("self")
        if a.value == "autogroup:internet":
            return Target("internet")
        if a.kind in ("prefix", "host"):
            text = a.value if a.kind == "prefix" else self.policy.hosts[a.value]
            s = IPSet.parse(text)
            strs = s.strings()
            return Target("prefix", prefix=s, text=strs[0] if len(strs) == 1 else text)
        nodes = self.r.alias_nodes(a) or []
        return Target("nodes", node_ids=frozenset(n.id for n in nodes))

    def _src_nodes(self, srcs, src_set: IPSet, danger: bool) -> frozenset[int]:
        if danger or any(a.kind == "wildcard" for a in srcs):
            return frozenset(self.by_id)
        ids: set[int] = set()
        addr_parts = []
        for a in srcs:
            nodes = self.r.alias_nodes(a)
            if nodes is None:
                addr_parts.append(self.r.alias_addrs(a))
            else:
                ids.update(n.id for n in nodes)
        if addr_parts:
            ids.update(n.id for n in self.r.nodes_in(IPSet.union_all(addr_parts)))
        return frozenset(ids)

    def _compile_rule(self, index: int, rule: Rule) -> list[CompiledRule]:
        src_set, danger = self.r.src_set(rule.srcs)
        src_nodes = self._src_nodes(rule.srcs, src_set, danger)
        src_strings = ["*"] if danger else src_set.strings()
        if not src_strings:
            # Sources that name nobody (an empty group, a user without devices) give no
            # network rule; an app grant still reaches its destinations, as a CapGrant from
            # no one (Tailscale sends it so; Headscale's compileOtherDests notes the same).
            # A literally empty src list gives nothing at all.
            if not (rule.app and rule.srcs and not rule.via):
                return []
            return [CompiledRule(index, [], src_set, frozenset(), False, None,
                                 [(self._target(a), ()) for a, _ in rule.dsts], app=rule.app)]
        # Sources allowed into autogroup:self: users' own (untagged) nodes.
        self_srcs = frozenset(i for i in src_nodes if not self.by_id[i].is_tagged)
        out = []
        if rule.is_acl:
            dsts = [(self._target(a), ports) for a, ports in rule.dsts]
            out.append(CompiledRule(index, src_strings, src_set, src_nodes, danger,
                                    rule.protocols, dsts, self_srcs=self_srcs))
            return out
        targets = [self._target(a) for a, _ in rule.dsts]
        for ipp in rule.ip:
            out.append(CompiledRule(index, src_strings, src_set, src_nodes, danger, ipp.protocols,
                                    [(t, ipp.ports) for t in targets], via=rule.via,
                                    self_srcs=self_srcs))
        if rule.app and rule.via:
            # App capabilities do not travel through via routers: the
            # captures show no CapGrant for via grants, yet the routers
            # become visible to the sources (grant-k12).
            out.append(CompiledRule(index, src_strings, src_set, src_nodes, danger, None,
                                    [(t, ((0, 65535),)) for t in targets], app=rule.app,
                                    via=rule.via, self_srcs=self_srcs))
        elif rule.app:
            out.append(CompiledRule(index, src_strings, src_set, src_nodes, danger, None,
                                    [(t, ()) for t in targets], app=rule.app, via=rule.via,
                                    self_srcs=self_srcs))
        return out

    # --- per node -----------------------------------------------------------
    def _entries_for(self, cr: CompiledRule, node: Node, probe: bool = False) -> list[tuple[str, tuple]]:
        """(IP string, ports) pairs of a rule relevant to ``node``."""
        out: list[tuple[str, tuple]] = []
        nid = node.id
        routes = self.r.subnet_routes[nid]
        ips = self.r.node_ips[nid]
        is_exit = nid in self.r.exit_nodes
        if cr.via and not any(t in node.tags for t in cr.via):
            return out
        for t, ports in cr.dsts:
            if cr.via:
                # Via grants route through the tagged routers: only the
                # routed destinations count, never the router itself.
                if t.kind == "prefix" and routes and routes.overlaps(t.prefix):
                    out.append((t.text, ports))
                elif t.kind == "internet" and is_exit:
                    out.extend((s, ports) for s in INTERNET.strings())
                continue
            if t.kind == "wildcard":
                out.append(("*", ports))
            elif t.kind == "nodes":
                if nid in t.node_ids:
                    out.extend((ip, ports) for ip in node.ips)
            elif t.kind == "prefix":
                if ips.overlaps(t.prefix) or (routes and routes.overlaps(t.prefix)) or (
                        is_exit and INTERNET.contains_set(t.prefix)):
                    out.append((t.text, ports))
            elif t.kind == "internet":
                if is_exit:
                    out.extend((s, ports) for s in INTERNET.strings())
            if probe and out:
                return out
        return out

    def self_sources(self, cr: CompiledRule, node: Node) -> list[Node]:
        return [self.by_id[i] for i in sorted(cr.self_srcs)
                if self.by_id[i].user_id == node.user_id]

    def filter_for(self, node: Node) -> list[dict]:
        """The FilterRule list for ``node``, JSON-ready, in policy order."""
        rules: list[dict] = []
        for cr in self.rules:
            if cr.app is not None:
                if not cr.via:
                    rules.extend(self._cap_rules_for(cr, node))
                continue
            entries = self._entries_for(cr, node)
            if entries:
                rules.append(self._rule(cr.src_strings, entries, cr.protocols))
            if any(t.kind == "self" for t, _ in cr.dsts) and not node.is_tagged and node.user_id is not None:
                srcs = self.self_sources(cr, node)
                if srcs:
                    src_strings = IPSet.union_all(self.r.node_ips[n.id] for n in srcs).strings()
                    entries = [(ip, ports) for t, ports in cr.dsts if t.kind == "self" for ip in node.ips]
                    rules.append(self._rule(src_strings, entries, cr.protocols))
        rules.extend(self._companion_rules_for(node))
        return _merge(rules)

    @staticmethod
    def _rule(src_strings, entries, protocols) -> dict:
        d = {"SrcIPs": list(src_strings),
             "DstPorts": [{"IP": ip, "Ports": _fmt_ports(p)} for ip, ports in entries for p in ports]}
        if protocols is not None:
            d["IPProto"] = list(protocols)
        return d

    def _cap_dsts(self, cr: CompiledRule, node: Node) -> list[str]:
        dsts: list[str] = []
        nid = node.id
        routes = self.r.subnet_routes[nid]
        if cr.via and not any(t in node.tags for t in cr.via):
            return dsts
        for t, _ in cr.dsts:
            if t.kind == "wildcard" or (t.kind == "nodes" and nid in t.node_ids):
                dsts.extend(_host_prefixes(node))
            elif t.kind == "prefix":
                if self.r.node_ips[nid].overlaps(t.prefix):
                    dsts.extend(_host_prefixes(node))
                if routes and routes.overlaps(t.prefix):
                    dsts.extend(t.prefix.prefixes())
        return list(dict.fromkeys(dsts))

    def _cap_rules_for(self, cr: CompiledRule, node: Node) -> list[dict]:
        out = []
        dsts = self._cap_dsts(cr, node)
        if dsts:
            out.append({"SrcIPs": list(cr.src_strings), "CapGrant": [{"Dsts": dsts, "CapMap": cr.app}]})
        if any(t.kind == "self" for t, _ in cr.dsts) and not node.is_tagged and node.user_id is not None:
            srcs = self.self_sources(cr, node)
            if srcs:
                src_strings = IPSet.union_all(self.r.node_ips[n.id] for n in srcs).strings()
                out.append({"SrcIPs": src_strings,
                            "CapGrant": [{"Dsts": _host_prefixes(node), "CapMap": cr.app}]})
        return out

    def _companion_rules_for(self, node: Node) -> list[dict]:
        """Reverse rules for companion caps, sent to the grant's sources:
        SrcIPs are the grant's destinations, Dsts the receiving source."""
        out = []
        for cr in self.rules:
            if not cr.app or cr.via:
                continue
            comps = sorted(c for name, c in COMPANION_CAPS.items() if name in cr.app)
            if not comps:
                continue
            parts = []
            if node.id in cr.src_nodes:
                for t, _ in cr.dsts:
                    if t.kind == "wildcard":
                        parts.append(self.r.alias_addrs(Alias("wildcard", "*")))
                    elif t.kind == "nodes":
                        parts.extend(self.r.node_ips[i] for i in t.node_ids)
                    elif t.kind == "prefix":
                        parts.append(t.prefix)
            if node.id in cr.self_srcs:
                for t, _ in cr.dsts:
                    if t.kind == "self":
                        parts.extend(self.r.node_ips[n.id] for n in self.tailnet.nodes
                                     if not n.is_tagged and n.user_id == node.user_id)
            dst_ips = IPSet.union_all(parts)
            if not dst_ips:
                continue
            for comp in comps:
                out.append({"SrcIPs": dst_ips.strings(),
                            "CapGrant": [{"Dsts": _host_prefixes(node), "CapMap": {comp: None}}]})
        return out

    # --- visibility -----------------------------------------------------------
    def peers(self) -> dict[int, set[int]]:
        """Which nodes each node may see: a peer is visible when either side
        may open a connection to the other (Tailscale shows both ends)."""
        as_src: dict[int, list[int]] = {nid: [] for nid in self.by_id}
        as_dst: dict[int, list[int]] = {nid: [] for nid in self.by_id}
        for k, cr in enumerate(self.rules):
            for nid in cr.src_nodes:
                as_src[nid].append(k)
            for nid in cr.dst_nodes:
                as_dst[nid].append(k)
        cache: dict[tuple, frozenset[int]] = {}
        out: dict[int, set[int]] = {}
        self_rules = [cr for cr in self.rules if any(t.kind == "self" for t, _ in cr.dsts)]
        users: dict[int, list[int]] = {}
        for n in self.tailnet.nodes:
            if not n.is_tagged and n.user_id is not None:
                users.setdefault(n.user_id, []).append(n.id)
        for nid in self.by_id:
            sig = (tuple(as_src[nid]), tuple(as_dst[nid]))
            peers = cache.get(sig)
            if peers is None:
                acc: set[int] = set()
                for k in as_src[nid]:
                    acc |= self.rules[k].dst_nodes
                for k in as_dst[nid]:
                    acc |= self.rules[k].src_nodes
                peers = cache[sig] = frozenset(acc)
            mine = set(peers)
            node = self.by_id[nid]
            if self_rules and not node.is_tagged and node.user_id is not None:
                same = users.get(node.user_id, [])
                for cr in self_rules:
                    if nid in cr.self_srcs:
                        mine.update(same)
                    else:
                        mine.update(i for i in same if i in cr.self_srcs)
            mine.discard(nid)
            out[nid] = mine
        return out


def _host_prefixes(node: Node) -> list[str]:
    out = []
    if node.ipv4:
        out.append(f"{node.ipv4}/32")
    if node.ipv6:
        out.append(f"{node.ipv6}/128")
    return out


def _merge(rules: list[dict]) -> list[dict]:
    """Fold rules with equal SrcIPs and IPProto into one, as Tailscale does;
    CapGrant rules stay as they are."""
    out: list[dict] = []
    seen: dict[tuple, int] = {}
    for r in rules:
        if "CapGrant" in r:
            out.append(r)
            continue
        key = (tuple(r["SrcIPs"]), tuple(r.get("IPProto") or ()))
        if key in seen:
            out[seen[key]]["DstPorts"].extend(r["DstPorts"])
        else:
            seen[key] = len(out)
            out.append(r)
    return out
