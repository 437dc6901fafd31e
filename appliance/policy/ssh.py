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
    memo = r.ssh_src_memo
    if id(rule) in memo:
        return memo[id(rule)][1]
    out = _resolve_src_nodes(r, rule)
    memo[id(rule)] = (rule, out)   # keep rule alive so id() stays unique
    return out


def _resolve_src_nodes(r: Resolver, rule: SSHRule) -> list[Node]:
    ids: dict[int, Node] = {}
    for a in rule.srcs:
        nodes = r.alias_nodes(a)
        if nodes is None:
            addrs = r.alias_addrs(a) if a.kind != "autogroup" else IPSet()
            nodes = r.nodes_in(addrs, with_routes=False) if addrs else []
        for n in nodes:
            ids[n.id] = n
    return list(ids.values())


def is_localpart(u: str) -> bool:
    """"localpart:*@domain" maps each user of the domain to their own local
    part; any other "localpart:…" text is an ordinary (odd) user name."""
    return u.startswith("localpart:*@") and len(u) > len("localpart:*@")


def _user_map(users: tuple[str, ...]) -> dict[str, str]:
    """sshUsers for the plain (non-localpart) users of a rule. Tailscale
    always says what happens to root: "" (refused) unless root is listed."""
    m: dict[str, str] = {}
    for u in users:
        if is_localpart(u):
            continue
        if u == "autogroup:nonroot":
            m["*"] = "="
        else:
            m[u] = u
    if "root" not in m:
        m["root"] = ""
    return m


def _localpart_users(r: Resolver, rule: SSHRule) -> dict[int, str]:
    """user id → local part, for users matched by localpart:*@domain."""
    out: dict[int, str] = {}
    for u in rule.users:
        if not is_localpart(u):
            continue
        domain = u.split("@", 1)[1].lower()
        for user in r.tailnet.users:
            if user.email and user.email.lower().endswith("@" + domain):
                out[user.id] = user.email.split("@", 1)[0]
    return out


def ssh_policy_for(policy: Policy, r: Resolver, node: Node, server_url: str) -> dict | None:
    """The SSHPolicy dict for ``node``; {"rules": []} when nothing applies."""
    check_rules: list[dict] = []
    accept_rules: list[dict] = []
    for rule in policy.ssh or ():
        other, self_ = _dst_matches(r, rule, node)
        if (not other and not self_ and any(is_localpart(u) for u in rule.users)
                and not node.is_tagged and node.user_id is not None):
            # Observed in Tailscale's captures (ssh-d2…): a localpart rule
            # also reaches every user-owned node, for that user's own
            # devices, as if autogroup:self were among the destinations.
            self_ = True
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
        if any(is_localpart(u) for u in rule.users):
            # One rule per source user: the plain users first, then the
            # user's own local part alone (Tailscale SaaS layout).
            lp = _localpart_users(r, rule)
            groups: list[tuple[list[Node], dict[str, str]]] = []
            tagged = [n for n in srcs if n.is_tagged or n.user_id is None]
            if tagged:
                groups.append((tagged, _user_map(rule.users)))
            by_user: dict[int, list[Node]] = {}
            for n in srcs:
                if not n.is_tagged and n.user_id is not None:
                    by_user.setdefault(n.user_id, []).append(n)
            for uid in sorted(by_user):
                groups.append((by_user[uid], _user_map(rule.users)))
                if uid in lp:
                    groups.append((by_user[uid], {lp[uid]: lp[uid]}))
        else:
            groups = [(srcs, _user_map(rule.users))]
        for nodes, users in groups:
            principals = [{"nodeIP": ip} for n in nodes for ip in n.ips]
            out = {"principals": principals, "sshUsers": users, "action": action}
            if rule.accept_env:
                out["acceptEnv"] = list(rule.accept_env)
            (check_rules if rule.action == "check" else accept_rules).append(out)
    # Tailscale puts every check rule ahead of the accept rules, so a check
    # is never shadowed by a broader accept.
    return {"rules": check_rules + accept_rules}
