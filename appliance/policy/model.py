"""The tailnet as the policy engine sees it: users and nodes.

The server builds these from its own store; they are frozen so results can be
cached and compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field


# Tailscale's user roles (tailscale.com/kb/1138/user-roles), spelled as their autogroups.
ROLES = ("owner", "admin", "network-admin", "it-admin", "billing-admin", "auditor", "member")


def normalize_role(text: str | None) -> str:
    """A role as the user store may spell it ("Network admin", "it_admin", "IT-Admin")
    → its autogroup spelling; anything unknown is an ordinary member."""
    r = (text or "").strip().lower().replace("_", "-").replace(" ", "-")
    return r if r in ROLES else "member"


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    email: str
    # The user's role; decides the role autogroups (autogroup:admin, …). See ROLES.
    role: str = "member"
    # Groups from the identity provider's groups claim at the last sign-in: each fills
    # group:NAME beside the policy's own groups (issue 11).
    groups: tuple[str, ...] = ()

    @property
    def login(self) -> str:
        # Tailscale names users in policies by login name (an email address).
        return self.email or f"{self.name}@"


@dataclass(frozen=True, slots=True)
class Node:
    id: int
    hostname: str
    user_id: int | None
    tags: tuple[str, ...] = ()
    ipv4: str | None = None
    ipv6: str | None = None
    routable_ips: tuple[str, ...] = ()
    approved_routes: tuple[str, ...] = ()

    @property
    def is_tagged(self) -> bool:
        # A tagged node belongs to its tags, not to the user who created it.
        return bool(self.tags)

    @property
    def ips(self) -> tuple[str, ...]:
        return tuple(ip for ip in (self.ipv4, self.ipv6) if ip)


@dataclass(frozen=True, slots=True)
class Tailnet:
    """A snapshot of users and nodes, indexed for the compiler."""

    users: tuple[User, ...] = ()
    nodes: tuple[Node, ...] = ()
    users_by_id: dict[int, User] = field(default_factory=dict, compare=False, hash=False)
    # user id → role, with the owner settled (see roles_of).
    roles: dict[int, str] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def of(cls, users, nodes) -> "Tailnet":
        users = tuple(users)
        return cls(users, tuple(nodes), {u.id: u for u in users}, roles_of(users))


def roles_of(users) -> dict[int, str]:
    """Each user's role. A tailnet has exactly one Owner (kb/1138): when the store names
    none, the first user (the one who created the tailnet) is the owner, as in Tailscale."""
    roles = {u.id: normalize_role(u.role) for u in users}
    if roles and "owner" not in roles.values():
        roles[min(roles)] = "owner"
    return roles
