"""Tailscale SSH policy per destination node (tailcfg.SSHPolicy)."""

from __future__ import annotations

from dataclasses import dataclass

from .document import Policy, SSHRule
from .ipset import IPSet
from .model import Node
from .resolve import Resolver

# The URL a node POSTs to for a "check" rule; the client substitutes the
# $-variables (tailcfg.SSHAction.HoldAndDelegate).
CHECK_PATH = "/machine/ssh/action/$SRC_NODE_ID/to/$DST_NODE_ID?local_user=$LOCAL_USER"

# Tailscale's and Headscale's checkPeriod when a check rule gives none.
DEFAULT_CHECK_PERIOD = 12 * 3600.0

ACCEPT_ACTION = {"accept": True, "allowAgentForwarding": True,
                 "allowLocalPortForwarding": True, "allowRemotePortForwarding": True}


@dataclass(frozen=True)
class _Sources:
    """One SSH rule's sources, resolved once and shared by every destination node."""
    ids: frozenset[int]
    by_user: dict[int, list[Node]]     # user id → that user's (untagged) source devices
    tagged: list[Node]                  # tagged source devices
    users: dict[str, str]               # sshUsers for the rule's plain users
    localparts: dict[int, str]          # user id → local part, for localpart:*@domain users


def _sources(r: Resolver, rule: SSHRule) -> _Sources:
    memo = r.ssh_src_memo
    hit = memo.get(id(rule))
    if hit is not None:
        return hit[1]
    nodes = _resolve_src_nodes(r, rule)
    by_user: dict[int, list[Node]] = {}
    tagged = []
    for n in nodes:
        if n.is_tagged:
            tagged.append(n)
        elif n.user_id is not None:
            by_user.setdefault(n.user_id, []).append(n)
    out = _Sources(frozenset(n.id for n in nodes), dict(sorted(by_user.items())), tagged,
                   _user_map(rule.users), _localpart_users(r, rule))
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


def _principals(nodes: list[Node]) -> list[dict]:
    # A tagged device is listed once per tag: Tailscale resolves tagged sources tag by tag
    # (Headscale's groupSourcesByUser reproduces the same wire form).
    return [{"nodeIP": ip} for n in nodes for _ in (n.tags or ("",)) for ip in n.ips]


def _in_dsts(r: Resolver, rule: SSHRule, node: Node) -> tuple[bool | None, bool]:
    """(node is named by a dst other than autogroup:self — None when the rule has no other
    dst —, the rule has autogroup:self)."""
    other: bool | None = None
    has_self = False
    for a in rule.dsts:
        if a.value == "autogroup:self":
            has_self = True
        elif not other:
            other = any(n.id == node.id for n in r.alias_nodes(a) or ())
    return other, has_self


def _emitted(r: Resolver, rule: SSHRule, src: _Sources, node: Node) -> list[tuple[list[Node], int | None]]:
    """The source groups ``rule`` gives destination ``node`` (each with the user whose local
    part it maps, if any), in Tailscale's layout (see ssh_policy_for)."""
    if not src.ids:
        return []
    other, has_self = _in_dsts(r, rule, node)
    localpart = any(is_localpart(u) for u in rule.users)
    emitted: list[tuple[list[Node], int | None]] = []
    if has_self and not node.is_tagged and node.user_id is not None and node.user_id in src.by_user:
        emitted.append((src.by_user[node.user_id], node.user_id))
    if other:
        if localpart:
            emitted.extend((nodes, uid) for uid, nodes in src.by_user.items())
            if src.tagged:
                emitted.append((src.tagged, None))
        else:
            everyone = [n for nodes in src.by_user.values() for n in nodes] + src.tagged
            emitted.append((everyone, None))
    elif other is not None and localpart and node.id in src.ids:
        if node.is_tagged:
            emitted.append(([node], None))
        elif node.user_id in src.by_user:
            emitted.append((src.by_user[node.user_id], node.user_id))
    return emitted


def ssh_policy_for(policy: Policy, r: Resolver, node: Node, server_url: str) -> dict | None:
    """The SSHPolicy dict for ``node``; {"rules": []} when nothing applies.

    Per rule, in Tailscale's layout: for autogroup:self, one rule from the node's own user's
    devices; for the other destinations, one rule from every source. With localpart:*@domain
    users the sources are split per user (users by id, then the tagged devices), each user's
    rule followed by one mapping that user to their own local part; and a source device
    that is not a destination still gets a rule for itself: a tagged one from itself alone,
    a user's device from its user's devices.
    """
    check_rules: list[dict] = []
    accept_rules: list[dict] = []
    for rule in policy.ssh or ():
        src = _sources(r, rule)
        emitted = _emitted(r, rule, src, node)
        if not emitted:
            continue
        if rule.action == "accept":
            action = dict(ACCEPT_ACTION)
        else:
            action = {"holdAndDelegate": server_url.rstrip("/") + CHECK_PATH}
        out_rules = check_rules if rule.action == "check" else accept_rules
        for nodes, uid in emitted:
            principals = _principals(nodes)
            maps = [src.users]
            if uid is not None and uid in src.localparts:
                lp = src.localparts[uid]
                maps.append({lp: lp})
            for users in maps:
                out = {"principals": principals, "sshUsers": users, "action": action}
                if rule.accept_env:
                    out["acceptEnv"] = list(rule.accept_env)
                out_rules.append(out)
    # Tailscale puts every check rule ahead of the accept rules, so a check
    # is never shadowed by a broader accept.
    return {"rules": check_rules + accept_rules}


def check_period(policy: Policy, r: Resolver, src: Node, dst: Node) -> float | None:
    """How long a passed check of ``src`` → ``dst`` lasts, by the first check rule that covers
    the pair (0: check every time, checkPeriod "always"); None when no check rule does. The
    server decides this itself when the client calls back, never from the client's URL."""
    for rule in policy.ssh or ():
        if rule.action != "check":
            continue
        if any(n.id == src.id for nodes, _ in _emitted(r, rule, _sources(r, rule), dst) for n in nodes):
            return DEFAULT_CHECK_PERIOD if rule.check_period is None else rule.check_period
    return None
