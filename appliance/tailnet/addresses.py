"""Tailnet address allocation (pure: the caller says which addresses are taken)."""

from __future__ import annotations

import ipaddress
import random
from typing import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Addresses the client gives other meanings to: MagicDNS's resolvers, and the range
# ChromeOS VMs use inside 100.64/10 (the client routes it locally).
RESERVED = (
    ipaddress.ip_network("100.100.100.100/32"),
    ipaddress.ip_network("100.115.92.0/23"),
    ipaddress.ip_network("fd7a:115c:a1e0::53/128"),
)


class PoolExhausted(Exception):
    pass


def _usable(net: IPNetwork, addr: IPAddress) -> bool:
    if addr == net.network_address:
        return False
    if net.version == 4 and addr == net.broadcast_address:
        return False
    return not any(addr in r for r in RESERVED if r.version == net.version)


class AddressPool:
    """One prefix's allocator. ``sequential`` continues after the last address it handed out
    (so a freed address is not reused at once); ``random`` picks uniformly."""

    def __init__(self, network: IPNetwork, strategy: str = "sequential", rng: random.Random | None = None) -> None:
        if strategy not in ("sequential", "random"):
            raise ValueError(f"unknown allocation strategy {strategy!r}")
        self.network = network
        self.strategy = strategy
        self._rng = rng or random.SystemRandom()
        self._used: set[IPAddress] = set()
        self._last = int(network.network_address)

    def mark_used(self, addrs: Iterable[IPAddress | str | None]) -> None:
        for a in addrs:
            if a is None:
                continue
            a = ipaddress.ip_address(a)
            if a in self.network:
                self._used.add(a)
                self._last = max(self._last, int(a))

    def release(self, addr: IPAddress | str | None) -> None:
        if addr is not None:
            self._used.discard(ipaddress.ip_address(addr))

    def allocate(self) -> IPAddress:
        net = self.network
        first, last = int(net.network_address), int(net.broadcast_address)
        size = last - first + 1
        cls = type(net.network_address)
        if self.strategy == "random":
            for _ in range(64):
                cand = cls(first + self._rng.randrange(size))
                if cand not in self._used and _usable(net, cand):
                    return self._take(cand)
        start = self._last + 1 if self.strategy == "sequential" else first
        for i in range(min(size, len(self._used) + 1 + len(RESERVED) * 512 + 2)):
            value = start + i
            if value > last:
                value = first + (value - last - 1)
            cand = cls(value)
            if cand not in self._used and _usable(net, cand):
                return self._take(cand)
        # The bounded probe above covers every prefix that is not nearly full; the rest scans.
        for value in range(first, last + 1):
            cand = cls(value)
            if cand not in self._used and _usable(net, cand):
                return self._take(cand)
        raise PoolExhausted(f"no free address left in {net}")

    def _take(self, addr: IPAddress) -> IPAddress:
        self._used.add(addr)
        self._last = int(addr)
        return addr
