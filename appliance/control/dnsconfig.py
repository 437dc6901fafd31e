"""The DNSConfig every node gets, from the dns.* settings (Headscale's keys)."""

from __future__ import annotations

from typing import Any


def build_dns_config(dns: Any) -> dict | None:
    """``dns`` is config.DNSSettings. None when there is nothing to tell clients."""
    out: dict[str, Any] = {}
    routes: dict[str, list] = {}
    domains: list[str] = []
    if dns.magic_dns and dns.base_domain:
        # An empty list (not null) means "answer this suffix locally"; null is dropped by the
        # client when it copies its DNS config (Headscale hit that).
        routes[dns.base_domain] = []
        domains.append(dns.base_domain)
        out["Proxied"] = True
    if dns.override_local_dns and dns.nameservers_global:
        out["Resolvers"] = [{"Addr": a} for a in dns.nameservers_global]
    elif dns.nameservers_global:
        out["FallbackResolvers"] = [{"Addr": a} for a in dns.nameservers_global]
    for suffix, servers in dns.nameservers_split.items():
        routes[suffix] = [{"Addr": a} for a in servers]
    for d in dns.search_domains:
        if d not in domains:
            domains.append(d)
    if routes:
        out["Routes"] = routes
    if domains:
        out["Domains"] = domains
    if dns.extra_records:
        out["ExtraRecords"] = [
            {"Name": r["name"], "Type": r.get("type", "A"), "Value": r["value"]} for r in dns.extra_records
        ]
    return out or None
