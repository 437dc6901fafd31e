"""The DNSConfig every node gets, from the dns.* settings (Headscale's keys), and the
extra-records file that is re-read when it changes."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import trio

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0


def load_extra_records(path: Path) -> tuple[dict, ...]:
    """Headscale's extra_records_path format: a JSON list of {"name", "type", "value"}.
    Raises ValueError with the reason."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, list):
        raise ValueError("expected a JSON list of records")
    out = []
    for i, r in enumerate(data):
        if not isinstance(r, dict) or not all(isinstance(r.get(k), str) for k in ("name", "value")):
            raise ValueError(f"record {i}: expected an object with string name, type and value")
        out.append({"name": r["name"], "type": r.get("type") or "A", "value": r["value"]})
    return tuple(out)


class DNSConfigSource:
    """The current DNSConfig; ``watch`` re-reads dns.extra_records_path and calls
    ``on_change`` when the records differ."""

    def __init__(self, dns: Any, on_change: Callable[[], None]) -> None:
        self.dns = dns
        self.on_change = on_change
        self.records: tuple[dict, ...] = tuple(dns.extra_records)
        self._mtime: float | None = None
        if dns.extra_records_path:
            try:
                self.records = load_extra_records(dns.extra_records_path)
                self._mtime = Path(dns.extra_records_path).stat().st_mtime
            except (OSError, ValueError) as e:
                log.error("dns.extra_records_path: %s: %s", dns.extra_records_path, e)
        self._api_records: tuple[dict, ...] | None = None
        self._config = build_dns_config(dns, self.records)

    def current(self) -> dict | None:
        return self._config

    def apply(self, dns: Any, records: tuple[dict, ...] | None) -> None:
        """Settings changed through the admin API (config.yaml's with its changes). ``records``,
        unless None, replace those of dns.extra_records and of the extra_records_path file."""
        self.dns, self._api_records = dns, records
        self._rebuild()

    def _rebuild(self) -> None:
        config = build_dns_config(self.dns, self.records if self._api_records is None else self._api_records)
        if config != self._config:
            self._config = config
            self.on_change()

    async def watch(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        path = self.dns.extra_records_path
        if not path:
            return
        while True:
            await trio.sleep(POLL_INTERVAL)
            try:
                mtime = Path(path).stat().st_mtime
                if mtime == self._mtime:
                    continue
                self._mtime = mtime
                records = load_extra_records(path)
            except (OSError, ValueError) as e:
                log.error("dns.extra_records_path: %s not applied, keeping the previous records: %s", path, e)
                continue
            if records != self.records:
                self.records = records
                log.info("extra DNS records reloaded from %s (%d records)", path, len(records))
                self._rebuild()


def build_dns_config(dns: Any, extra_records: tuple[dict, ...] = ()) -> dict | None:
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
    if extra_records:
        out["ExtraRecords"] = [
            {"Name": r["name"], "Type": r.get("type") or "A", "Value": r["value"]} for r in extra_records
        ]
    return out or None
