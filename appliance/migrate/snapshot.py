"""The export document: everything a trioscale server holds, as one JSON file.

``trioscale export FILE`` writes it (mode 0600: it holds the server's private keys);
``trioscale import trioscale FILE`` reads it into an empty server. Export, import and export
again give the same bytes. Layout (every time is RFC 3339 in UTC, ``null`` when unset)::

    {
      "format": "trioscale-export", "version": 2,
      "noise_private_key": "privkey:<64 hex>",     # the key clients know the server by
      "derp_private_key": "privkey:<64 hex>" | null,
      "users":        [{"id", "name", "display_name", "email", "provider", "provider_id",
                        "profile_pic_url", "created_at",
                        "role",            # owner, admin, network-admin, it-admin, billing-admin, auditor, member
                        "groups"}],        # from the identity provider at the last sign-in
      "pre_auth_keys":[{"id", "prefix", "hash", "user_id", "reusable", "ephemeral", "used",
                        "tags", "created_at", "expiration", "pre_approved"}],
      "api_keys":     [{"id", "prefix", "hash", "created_at", "expiration", "last_seen"}],
      "nodes":        [{"id", "machine_key", "node_key", "disco_key", "ipv4", "ipv6",
                        "hostname", "given_name", "user_id", "auth_key_id", "tags", "hostinfo",
                        "endpoints", "expiry", "last_seen", "created_at", "approved_routes",
                        "ephemeral", "register_method",
                        "authorized"}],    # false: waits for device approval
      "policies":     [{"id", "data", "created_at"}],  # policy.mode database; newest last
      "settings":     [{"name", "value", "updated_at"}], # changed through the API (DNS, DERP)
      "webhooks":     [{"id", "url", "secret", "events", "created_at"}]  # added through the API
    }

Version 1 (before sign-in for people) lacks the fields marked above; it is read with their
defaults (role member, no groups, not pre-approved, authorized). Versions 1 and 2 have no
webhooks. The audit log, the webhooks' delivery logs and the chart samples are not exported. Key hashes are as stored: SHA-256 hex of the key text for trioscale's keys, bcrypt for keys
imported from Headscale (see appliance/tailnet/secrets.py). The configuration file is not part
of the document: copy config.yaml along with it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from ..control.codec import WireError, to_json
from ..events.types import ALL, EVENT_TYPES
from ..control.hostinfo import Hostinfo, parse_hostinfo
from ..keys import KeyFormatError, decode_key
from ..policy.model import ROLES
from ..storage.records import (
    ApiKeyRecord,
    NodeRecord,
    PolicyRecord,
    PreAuthKeyRecord,
    SettingRecord,
    Snapshot,
    UserRecord,
    WebhookRecord,
)
from ..tailnet.names import GROUPS_MAX, InvalidName, check_group
from .errors import ImportRefused

FORMAT = "trioscale-export"
VERSION = 3
# Fields version 2 added; a version 1 document is read with their defaults.
ADDED_IN_2 = {"users": {"role", "groups"}, "pre_auth_keys": {"pre_approved"}, "nodes": {"authorized"}}
MAX_DOCUMENT = 512 * 1024 * 1024  # refuse to parse more: a document of 100k nodes is ~200 MB

# list name in the document -> (record class, Snapshot field)
SECTIONS: dict[str, tuple[type, str]] = {
    "users": (UserRecord, "users"),
    "pre_auth_keys": (PreAuthKeyRecord, "preauth_keys"),
    "api_keys": (ApiKeyRecord, "api_keys"),
    "nodes": (NodeRecord, "nodes"),
    "policies": (PolicyRecord, "policies"),
    "settings": (SettingRecord, "settings"),
    "webhooks": (WebhookRecord, "webhooks"),
}
_NOT_STORED = {"extra"}  # NodeRecord.extra is a cache, not data


@dataclass(frozen=True)
class Export:
    snapshot: Snapshot
    noise_private_key: bytes
    derp_private_key: bytes | None = None


def _time(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _out(value: Any) -> Any:
    if isinstance(value, datetime):
        return _time(value)
    if isinstance(value, Hostinfo):
        return to_json(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def to_document(export: Export) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format": FORMAT, "version": VERSION,
        "noise_private_key": "privkey:" + export.noise_private_key.hex(),
        "derp_private_key": None if export.derp_private_key is None else "privkey:" + export.derp_private_key.hex(),
    }
    for name, (cls, attr) in SECTIONS.items():
        doc[name] = [
            {f.name: _out(getattr(rec, f.name)) for f in dataclasses.fields(cls) if f.name not in _NOT_STORED}
            for rec in getattr(export.snapshot, attr)
        ]
    return doc


def dumps(export: Export) -> str:
    return json.dumps(to_document(export), indent=2, ensure_ascii=False) + "\n"


# --- reading: every value checked once, here ----------------------------------------------


def _bad(where: str, what: str, value: Any) -> ImportRefused:
    return ImportRefused(f"{where}: expected {what}, got {json.dumps(value)[:80]}")


def _parse_time(value: Any, where: str) -> datetime:
    if isinstance(value, str):
        try:
            t = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if t.tzinfo is not None:
                return t.astimezone(timezone.utc)
        except ValueError:
            pass
    raise _bad(where, "an RFC 3339 time with a zone", value)


def _field(annotation: str, value: Any, where: str) -> Any:
    optional = annotation.endswith(" | None")
    kind = annotation.removesuffix(" | None")
    if value is None:
        if optional:
            return None
        raise _bad(where, kind, value)
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _bad(where, "an integer", value)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise _bad(where, "true or false", value)
    if kind == "str":
        if isinstance(value, str):
            return value
        raise _bad(where, "a string", value)
    if kind == "datetime":
        return _parse_time(value, where)
    if kind == "tuple[str, ...]":
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise _bad(where, "a list of strings", value)
    if kind == "dict":
        if isinstance(value, dict):
            return value
        raise _bad(where, "an object", value)
    if kind == "Any":  # a setting's JSON value, checked by its reader when the server loads it
        return value
    if kind == "Hostinfo":  # by the rules a client's own Hostinfo is held to
        try:
            return parse_hostinfo(value, where)
        except WireError as e:
            raise ImportRefused(str(e)) from None
    raise AssertionError(f"no reader for {annotation}")


def _record(cls: type, item: Any, where: str, optional: set[str] = frozenset()) -> Any:
    if not isinstance(item, dict):
        raise _bad(where, "an object", item)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in _NOT_STORED or (f.name in optional and f.name not in item):
            continue
        if f.name not in item:
            raise ImportRefused(f"{where}: the field {f.name!r} is missing")
        values[f.name] = _field(f.type, item[f.name], f"{where}.{f.name}")
    extra = set(item) - {f.name for f in dataclasses.fields(cls)}
    if extra:
        raise ImportRefused(f"{where}: unknown fields {', '.join(sorted(extra))}")
    return cls(**values)


def _check_node(n: NodeRecord, where: str) -> None:
    try:
        decode_key("mkey", n.machine_key)
        decode_key("nodekey", n.node_key)
        if n.disco_key:
            decode_key("discokey", n.disco_key)
    except KeyFormatError as e:
        raise ImportRefused(f"{where}: {e}") from None
    for name, addr, cls in (("ipv4", n.ipv4, ipaddress.IPv4Address), ("ipv6", n.ipv6, ipaddress.IPv6Address)):
        if addr is not None:
            try:
                cls(addr)
            except ValueError:
                raise _bad(f"{where}.{name}", f"an IPv{name[-1]} address", addr) from None
    for route in n.approved_routes:
        try:
            ipaddress.ip_network(route)
        except ValueError:
            raise _bad(f"{where}.approved_routes", "prefixes such as 10.0.0.0/24", route) from None
    if not n.given_name:
        raise _bad(f"{where}.given_name", "a name", n.given_name)


def _check_webhook(w: WebhookRecord, where: str) -> None:
    """By the rules the API holds a new webhook to."""
    if urlsplit(w.url).scheme not in ("http", "https") or not urlsplit(w.url).hostname:
        raise _bad(f"{where}.url", "an http:// or https:// URL", w.url)
    if not 16 <= len(w.secret) <= 256:
        raise _bad(f"{where}.secret", "16 to 256 characters", "(not shown)")
    unknown = set(w.events) - {ALL, *EVENT_TYPES}
    if unknown or not w.events:
        raise _bad(f"{where}.events", f"event types or {ALL!r}", list(w.events))


def _check_user(u: UserRecord, where: str) -> None:
    if u.role not in ROLES:
        raise _bad(f"{where}.role", "one of " + ", ".join(ROLES), u.role)
    if len(u.groups) > GROUPS_MAX:
        raise ImportRefused(f"{where}.groups: more than {GROUPS_MAX} groups")
    for g in u.groups:
        try:
            check_group(g)
        except InvalidName as e:
            raise ImportRefused(f"{where}.groups: {e}") from None


def _private_key(value: Any, where: str, optional: bool) -> bytes | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _bad(where, "privkey:<64 hex>", value)
    try:
        return decode_key("privkey", value)
    except KeyFormatError as e:
        raise ImportRefused(f"{where}: {e}") from None


def loads(text: str | bytes) -> Export:
    """Parse and check an export document. Raises ImportRefused naming the first bad value."""
    if len(text) > MAX_DOCUMENT:
        raise ImportRefused(f"the document is larger than {MAX_DOCUMENT // 2**20} MiB")
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ImportRefused(f"not a JSON document: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ImportRefused(f'not a trioscale export (no "format": "{FORMAT}")')
    version = doc.get("version")
    if version not in (1, 2, VERSION) or isinstance(version, bool):
        raise ImportRefused(f"export version {version!r} is not one this trioscale reads (1 to {VERSION})")
    known = {"format", "version", "noise_private_key", "derp_private_key", *SECTIONS}
    if set(doc) - known:
        raise ImportRefused(f"unknown top-level fields: {', '.join(sorted(set(doc) - known))}")
    parts: dict[str, tuple] = {}
    for name, (cls, attr) in SECTIONS.items():
        items = doc.get(name, [])
        if not isinstance(items, list):
            raise _bad(name, "a list", items)
        if name == "webhooks" and items and version < 3:
            raise ImportRefused(f"webhooks: an export of version {version} has none")
        optional = ADDED_IN_2.get(name, set()) if version == 1 else set()
        parts[attr] = tuple(_record(cls, item, f"{name}[{i}]", optional) for i, item in enumerate(items))
    for i, u in enumerate(parts["users"]):
        _check_user(u, f"users[{i}]")
    for i, n in enumerate(parts["nodes"]):
        _check_node(n, f"nodes[{i}]")
    for i, w in enumerate(parts["webhooks"]):
        _check_webhook(w, f"webhooks[{i}]")
    return Export(
        snapshot=Snapshot(**parts),
        noise_private_key=_private_key(doc.get("noise_private_key"), "noise_private_key", False),
        derp_private_key=_private_key(doc.get("derp_private_key"), "derp_private_key", True),
    )
