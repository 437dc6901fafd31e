"""Sets of IP addresses as sorted, merged integer intervals, per family.

Filter rules name addresses as single IPs, CIDR prefixes or inclusive ranges
("100.64.0.0-100.115.91.255"); the client treats them all as sets, so the
compiler works with sets and only picks a spelling when it writes a rule.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

_BITS = {4: 32, 6: 128}


def _interval(text: str) -> tuple[int, int, int]:
    """(family, first, last) for an IP, a CIDR or an inclusive range."""
    if "-" in text:
        a, b = text.split("-", 1)
        lo, hi = ipaddress.ip_address(a), ipaddress.ip_address(b)
        if lo.version != hi.version or int(lo) > int(hi):
            raise ValueError(f"invalid IP range {text!r}")
        return lo.version, int(lo), int(hi)
    net = ipaddress.ip_network(text, strict=False)
    return net.version, int(net.network_address), int(net.broadcast_address)


def _merge(ivs: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    ivs = sorted(ivs)
    out: list[list[int]] = []
    for lo, hi in ivs:
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1][1] = hi
        else:
            out.append([lo, hi])
    return tuple((a, b) for a, b in out)


@dataclass(frozen=True, slots=True)
class IPSet:
    v4: tuple[tuple[int, int], ...] = ()
    v6: tuple[tuple[int, int], ...] = ()

    @classmethod
    def parse(cls, *items: str) -> "IPSet":
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        for item in items:
            fam, lo, hi = _interval(item)
            (v4 if fam == 4 else v6).append((lo, hi))
        return cls(_merge(v4), _merge(v6))

    @classmethod
    def union_all(cls, sets) -> "IPSet":
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        for s in sets:
            v4.extend(s.v4)
            v6.extend(s.v6)
        return cls(_merge(v4), _merge(v6))

    def __or__(self, other: "IPSet") -> "IPSet":
        return IPSet(_merge(list(self.v4) + list(other.v4)),
                     _merge(list(self.v6) + list(other.v6)))

    def __sub__(self, other: "IPSet") -> "IPSet":
        return IPSet(_subtract(self.v4, other.v4), _subtract(self.v6, other.v6))

    def __bool__(self) -> bool:
        return bool(self.v4 or self.v6)

    def overlaps(self, other: "IPSet") -> bool:
        return _overlaps(self.v4, other.v4) or _overlaps(self.v6, other.v6)

    def contains_set(self, other: "IPSet") -> bool:
        return not (other - self)

    def intersection(self, other: "IPSet") -> "IPSet":
        return self - (self - other)

    def strings(self) -> list[str]:
        """Tailscale's spelling: a bare IP, a CIDR, or a first-last range."""
        out = []
        for fam, ivs in ((4, self.v4), (6, self.v6)):
            for lo, hi in ivs:
                out.append(_spell(fam, lo, hi))
        return out

    def prefixes(self) -> list[str]:
        """The set as a minimal list of CIDR prefixes (always with a length)."""
        out = []
        for fam, ivs in ((4, self.v4), (6, self.v6)):
            cls = ipaddress.IPv4Address if fam == 4 else ipaddress.IPv6Address
            for lo, hi in ivs:
                out.extend(str(n) for n in ipaddress.summarize_address_range(cls(lo), cls(hi)))
        return out


def _spell(fam: int, lo: int, hi: int) -> str:
    cls = ipaddress.IPv4Address if fam == 4 else ipaddress.IPv6Address
    if lo == hi:
        return str(cls(lo))
    size = hi - lo + 1
    if size & (size - 1) == 0 and lo % size == 0:
        plen = _BITS[fam] - size.bit_length() + 1
        return f"{cls(lo)}/{plen}"
    return f"{cls(lo)}-{cls(hi)}"


def _overlaps(a, b) -> bool:
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i][1] < b[j][0]:
            i += 1
        elif b[j][1] < a[i][0]:
            j += 1
        else:
            return True
    return False


def _subtract(a, b):
    out = []
    for lo, hi in a:
        cur = lo
        for blo, bhi in b:
            if bhi < cur or blo > hi:
                continue
            if blo > cur:
                out.append((cur, blo - 1))
            cur = max(cur, bhi + 1)
            if cur > hi:
                break
        if cur <= hi:
            out.append((cur, hi))
    return tuple(out)


EMPTY = IPSet()
# Tailscale's address space: 100.64.0.0/10 minus 100.115.92.0/23 (kept for
# ChromeOS VMs and Quad100 services, never assigned to nodes), plus the ULA /48.
TAILNET_SPACE = IPSet.parse("100.64.0.0/10", "fd7a:115c:a1e0::/48") - IPSet.parse("100.115.92.0/23")
EXIT_ROUTES = IPSet.parse("0.0.0.0/0", "::/0")
