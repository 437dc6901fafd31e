"""Wire messages of the control protocol, with their Go JSON names written once.

Messages the client sends declare each field's kind (codec.wire): ``from_json`` checks them at
the boundary and the handlers only see typed, valid values. Messages we send use codec.j:
``None`` is omitted, because Tailscale reads an absent field as "unchanged" and a ``null`` or
``[]`` can mean something else (an empty PacketFilter denies everything).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .codec import AddrPort, Bool, Bytes, Float, Int, KeyText, ListOf, MapOf, Obj, Scalar, Str, Time, j, wire
from .hostinfo import HOSTINFO, MAX_REGION_ID, MAX_TEXT, Hostinfo

# Capability versions are small (133 in 1.96); peers decode the one we echo as a Go int.
MAX_CAPABILITY_VERSION = 1_000_000
MAX_ENDPOINTS = 1024  # a host with many interfaces reports dozens; more is an attack
MAX_DEBUG_FLAGS = 64
MAX_AUTH_KEY = 512  # our keys are ~90 characters; Headscale's and Tailscale's shorter
MAX_URL = 2048
MAX_SIGNATURE = 16 * 1024  # tailnet-lock signatures, device certificates


def _version() -> Any:
    return wire("Version", Int(0, MAX_CAPABILITY_VERSION))


# --- register ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Oauth2Token:
    """Sent only by Android clients before 1.66; checked and otherwise ignored."""

    access_token: str = wire("access_token", Str(8192))
    token_type: str = wire("token_type", Str(MAX_TEXT))
    refresh_token: str = wire("refresh_token", Str(8192))
    expiry: datetime | None = wire("expiry", Time())


@dataclass(frozen=True, slots=True)
class RegisterAuth:
    auth_key: str = wire("AuthKey", Str(MAX_AUTH_KEY))
    oauth2_token: Oauth2Token | None = wire("Oauth2Token", Obj(Oauth2Token))


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    version: int = _version()
    node_key: str = wire("NodeKey", KeyText("nodekey", nonzero=True))
    old_node_key: str = wire("OldNodeKey", KeyText("nodekey", zero_is_absent=True))  # "" = none
    nl_key: str = wire("NLKey", KeyText("nlpub", also=("tlpub",)))
    auth: RegisterAuth | None = wire("Auth", Obj(RegisterAuth))
    expiry: datetime | None = wire("Expiry", Time())  # None: Go's zero time, "no request"
    followup: str = wire("Followup", Str(MAX_URL))
    hostinfo: Hostinfo | None = wire("Hostinfo", HOSTINFO)
    ephemeral: bool = wire("Ephemeral", Bool())
    node_key_signature: bytes = wire("NodeKeySignature", Bytes(MAX_SIGNATURE))
    signature_type: int = wire("SignatureType", Int(0, 255))
    timestamp: datetime | None = wire("Timestamp", Time())
    device_cert: bytes = wire("DeviceCert", Bytes(MAX_SIGNATURE))
    signature: bytes = wire("Signature", Bytes(MAX_SIGNATURE))
    tailnet: str = wire("Tailnet", Str(MAX_TEXT))

    @property
    def auth_key(self) -> str:
        return self.auth.auth_key if self.auth else ""


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
    version: int = _version()
    compress: str = wire("Compress", Str(16, pattern="zstd", what='"zstd" or ""'))
    keep_alive: bool = wire("KeepAlive", Bool())
    node_key: str = wire("NodeKey", KeyText("nodekey"))
    disco_key: str = wire("DiscoKey", KeyText("discokey", zero_is_absent=True))
    hardware_attestation_key: str = wire("HardwareAttestationKey", Str(
        140, pattern="hwattestpub:[0-9a-fA-F]{130}", what="a hwattestpub: key"))
    hardware_attestation_key_signature: bytes = wire("HardwareAttestationKeySignature", Bytes(MAX_SIGNATURE))
    hardware_attestation_key_signature_timestamp: datetime | None = wire(
        "HardwareAttestationKeySignatureTimestamp", Time())
    stream: bool = wire("Stream", Bool())
    hostinfo: Hostinfo | None = wire("Hostinfo", HOSTINFO)
    map_session_handle: str = wire("MapSessionHandle", Str(MAX_TEXT))
    map_session_seq: int = wire("MapSessionSeq", Int())
    # None: not sent, keep what is stored; () is "no endpoints".
    endpoints: tuple[str, ...] | None = wire("Endpoints", ListOf(AddrPort(), MAX_ENDPOINTS), default=None)
    endpoint_types: tuple[int, ...] = wire("EndpointTypes", ListOf(Int(0, 255), MAX_ENDPOINTS))
    tka_head: str = wire("TKAHead", Str(MAX_TEXT))
    read_only: bool = wire("ReadOnly", Bool())
    omit_peers: bool = wire("OmitPeers", Bool())
    debug_flags: tuple[str, ...] = wire("DebugFlags", ListOf(Str(64), MAX_DEBUG_FLAGS))
    connection_handle_for_test: str = wire("ConnectionHandleForTest", Str(MAX_TEXT))


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


# --- the minor endpoints (set-dns: setdns.SetDNSRequest) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthChangeRequest:
    """POST /machine/update-health (clients before October 2025; zero NodeKey before 1.62)."""

    subsys: str = wire("Subsys", Str(MAX_TEXT))
    error: str = wire("Error", Str(4096))
    node_key: str = wire("NodeKey", KeyText("nodekey", zero_is_absent=True))


@dataclass(frozen=True, slots=True)
class SetDeviceAttributesRequest:
    """PATCH /machine/set-device-attr: device posture attributes (string, number, bool, or
    null to delete)."""

    version: int = _version()
    node_key: str = wire("NodeKey", KeyText("nodekey"))
    update: dict = wire("Update", MapOf(Str(MAX_TEXT), Scalar(1024), 64), default=None)


@dataclass(frozen=True, slots=True)
class AuditLogRequest:
    """POST /machine/audit-log: an action the node reports, e.g. DISCONNECT_NODE."""

    version: int = _version()
    node_key: str = wire("NodeKey", KeyText("nodekey"))
    action: str = wire("Action", Str(64, pattern="[A-Z0-9_]+", what="an action name (like DISCONNECT_NODE)"))
    details: str = wire("Details", Str(4096))
    timestamp: datetime | None = wire("Timestamp", Time())


@dataclass(frozen=True, slots=True)
class PingResponse:
    """The body a client POSTs to a PingRequest's URL for the TSMP, disco, ICMP and peerapi
    ping types (a plain PingRequest is answered by a bodiless HEAD)."""

    type: str = wire("Type", Str(32))
    ip: str = wire("IP", Str(64))
    node_ip: str = wire("NodeIP", Str(64))
    node_name: str = wire("NodeName", Str(MAX_TEXT))
    err: str = wire("Err", Str(1024))
    latency_seconds: float = wire("LatencySeconds", Float(0, 86400))
    endpoint: str = wire("Endpoint", Str(80))
    peer_relay: str = wire("PeerRelay", Str(80))
    derp_region_id: int = wire("DERPRegionID", Int(0, MAX_REGION_ID))
    derp_region_code: str = wire("DERPRegionCode", Str(32))
    peer_api_port: int = wire("PeerAPIPort", Int(0, 65535))
    is_local_ip: bool = wire("IsLocalIP", Bool())
