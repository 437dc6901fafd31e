"""Resolving aliases against the tailnet: which nodes, which addresses."""

from __future__ import annotations

import re
from functools import cached_property

from .aliases import Alias
from .document import Policy
from .ipset import EMPTY, TAILNET_SPACE, IPSet
from .model import Node, Tailnet

# autogroup:internet as Tailscale's control plane writes it into exit nodes'
# filters: all IPv4 except private, CGNAT and link-local space, and global
# unicast IPv6 (2000::/3).
_NON_INTERNET = IPSet.parse("10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16",
                            "172.16.0.0/12", "192.168.0.0/16")
INTERNET = IPSet.parse("0.0.0.0/0", "2000::/3") - _NON_INTERNET

# Which roles each role autogroup holds (kb/1396 targets: "all members with the X role").
# The Owner counts as an Admin: Tailscale gives the owner's devices the is-admin capability
# too, and the owner may do everything an admin may (kb/1138).
ROLE_AUTOGROUPS: dict[str, frozenset[str]] = {
    "owner": frozenset({"owner"}),
    "admin": frozenset({"owner", "admin"}),
    "network-admin": frozenset({"network-admin"}),
    "it-admin": frozenset({"it-admin"}),
    "billing-admin": frozenset({"billing-admin"}),
    "auditor": frozenset({"auditor"}),
}

# local@domain with something on both sides; the admin API checks emails fully.
_ADDRESS = re.compile(r"^[^@\s]+@[^@\s.][^@\s]*$")


def idp_group_members(users) -> dict[str, set[int]]:
    """group:NAME → the users whose identity provider put them in NAME."""
    out: dict[str, set[int]] = {}
    for u in users:
        for g in u.groups:
            out.setdefault(f"group:{g}", set()).add(u.id)
    return out


class Resolver:
    """Alias → nodes and addresses for one (policy, tailnet) pair."""

    def __init__(self, policy: Policy, tailnet: Tailnet) -> None:
        self.policy = policy
        self.tailnet = tailnet
        self.nodes = tailnet.nodes
        self.node_ips: dict[int, IPSet] = {n.id: IPSet.parse(*n.ips) for n in self.nodes}
        self._alias_memo: dict[Alias, list[Node] | None] = {}
        # SSH source nodes per rule, filled by ssh.py (same reason).
        self.ssh_src_memo: dict[int, tuple] = {}
        # A login names one user or, when two claim it, nobody (Headscale refuses such a
        # token too). An email counts only when it is an address with a domain: a stored
        # email "alice@" must never answer for "alice@", which names the user called alice.
        self.users_by_login: dict[str, int | None] = {}
        for u in tailnet.users:
            logins = [f"{u.name.lower()}@"] if u.name else []
            if _ADDRESS.match(u.email):
                logins.append(u.email.lower())
            for login in logins:
                self.users_by_login[login] = u.id if self.users_by_login.get(login, u.id) == u.id else None
        self.idp_groups = idp_group_members(tailnet.users)

    def group_user_ids(self, group: str) -> set[int]:
        """Members of group:NAME: the users the policy lists, and those whose identity
        provider put them in NAME at their last sign-in."""
        uids = {self.user_id(m) for m in self.policy.groups.get(group, ())} - {None}
        return uids | self.idp_groups.get(group, set())

    # --- routes -----------------------------------------------------------
    @cached_property
    def subnet_routes(self) -> dict[int, IPSet]:
        """Approved, non-exit routes per node: those a router forwards for."""
        out = {}
        for n in self.nodes:
            routes = [r for r in self.approved[n.id] if r not in ("0.0.0.0/0", "::/0")]
            out[n.id] = IPSet.parse(*routes) if routes else EMPTY
        return out

    @cached_property
    def approved(self) -> dict[int, tuple[str, ...]]:
        """Approved routes per node: those approved by an admin plus the
        advertised subnet routes autoApprovers approve (Tailscale approves
        these as soon as they are advertised, acl-ah01). Exit routes are
        left to the server: the captures show advertised exit routes that
        autoApprovers cover staying unapproved until approved (acl-a05)."""
        from .routes import EXIT, auto_approved
        out = {}
        for n in self.nodes:
            auto = auto_approved(self.policy, self, n) if n.routable_ips else ()
            auto = tuple(r for r in auto if r not in EXIT)
            out[n.id] = tuple(dict.fromkeys(n.approved_routes + auto))
        return out

    @cached_property
    def exit_nodes(self) -> frozenset[int]:
        return frozenset(n.id for n in self.nodes
                         if "0.0.0.0/0" in self.approved[n.id] or "::/0" in self.approved[n.id])

    @cached_property
    def all_subnet_routes(self) -> IPSet:
        return IPSet.union_all(self.subnet_routes.values())

    # --- aliases ----------------------------------------------------------
    def user_id(self, login: str) -> int | None:
        return self.users_by_login.get(login.lower())

    def alias_nodes(self, a: Alias) -> list[Node] | None:
        """Nodes an alias names, or None when it names addresses instead.

        Memoised: the compiler asks the same question for every node."""
        try:
            return self._alias_memo[a]
        except KeyError:
            pass
        out = self._alias_memo[a] = self._alias_nodes(a)
        return out

    def _alias_nodes(self, a: Alias) -> list[Node] | None:
        k = a.kind
        if k == "tag":
            return [n for n in self.nodes if a.value in n.tags]
        if k == "user":
            uid = self.user_id(a.value)
            return [n for n in self.nodes if not n.is_tagged and uid is not None and n.user_id == uid]
        if k == "domain":
            domain = "@" + a.value.split("@", 1)[1].lower()
            uids = {u.id for u in self.tailnet.users if u.email.lower().endswith(domain)}
            return [n for n in self.nodes if not n.is_tagged and n.user_id in uids]
        if k == "group":
            uids = self.group_user_ids(a.value)
            return [n for n in self.nodes if not n.is_tagged and n.user_id in uids]
        if k == "autogroup":
            name = a.value.split(":", 1)[1]
            if name == "member":
                return [n for n in self.nodes if not n.is_tagged and n.user_id is not None]
            if name == "tagged":
                return [n for n in self.nodes if n.is_tagged]
            if name in ("self", "internet", "danger-all"):
                return None
            uids = self.role_users(name)
            # autogroup:shared: users from other tailnets, which a self-hosted one has none of.
            return [n for n in self.nodes if not n.is_tagged and n.user_id in uids]
        return None

    def role_users(self, autogroup: str) -> set[int]:
        """Ids of the users a role autogroup (owner, admin, …; without "autogroup:") holds."""
        roles = ROLE_AUTOGROUPS.get(autogroup)
        if not roles:
            return set()
        return {uid for uid, r in self.tailnet.roles.items() if r in roles}

    def src_set(self, srcs) -> tuple[IPSet, bool]:
        """Addresses of a rule's sources; flag True for autogroup:danger-all."""
        sets = []
        danger = False
        for a in srcs:
            if a.kind == "wildcard":
                # "*" as a source is every tailnet address plus every approved
                # subnet route, not the whole internet (Tailscale SaaS).
                sets.append(TAILNET_SPACE)
                sets.append(self.all_subnet_routes)
            elif a.value == "autogroup:danger-all":
                danger = True
            else:
                sets.append(self.alias_addrs(a))
        return IPSet.union_all(sets), danger

    def alias_addrs(self, a: Alias) -> IPSet:
        if a.kind == "prefix":
            return IPSet.parse(a.value)
        if a.kind == "host":
            return IPSet.parse(self.policy.hosts[a.value])
        if a.kind == "wildcard":
            return TAILNET_SPACE | self.all_subnet_routes
        if a.value == "autogroup:internet":
            return INTERNET
        nodes = self.alias_nodes(a)
        if not nodes:
            return EMPTY
        return IPSet.union_all(self.node_ips[n.id] for n in nodes)

    def nodes_in(self, addrs: IPSet, with_routes: bool = True) -> list[Node]:
        """Nodes whose addresses (and, optionally, approved subnet routes)
        meet a set."""
        out = []
        for n in self.nodes:
            routes = self.subnet_routes[n.id]
            if self.node_ips[n.id].overlaps(addrs) or (
                    with_routes and routes and routes.overlaps(addrs)):
                out.append(n)
        return out
