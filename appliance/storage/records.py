"""Rows of the store as plain dataclasses (storage functions never hand out cursors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..control.hostinfo import Hostinfo


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    name: str
    display_name: str
    email: str
    created_at: datetime
    provider: str = ""
    provider_id: str = ""
    profile_pic_url: str = ""
    role: str = "member"  # owner | admin | network-admin | it-admin | billing-admin | auditor | member
    groups: tuple[str, ...] = ()  # from the identity provider at the last login

    @property
    def login_name(self) -> str:
        return self.email or self.name


@dataclass(frozen=True, slots=True)
class PreAuthKeyRecord:
    id: int
    prefix: str
    hash: str
    user_id: int | None
    reusable: bool
    ephemeral: bool
    used: bool
    tags: tuple[str, ...]
    created_at: datetime
    expiration: datetime | None
    pre_approved: bool = False  # its nodes skip device approval


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: int
    prefix: str
    hash: str
    created_at: datetime
    expiration: datetime | None
    last_seen: datetime | None


@dataclass(frozen=True, slots=True)
class NodeRecord:
    id: int
    machine_key: str
    node_key: str
    disco_key: str
    ipv4: str | None
    ipv6: str | None
    hostname: str
    given_name: str
    user_id: int | None
    auth_key_id: int | None
    tags: tuple[str, ...]
    hostinfo: Hostinfo
    endpoints: tuple[str, ...]
    expiry: datetime | None
    last_seen: datetime | None
    created_at: datetime
    approved_routes: tuple[str, ...] = ()
    ephemeral: bool = False
    register_method: str = "authkey"
    authorized: bool = True  # False: waits for an admin's approval (node.approval_required)
    # Not stored: how to compare two versions of a node cheaply when deciding what changed.
    extra: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    """One version of the policy (``policy.mode: database``); the newest is in force."""

    id: int
    data: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    """A stored policy version without its text: its history entry."""

    id: int
    created_at: datetime
    author: str  # who saved it: "console:alice", "apikey:3", "cli"; empty before the console
    size: int  # characters


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A web console session; ``hash`` is the SHA-256 of the cookie's secret. ``user_id`` None:
    signed in with a CLI link made without --user (the server's operator, an owner)."""

    hash: str
    user_id: int | None
    method: str  # "link" or "oidc"
    source: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class SettingRecord:
    """A setting an admin changed at run time through the API (DNS, DERP regions): JSON."""

    name: str
    value: Any
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class WebhookRecord:
    """A webhook added through the API (config.yaml's are not stored). The secret is kept as
    given: it keys every delivery's HMAC, so it cannot be hashed."""

    id: int
    url: str
    secret: str
    events: tuple[str, ...]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the store holds, as one value: what ``trioscale export`` writes and what
    an import (from Headscale or from another trioscale) hands to ``Store.import_snapshot``."""

    users: tuple[UserRecord, ...] = ()
    preauth_keys: tuple[PreAuthKeyRecord, ...] = ()
    api_keys: tuple[ApiKeyRecord, ...] = ()
    nodes: tuple[NodeRecord, ...] = ()
    policies: tuple[PolicyRecord, ...] = ()
    settings: tuple[SettingRecord, ...] = ()
    webhooks: tuple[WebhookRecord, ...] = ()
    # (table, the highest ID it ever handed out, deleted rows included): kept by a copy so
    # that an ID retired in one database is never handed out again by the other.
    id_marks: tuple[tuple[str, int], ...] = ()
