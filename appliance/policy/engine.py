"""PolicyEngine: the policy plus the current tailnet, compiled per node.

The server owns one engine. It tells the engine when the policy, a user or a
node changes; the engine recompiles and answers which nodes' results changed,
so only those nodes get a new map.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable

from .compile import FilterCompiler
from .document import Policy
from .errors import ValidationError
from .ipset import IPSet
from .model import Node, Tailnet, User
from .nodeattrs import self_cap_map
from .parse import parse_policy
from .resolve import idp_group_members
from .policytests import check_policy_tests
from .ssh import check_period, ssh_policy_for

DEFAULT_SERVER_URL = "https://unused"


@dataclass(frozen=True)
class NodeResult:
    packet_filter_rules: list[dict]
    ssh_policy: dict | None
    self_cap_map: dict
    peers: frozenset[int]
    fingerprint: str = field(default="", compare=False)


def validate_against_tailnet(policy: Policy, tailnet: Tailnet, tailnet_domains: set[str]) -> None:
    """Checks that need the tailnet: localpart:*@domain must name one of the
    tailnet's own domains (Tailscale's wording)."""
    for rule in policy.ssh or ():
        for u in rule.users:
            if not u.startswith("localpart:*@"):
                continue
            domain = u.split("@", 1)[1]
            if domain and domain.lower() not in tailnet_domains:
                raise ValidationError(
                    f"{domain} is not associated with this Tailnet and cannot be used in "
                    "user:*@<domain> expressions")
        for a in rule.srcs:
            if a.kind == "domain":
                domain = a.value.split("@", 1)[1]
                if domain.lower() not in tailnet_domains:
                    raise ValidationError(
                        f"[ssh] {domain} is not associated with this Tailnet and cannot be used in "
                        "user:*@<domain> expressions")


def default_domains(users) -> set[str]:
    """The tailnet's domain: that of its first (owner) user's login."""
    users = sorted(users, key=lambda u: u.id)
    for u in users:
        if u.email and "@" in u.email:
            return {u.email.split("@", 1)[1].lower()}
    return set()


class PolicyEngine:
    """Holds a parsed policy and the tailnet; compiles per-node results.

    Not thread-safe; pure computation (no I/O), so the server may call it
    from a worker thread for large tailnets.
    """

    def __init__(self, policy: Policy | str | None = None, users=(), nodes=(), *,
                 server_url: str = DEFAULT_SERVER_URL, tailnet_domains: set[str] | None = None) -> None:
        self.server_url = server_url
        self._domains = tailnet_domains
        self._users: dict[int, User] = {u.id: u for u in users}
        self._nodes: dict[int, Node] = {n.id: n for n in nodes}
        self.policy: Policy = (parse_policy(policy, extra_groups=self._known_groups())
                               if isinstance(policy, (str, bytes)) else (policy or parse_policy("{}")))
        self._results: dict[int, NodeResult] = {}
        self._compiler: FilterCompiler | None = None
        self._recompile()

    # --- inputs ---------------------------------------------------------
    @property
    def tailnet(self) -> Tailnet:
        return self._tailnet

    def domains(self) -> set[str]:
        return self._domains if self._domains is not None else default_domains(self._users.values())

    def _known_groups(self) -> set[str]:
        """Groups the identity provider gave users count as defined (issue 11)."""
        return set(idp_group_members(self._users.values()))

    def check_policy(self, policy: Policy | str) -> Policy:
        """Parse and fully validate a policy against the current tailnet,
        running its tests, without installing it. Raises PolicyError."""
        pol = (parse_policy(policy, extra_groups=self._known_groups())
               if isinstance(policy, (str, bytes, dict)) else policy)
        tailnet = Tailnet.of(self._users.values(), self._nodes.values())
        validate_against_tailnet(pol, tailnet, self.domains())
        fc = FilterCompiler(pol, tailnet)
        check_policy_tests(fc, self.server_url)
        return pol

    def set_policy(self, policy: Policy | str) -> set[int]:
        """Validate and install a policy; return ids of nodes whose results
        changed. On PolicyError the old policy stays."""
        self.policy = self.check_policy(policy)
        return self._recompile()

    def upsert_node(self, node: Node) -> set[int]:
        self._nodes[node.id] = node
        return self._recompile()

    def remove_node(self, node_id: int) -> set[int]:
        self._nodes.pop(node_id, None)
        changed = self._recompile()
        return changed | {node_id}

    def upsert_user(self, user: User) -> set[int]:
        self._users[user.id] = user
        return self._recompile()

    def remove_user(self, user_id: int) -> set[int]:
        self._users.pop(user_id, None)
        return self._recompile()

    def apply(self, *, nodes: Iterable[Node] = (), removed_nodes: Iterable[int] = (),
              users: Iterable[User] = (), removed_users: Iterable[int] = ()) -> set[int]:
        """Many changes, one recompilation (the server batches bursts of joins this way)."""
        removed = set(removed_nodes)
        for n in nodes:
            self._nodes[n.id] = n
        for i in removed:
            self._nodes.pop(i, None)
        for u in users:
            self._users[u.id] = u
        for i in removed_users:
            self._users.pop(i, None)
        return self._recompile() | removed

    # --- outputs --------------------------------------------------------
    def result(self, node_id: int) -> NodeResult:
        return self._results[node_id]

    def results(self) -> dict[int, NodeResult]:
        return dict(self._results)

    def auto_approved_routes(self, node_id: int) -> tuple[str, ...]:
        """Routes the node advertises that autoApprovers approve for it
        (exit routes via autoApprovers.exitNode, or a routes entry that
        covers 0.0.0.0/0 or ::/0)."""
        from .routes import auto_approved
        node = self._nodes[node_id]
        if not node.routable_ips:
            return ()
        # The compiler's resolver already indexes this tailnet; a new one per call would make
        # approving routes across the tailnet quadratic.
        return auto_approved(self.policy, self.compiler.r, node)

    def ssh_check_period(self, src_id: int, dst_id: int) -> float | None:
        """Seconds a passed SSH check from node ``src_id`` to ``dst_id`` lasts (0: every
        connection is checked), or None when no check rule covers the pair."""
        src, dst = self._nodes.get(src_id), self._nodes.get(dst_id)
        if src is None or dst is None:
            return None
        return check_period(self.policy, self.compiler.r, src, dst)

    def owns_tag(self, user_id: int, tag: str) -> bool:
        """May ``user_id`` put ``tag`` on its devices (``tailscale up --advertise-tags``)?
        By tagOwners: the user's login, a group holding it (from the policy or the identity
        provider), autogroup:member, or a role's autogroup (autogroup:admin, ...)."""
        return user_id in self._owners(self.policy.tag_owners.get(tag, ()), set())

    def _owners(self, refs, seen: set[str]) -> set[int]:
        out: set[int] = set()
        r = self.compiler.r
        for ref in refs:
            if ref.startswith("group:"):
                if ref not in seen:
                    seen.add(ref)
                    out |= self._owners(self.policy.groups.get(ref, ()), seen)
                    out |= r.idp_groups.get(ref, set())
            elif ref == "autogroup:member":
                out |= set(self._users)
            elif ref.startswith("autogroup:"):
                out |= r.role_users(ref.split(":", 1)[1])
            elif "@" in ref:
                uid = r.users_by_login.get(ref.lower())
                if uid is not None:
                    out.add(uid)
        return out

    @property
    def compiler(self) -> FilterCompiler:
        assert self._compiler is not None
        return self._compiler

    # --- compilation ----------------------------------------------------
    def _recompile(self) -> set[int]:
        self._tailnet = Tailnet.of(sorted(self._users.values(), key=lambda u: u.id),
                                   sorted(self._nodes.values(), key=lambda n: n.id))
        fc = FilterCompiler(self.policy, self._tailnet)
        self._compiler = fc
        peers = fc.peers()
        new: dict[int, NodeResult] = {}
        for node in self._tailnet.nodes:
            rules = fc.filter_for(node)
            ssh = ssh_policy_for(self.policy, fc.r, node, self.server_url)
            caps = self_cap_map(self.policy, fc.r, node)
            p = frozenset(peers.get(node.id, ()))
            fp = json.dumps([rules, ssh, caps, sorted(p)], sort_keys=True)
            new[node.id] = NodeResult(rules, ssh, caps, p, fp)
        changed = {nid for nid, res in new.items()
                   if nid not in self._results or self._results[nid].fingerprint != res.fingerprint}
        changed |= set(self._results) - set(new)
        self._results = new
        return changed


def addresses(node: Node) -> IPSet:
    return IPSet.parse(*node.ips)
