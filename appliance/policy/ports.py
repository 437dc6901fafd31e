"""Ports and IP protocols as written in ACLs and grants."""

from __future__ import annotations

from .errors import ValidationError

ALL_PORTS = ((0, 65535),)

# IANA numbers for the protocol names Tailscale accepts in "proto" and in
# grant "ip" entries (tailscale.com/kb/1337/policy-syntax#proto).
PROTOCOLS: dict[str, tuple[int, ...]] = {
    "icmp": (1,),
    "igmp": (2,),
    "ipv4": (4,),
    "ip-in-ip": (4,),
    "tcp": (6,),
    "egp": (8,),
    "igp": (9,),
    "udp": (17,),
    "gre": (47,),
    "esp": (50,),
    "ah": (51,),
    "ipv6-icmp": (58,),
    "sctp": (132,),
}

# Protocols without ports: a rule naming one of these with specific ports is
# meaningless, and Tailscale writes them with the full port range.
PORTLESS = {1, 2, 4, 8, 9, 47, 50, 51, 58}


def parse_ports(text: str) -> tuple[tuple[int, int], ...]:
    """Parse "*", "22", "80-443" or "22,80,443-445" into inclusive ranges.

    Raises ValidationError with Tailscale's wording.
    """
    if text == "*":
        return ALL_PORTS
    out = []
    for part in text.split(","):
        first_s, sep, last_s = part.partition("-")
        first = _port(first_s, part, "first")
        last = _port(last_s, part, "last") if sep else first
        if first == 0 and not (sep and last == 65535):
            # Port 0 is not a real port; Tailscale points the user at "*".
            raise ValidationError(
                f'port range "{part}": first port must be >0, or use \'*\' for wildcard')
        if last < first:
            raise ValidationError(f'port range "{part}": last port must be >= first port')
        out.append((first, last))
    return tuple(out)


def _port(s: str, part: str, which: str) -> int:
    if not s.isdigit():
        raise ValidationError(f'port range "{part}": invalid {which} integer')
    n = int(s)
    if n > 65535:
        raise ValidationError(f'port range "{part}": invalid {which} integer')
    return n


def parse_proto(value: str) -> tuple[int, ...]:
    """A protocol name or IANA number; "" means Tailscale's default set."""
    v = value.strip().lower()
    if v in PROTOCOLS:
        return PROTOCOLS[v]
    if v.isdigit() and 0 <= int(v) <= 255:
        return (int(v),)
    raise ValidationError(f'proto "{value}": unknown protocol')
