"""The tailnet as the policy engine sees it: users and nodes.

The server builds these from its own store; they are frozen so results can be
cached and compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class User:
    id: int
    name: str
    email: str

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

    @classmethod
    def of(cls, users, nodes) -> "Tailnet":
        users = tuple(users)
        return cls(users, tuple(nodes), {u.id: u for u in users})
