"""The parsed policy document: plain frozen dataclasses, no tailnet data."""

from __future__ import annotations

from dataclasses import dataclass, field

from .aliases import Alias


@dataclass(frozen=True, slots=True)
class IPProto:
    """One protocol/port choice of a rule: protocols None = Tailscale's default."""
    protocols: tuple[int, ...] | None
    ports: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Rule:
    """An ACL or a grant, normalised. ACL dsts carry their own ports.

    ``dsts`` is a list of (alias, ports-or-None); ports is None for grants,
    whose ports live in ``ip``.
    """
    srcs: tuple[Alias, ...]
    dsts: tuple[tuple[Alias, tuple[tuple[int, int], ...] | None], ...]
    ip: tuple[IPProto, ...] = ()
    app: dict | None = None
    via: tuple[str, ...] = ()
    is_acl: bool = False
    protocols: tuple[int, ...] | None = None   # ACL "proto"


@dataclass(frozen=True, slots=True)
class SSHRule:
    action: str                      # accept | check
    srcs: tuple[Alias, ...]
    dsts: tuple[Alias, ...]
    users: tuple[str, ...]
    check_period: float | None = None   # seconds; None = default
    accept_env: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NodeAttr:
    targets: tuple[Alias, ...]
    attrs: tuple[str, ...]
    app: dict | None = None


@dataclass(frozen=True, slots=True)
class ACLTest:
    src: str
    accept: tuple[str, ...]
    deny: tuple[str, ...]
    proto: str | None = None


@dataclass(frozen=True, slots=True)
class SSHTest:
    src: str
    dst: tuple[str, ...]
    accept: tuple[str, ...]
    check: tuple[str, ...]
    deny: tuple[str, ...]


@dataclass(frozen=True)
class Policy:
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    hosts: dict[str, str] = field(default_factory=dict)
    tag_owners: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    ssh: tuple[SSHRule, ...] | None = None
    node_attrs: tuple[NodeAttr, ...] = ()
    auto_routes: dict[str, tuple[Alias, ...]] = field(default_factory=dict)
    auto_exit: tuple[Alias, ...] = ()
    tests: tuple[ACLTest, ...] = ()
    ssh_tests: tuple[SSHTest, ...] = ()
    randomize_client_port: bool = False
    has_filter: bool = False          # acls or grants present at all
    raw: dict = field(default_factory=dict, compare=False)
