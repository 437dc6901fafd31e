"""Tailscale SSH policy per destination node (tailcfg.SSHPolicy)."""

from __future__ import annotations

from .document import Policy, SSHRule
from .ipset import IPSet
from .model import Node
from .resolve import Resolver

# The URL a node POSTs to for a "check" rule; the client substitutes the
# $-variables (tailcfg.SSHAction.HoldAndDelegate).
CHECK_PATH = "/machine/ssh/action/$SRC_NODE_ID/to/$DST_NODE_ID?local_user=$LOCAL_USER"

ACCEPT_ACTION = {"accept": True, "allowAgentForwarding": True,
                 "allowLocalPortForwarding": True, "allowRemotePortForwarding": True}


def _dst_matches(r: Resolver, rule: SSHRule, node: Node) -> tuple[bool, bool]:
    """(matches a non-self dst, matches autogroup:self)."""
    other = False
    self_ = False
    for a in rule.dsts:
        if a.value == "autogroup:self":
            if not node.is_tagged and node.user_id is not None:
                self_ = True
            continue
        nodes = r.alias_nodes(a)
        if nodes and any(n.id == node.id for n in nodes):
            other = True
    return other, self_


def _src_nodes(r: Resolver, rule: SSHRule) -> list[Node]:
    ids: dict[int, Node] = {}
    for a in rule.srcs:
        nodes = r.alias_nodes(a)
        if nodes is None:
            addrs = r.alias_addrs(a) if a.kind != "autogroup" else IPSet()
            nodes = r.nodes_in(addrs, with_routes=False) if addrs else []
        for n in nodes:
            ids[n.id] = n
    return list(ids.values())


def _user_map(rule: SSHRule, localpart: str | None) -> dict[str, str]:
    m: dict[str, str] = {}
    for u in rule.users:
        if u == "autogroup:nonroot":
            m["*"] = "="
        elif u.startswith("localpart:"):
            if localpart:
                m[localpart] = localpart
        else:
            m[u] = u
    if "*" in m and "root" not in m:
        # nonroot means any user but root: say so explicitly.
        m["root"] = ""
    return m


def _localpart_users(r: Resolver, rule: SSHRule) -> dict[int, str]:
    """user id → local part, for users matched by localpart:*@domain."""
    out: dict[int, str] = {}
    for u in rule.users:
        if not u.startswith("localpart:"):
            continue
        pattern = u[len("localpart:"):]
        domain = pattern.split("@", 1)[1] if "@" in pattern else ""
        for user in r.tailnet.users:
            if user.email and user.email.lower().endswith("@" + domain.lower()):
                out[user.id] = user.email.split("@", 1)[0]
    return out


def ssh_policy_for(policy: Policy, r: Resolver, node: Node, server_url: str) -> dict | None:
    """The SSHPolicy dict for ``node``; {"rules": []} when nothing applies."""
    rules_out: list[dict] = []
    for rule in policy.ssh or ():
        other, self_ = _dst_matches(r, rule, node)
        if not other and not self_:
            continue
        srcs = _src_nodes(r, rule)
        if not other:
            srcs = [n for n in srcs if not n.is_tagged and n.user_id == node.user_id]
        if not srcs:
            continue
        if rule.action == "accept":
            action = dict(ACCEPT_ACTION)
        else:
            action = {"holdAndDelegate": server_url.rstrip("/") + CHECK_PATH}
        has_localpart = any(u.startswith("localpart:") for u in rule.users)
        groups: list[tuple[list[Node], str | None]]
        if has_localpart:
            lp = _localpart_users(r, rule)
            groups = []
            plain = _user_map(rule, None)
            if plain:
                groups.append((srcs, None))
            by_user: dict[int, list[Node]] = {}
            for n in srcs:
                if not n.is_tagged and n.user_id in lp:
                    by_user.setdefault(n.user_id, []).append(n)
            for uid, ns in by_user.items():
                groups.append((ns, lp[uid]))
        else:
            groups = [(srcs, None)]
        for nodes, localpart in groups:
            users = _user_map(rule, localpart) if localpart else _user_map(rule, None)
            if not users:
                continue
            principals = [{"nodeIP": ip} for n in nodes for ip in n.ips]
            out = {"principals": principals, "sshUsers": users, "action": action}
            if rule.accept_env:
                out["acceptEnv"] = list(rule.accept_env)
            rules_out.append(out)
    return {"rules": rules_out}
