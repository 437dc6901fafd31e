"""Hostinfo: what a node says about itself, as Tailscale 1.96's tailcfg.Hostinfo has it.

Every field of the Go struct is here with its type and a limit; a field of the wrong type or
beyond its limit refuses the request (400) naming the field. Keys the struct does not have are
dropped, as Tailscale's and Headscale's servers drop them when they decode into the struct.

The server itself uses Hostname (the node's name), OS, RoutableIPs (advertised routes),
RequestTags (--advertise-tags), NetInfo.PreferredDERP (the home relay) and the booleans peers
act on. The rest is kept only to echo to peers, and only within EXTRA_BUDGET characters of
JSON: above it, whole fields are dropped in TRIM_ORDER (with a note the caller logs), so a
node's Hostinfo costs a bounded amount of memory and of every peer's netmap.

Strings lose their control characters (see codec.Str): a hostname with an escape sequence is
stored and shown without it, and its DNS name is derived from what remains.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .codec import (
    UINT64_MAX, Bool, Float, Int, Kind, ListOf, MapOf, Obj, OptBool, Prefix, Str, WireError, from_json,
    to_json, wire,
)

MAX_TEXT = 256  # versions, OS names, IDs, log IDs: real values are under 100 characters
MAX_HOSTNAME = 256  # a DNS name is at most 253; the node's name is cut to a 63-byte label
MAX_DEVICE_TOKEN = 1024  # APNs/FCM push tokens are 64 to ~200 characters
MAX_ROUTES = 1024  # advertised subnet routes per node; each one costs policy compilation
MAX_REQUEST_TAGS = 64
MAX_TAG = 256
MAX_SERVICES = 1024  # listening ports a node reports (portlist); trimmed first, see below
MAX_WOL_MACS = 16
MAX_SSH_HOST_KEYS = 16
MAX_SSH_HOST_KEY = 8192  # an OpenSSH public key line; RSA-16384 is ~2,800 characters
MAX_DERP_REGIONS = 512  # DERPLatency entries: "<region>-v4" and "-v6" per region
MAX_REGION_ID = (1 << 31) - 1
# JSON characters of Hostinfo beyond RoutableIPs and RequestTags (which have their own
# counts). A real client sends 1 to 2 KiB; a server with many listening ports more.
EXTRA_BUDGET = 16 * 1024


@dataclass(frozen=True, slots=True)
class NetInfo:
    mapping_varies_by_dest_ip: bool | None = wire("MappingVariesByDestIP", OptBool())
    working_ipv6: bool | None = wire("WorkingIPv6", OptBool())
    os_has_ipv6: bool | None = wire("OSHasIPv6", OptBool())
    working_udp: bool | None = wire("WorkingUDP", OptBool())
    working_icmpv4: bool | None = wire("WorkingICMPv4", OptBool())
    have_port_map: bool = wire("HavePortMap", Bool())
    upnp: bool | None = wire("UPnP", OptBool())
    pmp: bool | None = wire("PMP", OptBool())
    pcp: bool | None = wire("PCP", OptBool())
    preferred_derp: int = wire("PreferredDERP", Int(0, MAX_REGION_ID))
    link_type: str = wire("LinkType", Str(MAX_TEXT))
    # Seconds per "<region>-v4|v6"; a day is far beyond any real latency.
    derp_latency: dict[str, float] = field(
        default_factory=dict,
        metadata={"json": "DERPLatency", "kind": MapOf(Str(64), Float(0, 86400), MAX_DERP_REGIONS)},
    )
    firewall_mode: str = wire("FirewallMode", Str(MAX_TEXT))


@dataclass(frozen=True, slots=True)
class Service:
    proto: str = wire("Proto", Str(32))  # "tcp", "udp", "peerapi4", "peerapi6", "peerapi-dns-proxy"
    port: int = wire("Port", Int(0, 65535))  # Go's uint16
    description: str = wire("Description", Str(MAX_TEXT))


@dataclass(frozen=True, slots=True)
class Location:
    country: str = wire("Country", Str(MAX_TEXT))
    country_code: str = wire("CountryCode", Str(8))
    city: str = wire("City", Str(MAX_TEXT))
    city_code: str = wire("CityCode", Str(16))
    latitude: float = wire("Latitude", Float(-90, 90))
    longitude: float = wire("Longitude", Float(-180, 180))
    priority: int = wire("Priority", Int(0))  # "A negative int is not allowed"


@dataclass(frozen=True, slots=True)
class TPMInfo:
    manufacturer: str = wire("Manufacturer", Str(MAX_TEXT))
    vendor: str = wire("Vendor", Str(MAX_TEXT))
    model: int = wire("Model", Int())
    firmware_version: int = wire("FirmwareVersion", Int(0, UINT64_MAX))
    spec_revision: int = wire("SpecRevision", Int())
    family_indicator: str = wire("FamilyIndicator", Str(MAX_TEXT))


def _text(name: str, limit: int = MAX_TEXT) -> Any:
    return wire(name, Str(limit))


@dataclass(frozen=True, slots=True)
class Hostinfo:
    ipn_version: str = _text("IPNVersion")
    frontend_log_id: str = _text("FrontendLogID")
    backend_log_id: str = _text("BackendLogID")
    os: str = _text("OS")
    os_version: str = _text("OSVersion")
    container: bool | None = wire("Container", OptBool())
    env: str = _text("Env")
    distro: str = _text("Distro")
    distro_version: str = _text("DistroVersion")
    distro_code_name: str = _text("DistroCodeName")
    app: str = _text("App")
    desktop: bool | None = wire("Desktop", OptBool())
    package: str = _text("Package")
    device_model: str = _text("DeviceModel")
    push_device_token: str = _text("PushDeviceToken", MAX_DEVICE_TOKEN)
    hostname: str = _text("Hostname", MAX_HOSTNAME)
    shields_up: bool = wire("ShieldsUp", Bool())
    sharee_node: bool = wire("ShareeNode", Bool())
    no_logs_no_support: bool = wire("NoLogsNoSupport", Bool())
    wire_ingress: bool = wire("WireIngress", Bool())
    ingress_enabled: bool = wire("IngressEnabled", Bool())
    allows_update: bool = wire("AllowsUpdate", Bool())
    machine: str = _text("Machine")
    go_arch: str = _text("GoArch")
    go_arch_var: str = _text("GoArchVar")
    go_version: str = _text("GoVersion")
    routable_ips: tuple[str, ...] = wire("RoutableIPs", ListOf(Prefix(), MAX_ROUTES))
    request_tags: tuple[str, ...] = wire("RequestTags", ListOf(Str(MAX_TAG), MAX_REQUEST_TAGS))
    wol_macs: tuple[str, ...] = wire("WoLMACs", ListOf(Str(32), MAX_WOL_MACS))
    services: tuple[Service, ...] = wire("Services", ListOf(Obj(Service), MAX_SERVICES))
    net_info: NetInfo | None = wire("NetInfo", Obj(NetInfo))
    ssh_host_keys: tuple[str, ...] = wire("sshHostKeys", ListOf(Str(MAX_SSH_HOST_KEY), MAX_SSH_HOST_KEYS))
    cloud: str = _text("Cloud")
    userspace: bool | None = wire("Userspace", OptBool())
    userspace_router: bool | None = wire("UserspaceRouter", OptBool())
    app_connector: bool | None = wire("AppConnector", OptBool())
    services_hash: str = _text("ServicesHash")
    peer_relay: bool = wire("PeerRelay", Bool())
    exit_node_id: str = _text("ExitNodeID")
    location: Location | None = wire("Location", Obj(Location))
    tpm: TPMInfo | None = wire("TPM", Obj(TPMInfo))
    state_encrypted: bool | None = wire("StateEncrypted", OptBool())
    # Not on the wire: what the server changed on the way in (trimmed or repaired fields),
    # for the caller to log once.
    notes: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def preferred_derp(self) -> int:
        return self.net_info.preferred_derp if self.net_info else 0

    def without_net_info(self) -> "Hostinfo":
        return dataclasses.replace(self, net_info=None)


def _is_peerapi(s: Service) -> bool:
    # Peers find a node's peer API (Taildrop, DNS through an exit node) in these entries.
    return s.proto.startswith("peerapi")


# Fields dropped, in this order, while the Hostinfo is over EXTRA_BUDGET. Each step returns
# the Hostinfo without that field (or that part of it).
TRIM_ORDER = (
    ("Services (other than peerapi)", lambda h: dataclasses.replace(h, services=tuple(s for s in h.services if _is_peerapi(s)))),
    ("WoLMACs", lambda h: dataclasses.replace(h, wol_macs=())),
    ("TPM", lambda h: dataclasses.replace(h, tpm=None)),
    ("Location", lambda h: dataclasses.replace(h, location=None)),
    ("PushDeviceToken", lambda h: dataclasses.replace(h, push_device_token="")),
    ("NetInfo.DERPLatency", lambda h: dataclasses.replace(
        h, net_info=dataclasses.replace(h.net_info, derp_latency={}) if h.net_info else None)),
    ("sshHostKeys", lambda h: dataclasses.replace(h, ssh_host_keys=())),
    ("Services", lambda h: dataclasses.replace(h, services=())),
)


def extra_size(h: Hostinfo) -> int:
    """JSON characters of the Hostinfo beyond RoutableIPs and RequestTags."""
    doc = to_json(dataclasses.replace(h, routable_ips=(), request_tags=()))
    return len(json.dumps(doc, ensure_ascii=False, separators=(",", ":")))


def within_budget(h: Hostinfo) -> Hostinfo:
    """``h``, with fields the server does not use dropped (TRIM_ORDER) until the rest fits
    EXTRA_BUDGET; what was dropped is added to ``notes``."""
    if extra_size(h) <= EXTRA_BUDGET:
        return h
    dropped = []
    for name, trim in TRIM_ORDER:
        h2 = trim(h)
        if h2 != h:
            dropped.append(name)
            h = h2
        if extra_size(h) <= EXTRA_BUDGET:
            break
    note = f"over the {EXTRA_BUDGET}-character budget: dropped {', '.join(dropped)}"
    return dataclasses.replace(h, notes=h.notes + (note,))


def parse_hostinfo(data: Any, where: str) -> Hostinfo:
    """A Hostinfo object from a client → Hostinfo. Raises WireError naming the bad field."""
    return within_budget(from_json(Hostinfo, data, where))


@dataclasses.dataclass(frozen=True)
class HostinfoKind(Kind):
    """The kind of a Hostinfo inside a request: parsed, then kept within its budget."""

    def parse(self, v: Any, where: str) -> Hostinfo:
        return parse_hostinfo(v, where)

    def parse_lenient(self, v: Any, where: str, notes: list[str]) -> Hostinfo:
        return within_budget(from_json(Hostinfo, v, where, notes=notes))


HOSTINFO = HostinfoKind()


def stored_hostinfo(text: str | None) -> Hostinfo:
    """Hostinfo read back from the database, written by this or an older version: never
    raises. What would be refused today is dropped and said in ``notes``."""
    try:
        data = json.loads(text) if text else {}
    except (ValueError, RecursionError):
        return Hostinfo(notes=("stored Hostinfo is not JSON: replaced by an empty one",))
    return hostinfo_from_stored(data)


def hostinfo_from_stored(data: Any) -> Hostinfo:
    """Hostinfo kept by an older version or another server (a decoded JSON value): never
    raises. What would be refused today is dropped and said in ``notes``."""
    if not isinstance(data, dict):
        return Hostinfo(notes=("stored Hostinfo is not an object: replaced by an empty one",))
    notes: list[str] = []
    h = HOSTINFO.parse_lenient(data, "Hostinfo", notes)
    return dataclasses.replace(h, notes=tuple(notes) + h.notes)
