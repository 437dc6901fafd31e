"""Records read back at start, held to today's rules.

A database written by an older version, edited by hand or imported from Headscale may hold
values the boundary refuses today (issue 10: one node's ``RoutableIPs: ["garbage"]`` made the
policy compiler raise at every start). Each node is checked here on its own: what can be
repaired is repaired in memory and logged (the store gets the repaired record on the node's
next write); a node that cannot be served at all (no usable key or address, an owner that does
not exist) is left out and logged, and stays in the database for an admin to inspect. Nothing
found here stops the server from starting, and one node's data never affects another's.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from typing import Iterable

from ..control.codec import AddrPort, KeyText, Prefix, WireError
from ..errors import Invalid
from ..storage.records import NodeRecord, PreAuthKeyRecord
from .names import InvalidName, check_given_name, check_tag, dns_label, unique_name

log = logging.getLogger(__name__)


class Unusable(Exception):
    """A stored node that cannot be served (the message says why)."""


def _address(text: str | None, version: int, notes: list[str]) -> str | None:
    if text is None:
        return None
    try:
        ip = ipaddress.ip_address(text)
        if ip.version == version:
            return str(ip)
    except ValueError:
        pass
    notes.append(f"dropped the unusable IPv{version} address {str(text)[:48]!r}")
    return None


def _valid(items: Iterable, check, what: str, notes: list[str]) -> tuple[str, ...]:
    out = []
    for x in items:
        try:
            out.append(check(x))
        except (WireError, Invalid, TypeError, ValueError):
            notes.append(f"dropped the {what} {str(x)[:64]!r}")
    return tuple(dict.fromkeys(out))


def check_node(n: NodeRecord, user_ids: set[int]) -> tuple[NodeRecord, list[str]]:
    """The node as today's rules allow it, and what was changed; raises Unusable."""
    try:
        machine_key = KeyText("mkey").parse(n.machine_key, "machine key")
        node_key = KeyText("nodekey", nonzero=True).parse(n.node_key, "node key")
    except WireError as e:
        raise Unusable(str(e)) from None
    notes = list(n.hostinfo.notes)
    disco = ""
    if n.disco_key:
        try:
            disco = KeyText("discokey", zero_is_absent=True).parse(n.disco_key, "disco key")
        except WireError as e:
            notes.append(f"dropped {e}")
    ipv4 = _address(n.ipv4, 4, notes)
    ipv6 = _address(n.ipv6, 6, notes)
    if ipv4 is None and ipv6 is None:
        raise Unusable("it has no usable address")
    tags = _valid(n.tags, check_tag, "tag", notes)
    user_id = n.user_id
    if user_id is not None and user_id not in user_ids:
        if not tags:
            raise Unusable(f"its user {user_id} does not exist")
        notes.append(f"its user {user_id} does not exist; it stays a tagged node")
        user_id = None
    routes = _valid(n.approved_routes, lambda r: Prefix().parse(r, "route"), "approved route", notes)
    endpoints = _valid(n.endpoints, lambda e: AddrPort().parse(e, "endpoint"), "endpoint", notes)
    fixed = dataclasses.replace(
        n, machine_key=machine_key, node_key=node_key, disco_key=disco, ipv4=ipv4, ipv6=ipv6,
        tags=tags, user_id=user_id, approved_routes=routes, endpoints=endpoints,
        hostinfo=dataclasses.replace(n.hostinfo, notes=()),
    )
    return fixed, notes


def checked_nodes(nodes: Iterable[NodeRecord], user_ids: set[int]) -> list[NodeRecord]:
    """The nodes the server can serve, repaired where they break today's rules (logged)."""
    nodes = list(nodes)
    usable: list[tuple[NodeRecord, NodeRecord, list[str]]] = []
    node_keys: set[str] = set()
    for n in nodes:
        try:
            fixed, notes = check_node(n, user_ids)
            if fixed.node_key in node_keys:
                raise Unusable("another node has the same node key")
        except Unusable as e:
            log.warning("node %d left out at start: %s (it stays in the database)", n.id, e)
            continue
        node_keys.add(fixed.node_key)
        usable.append((n, fixed, notes))
    # Names stay where they are valid and unique (the skipped nodes' too: their rows keep
    # them); the others get a fresh one from the hostname.
    taken = {n.given_name for n in nodes}
    kept: set[str] = set()
    out = []
    for n, fixed, notes in usable:
        try:
            check_given_name(fixed.given_name)
            if fixed.given_name in kept:
                raise InvalidName("taken")
        except InvalidName:
            new = unique_name(dns_label(fixed.hostinfo.hostname or fixed.hostname), taken)
            notes.append(f"renamed from {fixed.given_name[:64]!r} to {new!r}")
            fixed = dataclasses.replace(fixed, given_name=new)
            taken.add(new)
        kept.add(fixed.given_name)
        if notes:
            log.warning("node %d (%s) repaired at start: %s", n.id, fixed.given_name, "; ".join(notes))
        out.append(fixed)
    return out


def checked_keys(keys: Iterable[PreAuthKeyRecord]) -> list[PreAuthKeyRecord]:
    """Pre-auth keys with tags that are not tags dropped (they would be given to nodes)."""
    out = []
    for k in keys:
        notes: list[str] = []
        tags = _valid(k.tags, check_tag, "tag", notes)
        if notes:
            log.warning("pre-auth key %d repaired at start: %s", k.id, "; ".join(notes))
            k = dataclasses.replace(k, tags=tags)
        out.append(k)
    return out
