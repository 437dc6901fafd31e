"""Aliases: the names a policy uses for sets of nodes and addresses.

An alias is "*", a user login, "group:…", "tag:…", "autogroup:…", a host
name from "hosts", or an IP/CIDR literal.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .errors import ValidationError

AUTOGROUPS = {
    "member", "tagged", "self", "internet", "danger-all", "nonroot",
    "admin", "owner", "it-admin", "network-admin", "billing-admin", "auditor",
    "shared",
}


@dataclass(frozen=True, slots=True)
class Alias:
    kind: str   # wildcard | user | domain | group | tag | autogroup | host | prefix
    value: str

    def __str__(self) -> str:
        return self.value


WILDCARD = Alias("wildcard", "*")


def is_prefix(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def parse_alias(text: str, hosts: dict[str, str]) -> Alias:
    """Classify one alias. Raises ValidationError for a malformed one.

    Order matters as in Tailscale: a host named like a user is impossible
    (hosts may not contain "@"), and IP literals win over host names.
    """
    if text == "*":
        return WILDCARD
    if text.startswith("group:"):
        return Alias("group", text)
    if text.startswith("tag:"):
        return Alias("tag", text)
    if text.startswith("autogroup:"):
        name = text[len("autogroup:"):]
        if name not in AUTOGROUPS:
            raise ValidationError(f'"{text}": unknown autogroup')
        return Alias("autogroup", text)
    if text.startswith("user:*@"):
        # Every user whose login is in the domain (SSH sources).
        return Alias("domain", text)
    if "@" in text:
        return Alias("user", text)
    if is_prefix(text):
        return Alias("prefix", text)
    if text in hosts:
        return Alias("host", text)
    raise ValidationError(f'"{text}": invalid address')


def split_dst_port(text: str) -> tuple[str, str]:
    """Split an ACL dst "alias:ports" at its last colon.

    IPv6 literals may be bracketed ("[fd7a::1]:22"), as Tailscale allows.
    """
    if text.startswith("["):
        end = text.find("]")
        if end > 0 and text[end + 1:end + 2] == ":":
            return text[1:end], text[end + 2:]
    host, sep, ports = text.rpartition(":")
    if not sep:
        raise ValidationError(f'dst="{text}": missing port')
    return host, ports
