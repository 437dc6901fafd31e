"""Settings an admin changes at run time through the API, kept in the database: DNS and extra
DERP regions. /api/v1/dns and /api/v1/derp.

How they combine with config.yaml: config.yaml gives every value; a DNS setting changed through
the API replaces config.yaml's value of that one setting (``magic_dns``, ``override_local_dns``,
``nameservers.global``, ``nameservers.split``, ``search_domains``, ``extra_records``), until it is
set to null, which gives config.yaml's value back. API extra records replace both
``dns.extra_records`` and the ``extra_records_path`` file's. ``base_domain`` stays config.yaml's
(it is part of every node's name). DERP regions set through the API are added to the map after
``derp.paths`` and ``derp.urls`` (a region of the same ID is replaced); the embedded region keeps
its ID. Changes reach connected clients at once.

What is stored is checked again at start with the same definitions; a stored value that no
longer passes is logged and ignored, never a reason not to start.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from typing import Any

from ..errors import Conflict, Invalid
from ..tailnet import names
from .backend import Backend
from ..tailnet.journal import Document
from .router import Call, Router
from .schema import (
    UNSET, Address, Bool, Enum, FieldError, Free, Int, List, Map, Nullable, Spec, Str, api_type, fld,
)

log = logging.getLogger(__name__)

DOMAIN = Str(min_len=1, max_len=253, check=names.check_domain, example="example.com",
             pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$")
NAMESERVER = Address(nameserver=True, doc="an IP address, or an https:// DNS-over-HTTPS URL")
GLOBAL_NS = List(NAMESERVER, max_items=32)
SPLIT_NS = Map(DOMAIN, List(NAMESERVER, max_items=16), max_items=256, doc="DNS suffix → its nameservers")
SEARCH_DOMAINS = List(DOMAIN, max_items=64)


@api_type
class ExtraRecord:
    name: str = fld(DOMAIN)
    type: str = fld(Enum("A", "AAAA"))
    value: str = fld(Address(doc="an IPv4 address for A, IPv6 for AAAA"))


EXTRA_RECORDS = List(ExtraRecord.spec, max_items=4096)

# Each setting the API may change: its key (config.yaml's, under dns.) and its definition.
DNS_KEYS: dict[str, Spec] = {
    "magic_dns": Bool(), "override_local_dns": Bool(), "nameservers.global": GLOBAL_NS,
    "nameservers.split": SPLIT_NS, "search_domains": SEARCH_DOMAINS, "extra_records": EXTRA_RECORDS,
}


@api_type
class Nameservers:
    global_: tuple = fld(GLOBAL_NS, json="global")
    split: dict = fld(SPLIT_NS)


@api_type
class DnsSettings:
    magic_dns: bool = fld(Bool())
    base_domain: str = fld(Str(max_len=253), doc="config.yaml's dns.base_domain (not changed by the API)")
    override_local_dns: bool = fld(Bool())
    nameservers: Nameservers = fld(Nameservers.spec)
    search_domains: tuple = fld(SEARCH_DOMAINS)
    extra_records: tuple = fld(EXTRA_RECORDS)
    changed_by_api: tuple = fld(List(Enum(*DNS_KEYS), max_items=len(DNS_KEYS)),
                                doc="the settings whose value comes from the API, not config.yaml")


@api_type
class NameserverChanges:
    global_: Any = fld(Nullable(GLOBAL_NS), json="global", default=UNSET)
    split: Any = fld(Nullable(SPLIT_NS), default=UNSET)


@api_type
class DnsChanges:
    """The settings to change; a field left out is kept, a field set to null goes back to
    config.yaml's value."""

    magic_dns: Any = fld(Nullable(Bool()), default=UNSET)
    override_local_dns: Any = fld(Nullable(Bool()), default=UNSET)
    nameservers: Any = fld(Nullable(NameserverChanges.spec), default=UNSET)
    search_domains: Any = fld(Nullable(SEARCH_DOMAINS), default=UNSET)
    extra_records: Any = fld(Nullable(EXTRA_RECORDS), default=UNSET)


_HOST = Str(min_len=1, max_len=253, check=names.check_domain)
_IP = Str(max_len=45, pattern=r"^[0-9a-fA-F:.]*$", doc="a literal address, so clients need no DNS; empty for none")


@api_type
class DerpNode:
    name: str = fld(Str(min_len=1, max_len=64, pattern=r"^[A-Za-z0-9_.-]+$"), json="Name")
    host_name: str = fld(_HOST, json="HostName")
    region_id: int = fld(Int(minimum=0, maximum=1 << 30), json="RegionID", default=0,
                         doc="0: the region's")
    ipv4: str = fld(_IP, json="IPv4", default="")
    ipv6: str = fld(_IP, json="IPv6", default="")
    stun_port: int = fld(Int(minimum=-1, maximum=65535), json="STUNPort", default=0, doc="0: 3478; -1: none")
    stun_only: bool = fld(Bool(), json="STUNOnly", default=False)
    derp_port: int = fld(Int(minimum=0, maximum=65535), json="DERPPort", default=0, doc="0: 443")
    can_port80: bool = fld(Bool(), json="CanPort80", default=False)


@api_type
class DerpRegion:
    """A region in Tailscale's DERPMap layout."""

    region_id: int = fld(Int(minimum=1, maximum=1 << 30), json="RegionID")
    region_code: str = fld(Str(min_len=1, max_len=32, pattern=r"^[A-Za-z0-9_-]+$"), json="RegionCode")
    nodes: tuple = fld(List(DerpNode.spec, max_items=32), json="Nodes")
    region_name: str = fld(Str(max_len=128), json="RegionName", default="")
    avoid: bool = fld(Bool(), json="Avoid", default=False)
    no_measure_no_home: bool = fld(Bool(), json="NoMeasureNoHome", default=False)


@api_type
class DerpRegions:
    regions: tuple = fld(List(DerpRegion.spec, max_items=256))


@api_type
class DerpMapResponse:
    derp_map: dict = fld(Free(doc="the DERP map every client gets, in Tailscale's layout"))
    regions: tuple = fld(List(DerpRegion.spec, max_items=256), doc="the regions added through the API")


DNS = "dns"
DERP_REGIONS = "derp.regions"


def _address_matches(record: ExtraRecord) -> None:
    version = 4 if record.type == "A" else 6
    if ipaddress.ip_address(record.value).version != version:
        raise Invalid(f"extra record {record.name}: an {record.type} record needs an IPv{version} address")


class RuntimeSettings:
    """The stored changes, applied to the live DNS and DERP map sources.

    Args:
        store: where the changes are kept (``settings`` table).
        config: the loaded config.yaml.
        dns_source: control.dnsconfig.DNSConfigSource (None: DNS not served).
        derp_source: relay.DerpMapSource (None: no DERP map).
        derp_changed: tells connected clients that the DERP map changed.
    """

    def __init__(self, store, config, dns_source=None, derp_source=None, derp_changed=lambda: None,
                 clock=None) -> None:
        self.store, self.config, self.clock = store, config, clock
        self.dns_source, self.derp_source, self.derp_changed = dns_source, derp_source, derp_changed
        self.dns: dict[str, Any] = {}  # DNS_KEYS key → typed value
        self.regions: tuple[DerpRegion, ...] = ()

    async def load(self) -> None:
        stored = await self.store.get_settings()
        for key, value in (stored.get(DNS) or {}).items():
            try:
                self.dns[key] = DNS_KEYS[key].parse(value, f"dns.{key}")
            except (KeyError, FieldError) as e:
                log.error("stored DNS setting %s ignored (config.yaml's value counts): %s", key, e)
        try:
            self.regions = DerpRegions.spec.parse({"regions": stored.get(DERP_REGIONS) or []}, "").regions
        except FieldError as e:
            log.error("stored DERP regions ignored: %s", e)
        self._apply_dns()
        self._apply_derp()

    # --- DNS ----------------------------------------------------------------------------

    def effective_dns(self):
        """config.yaml's dns settings with the API's changes."""
        d = self.dns
        changes = {
            "magic_dns": d.get("magic_dns"), "override_local_dns": d.get("override_local_dns"),
            "nameservers_global": d.get("nameservers.global"),
            "nameservers_split": d.get("nameservers.split"), "search_domains": d.get("search_domains"),
        }
        return dataclasses.replace(self.config.dns, **{k: v for k, v in changes.items() if v is not None})

    def _records(self) -> tuple[dict, ...] | None:
        if "extra_records" not in self.dns:
            return None
        return tuple({"name": r.name, "type": r.type, "value": r.value} for r in self.dns["extra_records"])

    def _apply_dns(self) -> None:
        if self.dns_source is not None:
            self.dns_source.apply(self.effective_dns(), self._records())

    def dns_view(self) -> DnsSettings:
        eff = self.effective_dns()
        records = self._records()
        if records is None:
            records = self.dns_source.records if self.dns_source is not None else eff.extra_records
        return DnsSettings(
            magic_dns=eff.magic_dns, base_domain=eff.base_domain, override_local_dns=eff.override_local_dns,
            nameservers=Nameservers(tuple(eff.nameservers_global), dict(eff.nameservers_split)),
            search_domains=tuple(eff.search_domains),
            extra_records=tuple(ExtraRecord(r["name"], r.get("type") or "A", r["value"]) for r in records),
            changed_by_api=tuple(k for k in DNS_KEYS if k in self.dns),
        )

    async def change_dns(self, changes: DnsChanges) -> None:
        new = dict(self.dns)
        ns = changes.nameservers
        wanted = {
            "magic_dns": changes.magic_dns, "override_local_dns": changes.override_local_dns,
            "nameservers.global": UNSET if ns is UNSET else (None if ns is None else ns.global_),
            "nameservers.split": UNSET if ns is UNSET else (None if ns is None else ns.split),
            "search_domains": changes.search_domains, "extra_records": changes.extra_records,
        }
        for key, value in wanted.items():
            if value is None:
                new.pop(key, None)
            elif value is not UNSET:
                new[key] = value
        for r in new.get("extra_records", ()):
            _address_matches(r)
        magic = new.get("magic_dns", self.config.dns.magic_dns)
        if magic and not self.config.dns.base_domain:
            raise Invalid("MagicDNS needs dns.base_domain, which is set in config.yaml")
        doc = {k: DNS_KEYS[k].dump(v) for k, v in new.items()}
        await self.store.put_setting(DNS, doc or None, self.clock())
        self.dns = new
        self._apply_dns()

    # --- DERP ---------------------------------------------------------------------------

    def _apply_derp(self) -> bool:
        if self.derp_source is None:
            return False
        return self.derp_source.set_api_regions(
            {str(r.region_id): _region_json(r) for r in self.regions})

    async def set_regions(self, regions: tuple[DerpRegion, ...]) -> None:
        ids = [r.region_id for r in regions]
        if len(set(ids)) != len(ids):
            raise Invalid("two regions have the same RegionID")
        derp = self.config.derp
        if derp.server_enabled and derp.automatically_add_embedded_derp_region and derp.region_id in ids:
            raise Conflict(f"region {derp.region_id} is the embedded relay's (derp.server.region_id)")
        for r in regions:
            for n in r.nodes:
                if n.region_id not in (0, r.region_id):
                    raise Invalid(f"node {n.name}: RegionID {n.region_id} is not its region's ({r.region_id})")
                for value, version in ((n.ipv4, 4), (n.ipv6, 6)):
                    if value and not _is_ip(value, version):
                        raise Invalid(f"node {n.name}: {value!r} is not an IPv{version} address")
        doc = [DerpRegion.spec.dump(r) for r in regions]
        await self.store.put_setting(DERP_REGIONS, doc or None, self.clock())
        self.regions = tuple(regions)
        if self._apply_derp():
            self.derp_changed()

    # --- the settings view --------------------------------------------------------------

    def applied_to(self, doc: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
        """``config_to_dict`` output with the API's changes; and the changed keys."""
        dns = doc.setdefault("dns", {})
        changed = []
        for key, value in self.dns.items():
            parent, _, leaf = ("dns." + key).rpartition(".")
            target = dns if parent == "dns" else dns.setdefault("nameservers", {})
            target[leaf] = DNS_KEYS[key].dump(value)
            changed.append("dns." + key)
        if self.regions:
            doc.setdefault("derp", {})["api_regions"] = [DerpRegion.spec.dump(r) for r in self.regions]
            changed.append("derp.api_regions")
        return doc, tuple(changed)


def _is_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def _region_json(r: DerpRegion) -> dict:
    out = DerpRegion.spec.dump(r)
    for n in out["Nodes"]:
        n["RegionID"] = n["RegionID"] or r.region_id
        for k in ("IPv4", "IPv6"):
            if not n[k]:
                del n[k]
    return out


def routes(r: Router, b: Backend) -> None:
    @r.get("/api/v1/dns", "getDns", "The DNS settings clients get", tag="DNS", response=DnsSettings,
           description="config.yaml's dns.* with the changes made through the API.")
    async def get_dns(call: Call) -> DnsSettings:
        return b.runtime.dns_view()

    @r.patch("/api/v1/dns", "updateDns", "Change DNS settings", tag="DNS", body=DnsChanges,
             response=DnsSettings, changes=True,
             description="A field left out is kept; null gives config.yaml's value back. Stored in "
                         "the database; clients get the new settings at once.")
    async def update_dns(call: Call, body: DnsChanges) -> DnsSettings:
        before = DnsSettings.spec.dump(b.runtime.dns_view())
        await b.runtime.change_dns(body)
        after = b.runtime.dns_view()
        b.journal.change("updateDns", Document("dns", before, name="dns"),
                         Document("dns", DnsSettings.spec.dump(after), name="dns"))
        return after

    @r.get("/api/v1/derp", "getDerpMap", "The DERP map clients get", tag="DERP", response=DerpMapResponse)
    async def get_derp(call: Call) -> DerpMapResponse:
        current = b.runtime.derp_source.current() if b.runtime.derp_source is not None else {"Regions": {}}
        return DerpMapResponse(current, b.runtime.regions)

    @r.put("/api/v1/derp/regions", "setDerpRegions", "Set the DERP regions added through the API",
           tag="DERP", body=DerpRegions, response=DerpMapResponse, errors=(409,), changes=True,
           description="Replaces the API's regions (an empty list removes them); derp.paths, derp.urls "
                       "and the embedded region stay.")
    async def set_regions(call: Call, body: DerpRegions) -> DerpMapResponse:
        before = DerpRegions.spec.dump(DerpRegions(b.runtime.regions))
        await b.runtime.set_regions(body.regions)
        b.journal.change("setDerpRegions", Document("derp", before, name="derp regions"),
                         Document("derp", DerpRegions.spec.dump(DerpRegions(b.runtime.regions)), name="derp regions"))
        return await get_derp(call)
