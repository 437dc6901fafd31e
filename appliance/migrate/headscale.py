"""A Headscale database (0.22 to 0.30) read into a trioscale Snapshot, with a report.

What changed across Headscale's schemas, and how each is read (Headscale's own migrations in
hscontrol/db/db.go are the record):
- 0.22 and older: no ``migrations`` table; nodes are ``machines``; machine/node/disco keys are
  bare hex; addresses are one text column ``ip_addresses`` ("fd7a::2,100.64.0.2");
  pre-auth key tags are rows of ``pre_auth_key_acl_tags``; routes are rows of ``routes``.
- 0.23: gormigrate IDs in ``migrations``; ``nodes`` with ``ipv4``/``ipv6``; keys prefixed.
- 0.24: pre-auth key tags a JSON column; users gain display_name, email, provider fields.
- 0.26: ``routes`` folded into ``nodes.approved_routes`` (the enabled ones).
- 0.28: pre-auth keys ``hskey-auth-<prefix>-<secret>`` stored as prefix + bcrypt (older keys
  stay plain text in ``key``); ``forced_tags`` renamed ``tags``; tags a node asked for
  (Hostinfo.RequestTags) used to count when tagOwners allowed them, and are now stored.
- 0.29: ``database_versions``; zero-time expiries cleared to NULL; tagged nodes lose user_id.
- 0.30 (Headscale's main branch): api_keys.user_id, pre-auth key description and revoked,
  OAuth clients and tokens.
Rows with ``deleted_at`` set are deleted for Headscale (gorm soft delete) and are not carried.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Iterable

from ..control.hostinfo import hostinfo_from_stored
from ..storage.records import (
    ApiKeyRecord,
    NodeRecord,
    PolicyRecord,
    PreAuthKeyRecord,
    Snapshot,
    UserRecord,
)
from ..tailnet import secrets as keysecrets
from ..tailnet.names import dns_label, unique_name
from .errors import ImportRefused
from .source import Source

# gormigrate IDs in the order Headscale added them, with the release that brought each.
MIGRATIONS: tuple[tuple[str, str], ...] = (
    ("202312101416", "0.23"), ("202312101430", "0.23"), ("202402151347", "0.23"),
    ("2024041121742", "0.23"), ("202406021630", "0.23"),
    ("202409271400", "0.24"), ("202407191627", "0.24"), ("202408181235", "0.24"),
    ("202501221827", "0.25"), ("202501311657", "0.25"), ("202502070949", "0.25"),
    ("202502131714", "0.26"), ("202502171819", "0.26"), ("202505091439", "0.26"),
    ("202505141324", "0.26"),
    ("202507021200", "0.27"),
    ("202510311551", "0.28"), ("202511101554-drop-old-idx", "0.28"),
    ("202511011637-preauthkey-bcrypt", "0.28"), ("202511122344-remove-newline-index", "0.28"),
    ("202511131445-node-forced-tags-to-tags", "0.28"),
    ("202601121700-migrate-hostinfo-request-tags", "0.28"),
    ("202602201200-clear-tagged-node-user-id", "0.29"),
    ("202605221435-clear-zero-time-node-expiry", "0.29"),
    ("202606181200-recover-null-tags-node-user-id", "0.29"),
    ("202606191500-api-key-user-id", "0.30"), ("202606191501-pre-auth-key-description", "0.30"),
    ("202606201200-pre-auth-key-revoked", "0.30"), ("202606211200-oauth-clients-and-tokens", "0.30"),
)
NEWEST = (0, 30)
_VERSION = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?")
# Go's zero time.Time, which Headscale before 0.29 wrote for "no expiry": any year before this.
_ZERO_TIME_YEAR = 1900
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class SchemaVersion:
    label: str  # "0.26", "0.22 or older"
    order: int  # index in MIGRATIONS of the newest applied one; -1 before versioned migrations

    def at_least(self, migration_id: str) -> bool:
        return self.order >= next(i for i, (m, _) in enumerate(MIGRATIONS) if m == migration_id)


@dataclass
class Report:
    """What an import does: counts, what was changed on the way, what is not carried and why."""

    source: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"source: {self.source}"] if self.source else []
        out.append("carried: " + ", ".join(f"{n} {what}" for what, n in self.counts.items()))
        out += [f"changed: {c}" for c in self.changed]
        out += [f"not carried: {d}" for d in self.dropped]
        return out


def detect_version(src: Source) -> SchemaVersion:
    """Which Headscale schema ``src`` holds; raises ImportRefused for an unknown or newer one."""
    tables = src.tables()
    if "database_versions" in tables:
        for row in src.rows("database_versions"):
            m = _VERSION.match(str(row.get("version") or ""))
            if m and (int(m[1]), int(m[2])) > NEWEST:
                raise ImportRefused(
                    f"this database was last used by Headscale {row['version']}, newer than the newest "
                    f"schema this trioscale reads (0.{NEWEST[1]}); nothing was imported")
    if "migrations" not in tables:
        if "namespaces" in tables or not {"users", "machines"} <= tables:
            if "nodes" in tables or "machines" in tables or "namespaces" in tables:
                raise ImportRefused(
                    "this Headscale database is older than 0.22 (it has no users/machines tables "
                    "of 0.22): start Headscale 0.22 or newer on it once, then import")
            raise ImportRefused("this is not a Headscale database (no users and nodes tables)")
        return SchemaVersion("0.22 or older", -1)
    known = {m: i for i, (m, _) in enumerate(MIGRATIONS)}
    applied = [str(r.get("id")) for r in src.rows("migrations")]
    unknown = sorted(m for m in applied if m not in known)
    if unknown:
        raise ImportRefused(
            f"this Headscale database has schema migrations this trioscale does not know "
            f"({', '.join(unknown)}): it is newer than Headscale 0.{NEWEST[1]}; nothing was imported")
    if not applied:
        raise ImportRefused("this Headscale database has an empty migrations table: it was never fully set up")
    order = max(known[m] for m in applied)
    return SchemaVersion(MIGRATIONS[order][1], order)


# --- values ----------------------------------------------------------------------------


def as_time(value: Any) -> datetime | None:
    """A gorm time: datetime (PostgreSQL) or Go's text form (SQLite,
    "2023-08-10 20:39:17.723753123+00:00"); Go's zero time is None."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        t = value
    else:
        text = str(value).strip().replace("T", " ", 1)
        text = re.sub(r"(\.\d{6})\d+", r"\1", text)  # Go keeps nanoseconds; Python microseconds
        text = re.sub(r" ?([+-]\d\d)(\d\d)$", r"\1:\2", text)
        text = text.removesuffix("Z") + ("+00:00" if text.endswith("Z") else "")
        try:
            t = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not a time: {str(value)[:60]!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    if t.year < _ZERO_TIME_YEAR:
        return None
    return t.astimezone(timezone.utc)


def as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "t")
    return bool(value)


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def as_json(value: Any, default: Any) -> Any:
    text = as_text(value).strip()
    if not text or text == "null":
        return default
    return json.loads(text)


def as_key(prefix: str, value: Any) -> str:
    """A key in trioscale's text form; Headscale 0.22 stored bare hex."""
    text = as_text(value).strip()
    if _HEX64.fullmatch(text):
        text = f"{prefix}:{text.lower()}"
    head, _, hexpart = text.partition(":")
    if head != prefix or not _HEX64.fullmatch(hexpart):
        raise ValueError(f"not a {prefix} key: {text[:80]!r}")
    return text


def _tags(value: Any) -> tuple[str, ...]:
    tags = as_json(value, [])
    if not isinstance(tags, list):
        raise ValueError("tags: not a JSON list")
    return tuple(sorted({str(t) for t in tags if str(t).startswith("tag:")}))


# --- the reader ------------------------------------------------------------------------


@dataclass
class Imported:
    snapshot: Snapshot
    report: Report
    version: SchemaVersion
    # Tags nodes asked for (RequestTags) that Headscale before 0.28 granted when the policy's
    # tagOwners allowed them; applied by ``apply_request_tags`` once the policy is known.
    request_tags: dict[int, tuple[str, ...]] = field(default_factory=dict)


def read_headscale(src: Source, *, now: datetime) -> Imported:
    """Read everything ``src`` holds into a Snapshot. Raises ImportRefused for a schema this
    trioscale cannot read. Rows it cannot carry are left out and named in the report."""
    version = detect_version(src)
    report = Report(source=f"Headscale {version.label} ({src.description})")
    users = _users(src, report, now)
    keys = _preauth_keys(src, report, {u.id for u in users}, now)
    api_keys = _api_keys(src, report, now)
    nodes, request_tags = _nodes(src, report, version, {u.id for u in users}, {k.id: k for k in keys}, now)
    policies = _policies(src, report, now)
    _not_carried_tables(src, report)
    snapshot = Snapshot(users=tuple(users), preauth_keys=tuple(keys), api_keys=tuple(api_keys),
                        nodes=tuple(nodes), policies=tuple(policies))
    report.counts = counts(snapshot)
    return Imported(snapshot, report, version, request_tags)


def counts(s: Snapshot) -> dict[str, int]:
    return {"users": len(s.users), "nodes": len(s.nodes), "pre-auth keys": len(s.preauth_keys),
            "API keys": len(s.api_keys), "policies": len(s.policies)}


def _live(rows: Iterable[dict], what: str, report: Report) -> list[dict]:
    """Rows not soft-deleted; the deleted ones are counted in the report."""
    live, deleted = [], []
    for r in sorted(rows, key=lambda r: int(r["id"])):
        (deleted if r.get("deleted_at") is not None else live).append(r)
    if deleted:
        report.dropped.append(
            f"{len(deleted)} {what} deleted in Headscale (deleted_at set): "
            + ", ".join(str(r["id"]) for r in deleted))
    return live


def _users(src: Source, report: Report, now: datetime) -> list[UserRecord]:
    out: list[UserRecord] = []
    taken: set[str] = set()
    for r in _live(src.rows("users"), "users", report):
        name = as_text(r.get("name")).strip() or f"user{r['id']}"
        if name in taken:
            # Headscale lets two users share a name when their identity providers differ;
            # trioscale's names are unique.
            new = f"{name}-{r['id']}"
            report.changed.append(f"user {r['id']}: name {name!r} is taken by another user; renamed {new!r}")
            name = new
        taken.add(name)
        out.append(UserRecord(
            id=int(r["id"]), name=name, display_name=as_text(r.get("display_name")),
            email=as_text(r.get("email")), created_at=as_time(r.get("created_at")) or now,
            provider=as_text(r.get("provider")), provider_id=as_text(r.get("provider_identifier")),
            profile_pic_url=as_text(r.get("profile_pic_url")),
        ))
    return out


def _preauth_keys(src: Source, report: Report, user_ids: set[int], now: datetime) -> list[PreAuthKeyRecord]:
    acl_tags: dict[int, set[str]] = {}
    for r in src.rows("pre_auth_key_acl_tags"):  # 0.23 and older
        if r.get("pre_auth_key_id") is not None and as_text(r.get("tag")).startswith("tag:"):
            acl_tags.setdefault(int(r["pre_auth_key_id"]), set()).add(as_text(r["tag"]))
    out: list[PreAuthKeyRecord] = []
    seen_prefixes: set[str] = set()
    for r in _live(src.rows("pre_auth_keys"), "pre-auth keys", report):
        kid = int(r["id"])
        prefix, stored = as_text(r.get("prefix")), as_text(r.get("hash"))
        if prefix and keysecrets.is_bcrypt(stored):
            hash_ = stored  # Headscale 0.28+: bcrypt of the secret; secrets.matches checks it
        elif as_text(r.get("key")):
            # Before 0.28 the key was kept in plain text: only its hash is kept here.
            prefix, hash_ = keysecrets.legacy_prefix(kid), keysecrets.hash_secret(as_text(r["key"]))
        else:
            prefix, hash_ = prefix or keysecrets.legacy_prefix(kid), keysecrets.unusable_hash(stored)
            report.changed.append(f"pre-auth key {kid}: it has no key text and no bcrypt hash; carried, "
                                  "but no key can match it")
        if prefix in seen_prefixes:
            report.dropped.append(f"pre-auth key {kid}: its prefix {prefix!r} is also another key's")
            continue
        seen_prefixes.add(prefix)
        user_id = r.get("user_id")
        if user_id is not None and int(user_id) not in user_ids:
            report.changed.append(f"pre-auth key {kid}: its user {user_id} is deleted; carried without a user")
            user_id = None
        try:
            tags = _tags(r.get("tags")) if "tags" in r else tuple(sorted(acl_tags.get(kid, ())))
        except (ValueError, json.JSONDecodeError):
            report.changed.append(f"pre-auth key {kid}: unreadable tags {as_text(r.get('tags'))[:60]!r} dropped")
            tags = ()
        expiration = as_time(r.get("expiration"))
        revoked = as_time(r.get("revoked"))
        if revoked is not None and (expiration is None or revoked < expiration):
            # 0.30's revocation: the key stops working then, which an expiry says here.
            report.changed.append(f"pre-auth key {kid}: revoked at {revoked:%Y-%m-%d %H:%M}; carried as expired then")
            expiration = revoked
        if as_text(r.get("description")):
            report.dropped.append(f"pre-auth key {kid}: description {as_text(r['description'])[:60]!r} "
                                  "(trioscale keeps no descriptions)")
        out.append(PreAuthKeyRecord(
            id=kid, prefix=prefix, hash=hash_, user_id=None if user_id is None else int(user_id),
            reusable=as_bool(r.get("reusable")), ephemeral=as_bool(r.get("ephemeral")),
            used=as_bool(r.get("used")), tags=tags, created_at=as_time(r.get("created_at")) or now,
            expiration=expiration,
        ))
    return out


def _api_keys(src: Source, report: Report, now: datetime) -> list[ApiKeyRecord]:
    out: list[ApiKeyRecord] = []
    for r in _live(src.rows("api_keys"), "API keys", report):
        prefix, hash_ = as_text(r.get("prefix")), as_text(r.get("hash"))
        if not prefix:
            report.dropped.append(f"API key {r['id']}: it has no prefix, so no key text can find it")
            continue
        if not keysecrets.is_bcrypt(hash_):
            hash_ = keysecrets.unusable_hash(r.get("hash") or b"")
            report.changed.append(f"API key {r['id']} ({prefix}): its hash is not bcrypt; carried, but no key "
                                  "can match it")
        if r.get("user_id") is not None:
            report.dropped.append(f"API key {r['id']}: its owner (user {r['user_id']}); trioscale's API keys "
                                  "belong to the server")
        out.append(ApiKeyRecord(
            id=int(r["id"]), prefix=prefix, hash=hash_, created_at=as_time(r.get("created_at")) or now,
            expiration=as_time(r.get("expiration")), last_seen=as_time(r.get("last_seen")),
        ))
    return out


def _routes(src: Source, report: Report) -> tuple[dict[int, set[str]], dict[int, set[str]]]:
    """Routes of 0.25 and older: advertised and enabled prefixes per node."""
    advertised: dict[int, set[str]] = {}
    enabled: dict[int, set[str]] = {}
    for r in _live(src.rows("routes"), "routes", report):
        node_id = r.get("node_id", r.get("machine_id"))
        try:
            prefix = str(ipaddress.ip_network(as_text(r.get("prefix")), strict=False))
        except ValueError:
            report.dropped.append(f"route {r['id']}: {as_text(r.get('prefix'))[:60]!r} is not a prefix")
            continue
        if node_id is None:
            continue
        if as_bool(r.get("advertised")):
            advertised.setdefault(int(node_id), set()).add(prefix)
        if as_bool(r.get("enabled")):
            enabled.setdefault(int(node_id), set()).add(prefix)
    return advertised, enabled


def _addresses(r: dict) -> tuple[str | None, str | None]:
    if "ip_addresses" in r:  # 0.22: "fd7a:115c:a1e0::2,100.64.0.2"; the first of each family counts
        found: dict[int, str] = {}
        for part in as_text(r.get("ip_addresses")).split(","):
            if part.strip():
                a = ipaddress.ip_address(part.strip())
                found.setdefault(a.version, str(a))
        return found.get(4), found.get(6)
    v4 = as_text(r.get("ipv4")).strip() or None
    v6 = as_text(r.get("ipv6")).strip() or None
    return (str(ipaddress.IPv4Address(v4)) if v4 else None, str(ipaddress.IPv6Address(v6)) if v6 else None)


def _nodes(src: Source, report: Report, version: SchemaVersion, user_ids: set[int],
           keys: dict[int, PreAuthKeyRecord], now: datetime) -> tuple[list[NodeRecord], dict[int, tuple[str, ...]]]:
    table = "nodes" if "nodes" in src.tables() else "machines"
    advertised, enabled = _routes(src, report)
    rows = _live(src.rows(table), "nodes", report)
    # One node per node key: Headscale never enforced it; the client holds one key, and the
    # node it last used is the one it is.
    newest: dict[str, tuple[int, datetime]] = {}
    parsed: list[tuple[dict, dict]] = []
    for r in rows:
        nid = int(r["id"])
        try:
            fields = {
                "machine_key": as_key("mkey", r.get("machine_key")),
                "node_key": as_key("nodekey", r.get("node_key")),
                "disco_key": as_key("discokey", r.get("disco_key")) if as_text(r.get("disco_key")).strip() else "",
                "addresses": _addresses(r),
                "hostinfo": as_json(r.get("host_info"), {}),
                "endpoints": as_json(r.get("endpoints"), []),
            }
        except (ValueError, json.JSONDecodeError) as e:
            report.dropped.append(f"node {nid} ({as_text(r.get('hostname'))}): {e}")
            continue
        parsed.append((r, fields))
        seen = as_time(r.get("last_seen")) or datetime.min.replace(tzinfo=timezone.utc)
        other = newest.get(fields["node_key"])
        if other is None or seen >= other[1]:
            newest[fields["node_key"]] = (nid, seen)
    out: list[NodeRecord] = []
    request_tags: dict[int, tuple[str, ...]] = {}
    names: set[str] = set()
    addresses: dict[str, int] = {}
    for r, f in parsed:
        nid = int(r["id"])
        winner = newest[f["node_key"]][0]
        if winner != nid:
            report.dropped.append(f"node {nid} ({as_text(r.get('hostname'))}): its node key is also node "
                                  f"{winner}'s, which was seen last (one node per key)")
            continue
        hostinfo = f["hostinfo"] if isinstance(f["hostinfo"], dict) else {}
        if not isinstance(f["hostinfo"], dict):
            report.changed.append(f"node {nid}: hostinfo was not a JSON object; emptied")
        endpoints = tuple(str(e) for e in f["endpoints"]) if isinstance(f["endpoints"], list) else ()
        user_id = r.get("user_id")
        if user_id is not None and int(user_id) not in user_ids:
            report.changed.append(f"node {nid}: its user {user_id} is deleted; carried without a user")
            user_id = None
        try:
            tags = _tags(r.get("tags") if "tags" in r else r.get("forced_tags"))
        except (ValueError, json.JSONDecodeError):
            report.changed.append(f"node {nid}: unreadable tags dropped")
            tags = ()
        approved = sorted(set(_prefixes(as_json(r.get("approved_routes"), []))) | enabled.get(nid, set()))
        wanted = advertised.get(nid, set())
        routable = list(hostinfo.get("RoutableIPs") or [])
        missing = sorted(p for p in wanted if p not in routable)
        if missing:
            # Before 0.26 the routes table held what a node advertised; trioscale reads it from
            # Hostinfo.RoutableIPs (the client sends it again at its next map request anyway).
            hostinfo = {**hostinfo, "RoutableIPs": routable + missing}
        if not version.at_least("202601121700-migrate-hostinfo-request-tags"):
            asked = tuple(sorted({t for t in (hostinfo.get("RequestTags") or []) if isinstance(t, str)} - set(tags)))
            if asked:
                request_tags[nid] = asked
        typed_hostinfo = hostinfo_from_stored(hostinfo)  # today's rules; what they drop is reported
        report.changed.extend(f"node {nid}: Hostinfo {note}" for note in typed_hostinfo.notes)
        key_id = r.get("auth_key_id")
        key_id = int(key_id) if key_id not in (None, 0, "0") and int(key_id) in keys else None
        given = as_text(r.get("given_name")).strip() or dns_label(as_text(r.get("hostname")))
        if given in names:
            new = unique_name(given, names)
            report.changed.append(f"node {nid}: name {given!r} is taken by another node; renamed {new!r}")
            given = new
        names.add(given)
        v4, v6 = f["addresses"]
        for addr in (v4, v6):
            if addr is not None and addr in addresses:
                report.changed.append(f"node {nid}: address {addr} is also node {addresses[addr]}'s; dropped here")
        v4 = None if v4 in addresses else v4
        v6 = None if v6 in addresses else v6
        for addr in (v4, v6):
            if addr is not None:
                addresses[addr] = nid
        method = as_text(r.get("register_method")) or "authkey"
        out.append(NodeRecord(
            id=nid, machine_key=f["machine_key"], node_key=f["node_key"], disco_key=f["disco_key"],
            ipv4=v4, ipv6=v6, hostname=as_text(r.get("hostname")), given_name=given,
            user_id=None if user_id is None else int(user_id), auth_key_id=key_id, tags=tags,
            hostinfo=replace(typed_hostinfo, notes=()), endpoints=endpoints, expiry=as_time(r.get("expiry")),
            last_seen=as_time(r.get("last_seen")), created_at=as_time(r.get("created_at")) or now,
            approved_routes=tuple(approved),
            # Headscale keeps no ephemeral flag on nodes: the key that registered it says.
            ephemeral=key_id is not None and keys[key_id].ephemeral, register_method=method,
        ))
    return out, request_tags


def _prefixes(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [str(ipaddress.ip_network(str(p), strict=False)) for p in value]


def _policies(src: Source, report: Report, now: datetime) -> list[PolicyRecord]:
    rows = [r for r in _live(src.rows("policies"), "policy versions", report) if as_text(r.get("data")).strip()]
    if not rows:
        return []
    newest = rows[-1]  # Headscale reads the row with the highest ID
    if len(rows) > 1:
        report.changed.append(f"policy: the newest of {len(rows)} versions is carried (ID {newest['id']})")
    return [PolicyRecord(id=1, data=as_text(newest["data"]), created_at=as_time(newest.get("created_at")) or now)]


def _not_carried_tables(src: Source, report: Report) -> None:
    for table, why in (("oauth_clients", "trioscale has no OAuth clients for a v2 API"),
                       ("oauth_access_tokens", "short-lived tokens of OAuth clients")):
        n = len(src.rows(table))
        if n:
            report.dropped.append(f"{n} rows of {table} ({why})")


def apply_request_tags(imported: Imported, owns_tag) -> Snapshot:
    """Grant the tags nodes asked for (Hostinfo.RequestTags) that ``owns_tag(user_id, tag)``
    allows, as Headscale before 0.28 did when it computed a node's tags, and as its 0.28
    migration stored them. Refused ones are reported."""
    nodes = []
    for n in imported.snapshot.nodes:
        asked = imported.request_tags.get(n.id, ())
        granted = tuple(t for t in asked if n.user_id is not None and owns_tag(n.user_id, t))
        refused = [t for t in asked if t not in granted]
        if granted:
            imported.report.changed.append(f"node {n.id} ({n.given_name}): tags {', '.join(granted)} it asked for "
                                           "are granted by the policy's tagOwners, as Headscale did")
            n = replace(n, tags=tuple(sorted(set(n.tags) | set(granted))))
        if refused:
            imported.report.dropped.append(f"node {n.id} ({n.given_name}): tags {', '.join(refused)} it asked for "
                                           "(the policy's tagOwners do not allow them)")
        nodes.append(n)
    return replace(imported.snapshot, nodes=tuple(nodes))

