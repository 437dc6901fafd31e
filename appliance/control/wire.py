"""Wire messages of the control protocol, with their Go JSON names written once.

A field's JSON name is ``field(metadata={"json": "NodeKey"})``. Going out, ``None`` is omitted,
because Tailscale reads an absent field as "unchanged" and a ``null`` or ``[]`` can mean
something else (an empty PacketFilter denies everything). Coming in, unknown keys are ignored.
Nested client structures we only store and echo (Hostinfo, NetInfo) stay plain dicts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

T = TypeVar("T")

ZERO_TIME = "0001-01-01T00:00:00Z"


class WireError(ValueError):
    """A message from the client does not have the shape the protocol gives it."""


def j(name: str, default: Any = None, **kw: Any) -> Any:
    if "default_factory" in kw:
        return field(metadata={"json": name}, **kw)
    return field(default=default, metadata={"json": name}, **kw)


def format_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    """RFC 3339 → aware datetime; Go's zero time and empty → None."""
    if not text or text.startswith("0001-01-01"):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise WireError(f"bad time {text[:40]!r}") from None


def to_json(obj: Any) -> Any:
    """Dataclass trees → JSON-ready values, omitting None fields."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if v is None:
                continue
            out[f.metadata.get("json", f.name)] = to_json(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, datetime):
        return format_time(obj)
    return obj


def from_json(cls: type[T], data: Any) -> T:
    """A dict from the client → ``cls``; checks the JSON types of the fields it knows."""
    if not isinstance(data, dict):
        raise WireError(f"{cls.__name__}: expected a JSON object")
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = f.metadata.get("json", f.name)
        if name not in data or data[name] is None:
            continue
        value = data[name]
        want = f.metadata.get("type")
        if want is not None and not isinstance(value, want):
            raise WireError(f"{cls.__name__}.{name}: wrong JSON type {type(value).__name__}")
        kwargs[f.name] = value
    return cls(**kwargs)


# --- register ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    version: int = field(default=0, metadata={"json": "Version", "type": int})
    node_key: str = field(default="", metadata={"json": "NodeKey", "type": str})
    old_node_key: str = field(default="", metadata={"json": "OldNodeKey", "type": str})
    nl_key: str = field(default="", metadata={"json": "NLKey", "type": str})
    auth: dict | None = field(default=None, metadata={"json": "Auth", "type": dict})
    expiry: str = field(default="", metadata={"json": "Expiry", "type": str})
    followup: str = field(default="", metadata={"json": "Followup", "type": str})
    hostinfo: dict | None = field(default=None, metadata={"json": "Hostinfo", "type": dict})
    ephemeral: bool = field(default=False, metadata={"json": "Ephemeral", "type": bool})

    @property
    def auth_key(self) -> str:
        key = (self.auth or {}).get("AuthKey") or ""
        return key if isinstance(key, str) else ""


@dataclass(frozen=True, slots=True)
class WireUser:
    id: int = j("ID")
    display_name: str = j("DisplayName")
    profile_pic_url: str | None = j("ProfilePicURL")


@dataclass(frozen=True, slots=True)
class WireLogin:
    id: int = j("ID")
    provider: str | None = j("Provider")
    login_name: str = j("LoginName")
    display_name: str = j("DisplayName")
    profile_pic_url: str | None = j("ProfilePicURL")


@dataclass(frozen=True, slots=True)
class RegisterResponse:
    user: WireUser | None = j("User")
    login: WireLogin | None = j("Login")
    node_key_expired: bool = j("NodeKeyExpired", False)
    machine_authorized: bool = j("MachineAuthorized", False)
    auth_url: str = j("AuthURL", "")
    error: str = j("Error", "")


# --- map ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MapRequest:
    version: int = field(default=0, metadata={"json": "Version", "type": int})
    compress: str = field(default="", metadata={"json": "Compress", "type": str})
    keep_alive: bool = field(default=False, metadata={"json": "KeepAlive", "type": bool})
    node_key: str = field(default="", metadata={"json": "NodeKey", "type": str})
    disco_key: str = field(default="", metadata={"json": "DiscoKey", "type": str})
    stream: bool = field(default=False, metadata={"json": "Stream", "type": bool})
    hostinfo: dict | None = field(default=None, metadata={"json": "Hostinfo", "type": dict})
    endpoints: list | None = field(default=None, metadata={"json": "Endpoints", "type": list})
    omit_peers: bool = field(default=False, metadata={"json": "OmitPeers", "type": bool})
    read_only: bool = field(default=False, metadata={"json": "ReadOnly", "type": bool})
    debug_flags: list | None = field(default=None, metadata={"json": "DebugFlags", "type": list})


@dataclass(frozen=True, slots=True)
class UserProfile:
    id: int = j("ID")
    login_name: str = j("LoginName")
    display_name: str = j("DisplayName")
    profile_pic_url: str | None = j("ProfilePicURL")


@dataclass(frozen=True, slots=True)
class WireNode:
    id: int = j("ID")
    stable_id: str = j("StableID")
    name: str = j("Name")
    user: int = j("User")
    key: str = j("Key")
    key_expiry: str | None = j("KeyExpiry")
    machine: str = j("Machine")
    disco_key: str | None = j("DiscoKey")
    addresses: list[str] = j("Addresses")
    allowed_ips: list[str] = j("AllowedIPs")
    endpoints: list[str] | None = j("Endpoints")
    home_derp: int | None = j("HomeDERP")
    legacy_derp: str | None = j("DERP")
    hostinfo: dict | None = j("Hostinfo")
    created: str = j("Created")
    cap: int | None = j("Cap")
    tags: list[str] | None = j("Tags")
    primary_routes: list[str] | None = j("PrimaryRoutes")
    online: bool | None = j("Online")
    last_seen: str | None = j("LastSeen")
    machine_authorized: bool = j("MachineAuthorized", True)
    expired: bool | None = j("Expired")
    cap_map: dict | None = j("CapMap")


@dataclass(frozen=True, slots=True)
class PeerChange:
    """One entry of PeersChangedPatch: only the fields present are changed."""

    node_id: int = j("NodeID")
    derp_region: int | None = j("DERPRegion")
    cap: int | None = j("Cap")
    endpoints: list[str] | None = j("Endpoints")
    key: str | None = j("Key")
    disco_key: str | None = j("DiscoKey")
    online: bool | None = j("Online")
    last_seen: str | None = j("LastSeen")
    key_expiry: str | None = j("KeyExpiry")


@dataclass(frozen=True, slots=True)
class MapResponse:
    keep_alive: bool | None = j("KeepAlive")
    node: WireNode | None = j("Node")
    derp_map: dict | None = j("DERPMap")
    peers: list[WireNode] | None = j("Peers")
    peers_changed: list[WireNode] | None = j("PeersChanged")
    peers_removed: list[int] | None = j("PeersRemoved")
    peers_changed_patch: list[PeerChange] | None = j("PeersChangedPatch")
    online_change: dict[str, bool] | None = j("OnlineChange")
    dns_config: dict | None = j("DNSConfig")
    domain: str | None = j("Domain")
    collect_services: bool | None = j("CollectServices")  # must be a JSON bool, never a string
    packet_filter: list | None = j("PacketFilter")
    user_profiles: list[UserProfile] | None = j("UserProfiles")
    ssh_policy: dict | None = j("SSHPolicy")
    health: list[str] | None = j("Health")
    control_time: str | None = j("ControlTime")
