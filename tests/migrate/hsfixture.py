"""Headscale databases made by the tests: a version's real schema (Headscale's own dumps, see
headscale_dumps/README.md) filled with rows laid out as that version stored them.

The tailnet to write is described once, version-neutrally (HS* dataclasses); ``fill`` writes it
into whatever columns the schema has, in that version's forms: bare-hex keys and one
``ip_addresses`` column in 0.22, ``routes`` rows before 0.26, pre-auth key tags in their own
table before 0.24, plain-text pre-auth keys before 0.28 and prefix + bcrypt after, Go's zero
time for "no expiry" before 0.29. PostgreSQL gets the same schema translated to the types gorm
gives it there (bigint, boolean, timestamptz, bytea), as Headscale's pre-0.24 PostgreSQL dump
shows.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import bcrypt

DUMPS = Path(__file__).parent / "headscale_dumps"
SCHEMAS = {
    "0.22": "headscale_0.22.3_dump.sql",
    "0.23": "headscale_0.23.0_dump.sql",
    "0.24": "headscale_0.24.0_dump.sql",
    "0.25": "headscale_0.25.1_dump.sql",
    "0.26": "headscale_0.26.1_dump.sql",
    "0.30": "schema-0.30.sql",
}
ZERO_TIME = "0001-01-01 00:00:00+00:00"


@dataclass
class HSUser:
    id: int
    name: str
    display_name: str = ""
    email: str = ""
    provider: str = ""
    provider_identifier: str | None = None
    created_at: datetime = datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)
    deleted: bool = False


@dataclass
class HSKey:
    id: int
    text: str  # what the client holds: 48 hex before 0.28, hskey-auth-<12 hex>-<64 hex> after
    user_id: int | None
    reusable: bool = False
    ephemeral: bool = False
    used: bool = False
    tags: tuple[str, ...] = ()
    expiration: datetime | None = None
    created_at: datetime = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@dataclass
class HSApiKey:
    id: int
    text: str  # "<prefix>.<secret>" before 0.28, hskey-api-<12 hex>-<64 hex> after
    expiration: datetime | None = None
    last_seen: datetime | None = None
    created_at: datetime = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

    @property
    def prefix(self) -> str:
        return self.text.split("-")[2] if self.text.startswith("hskey-") else self.text.split(".")[0]

    @property
    def secret(self) -> str:
        return self.text.split("-", 3)[3] if self.text.startswith("hskey-") else self.text.split(".", 1)[1]


@dataclass
class HSNode:
    id: int
    machine_key: str  # 64 hex
    node_key: str
    disco_key: str
    ipv4: str | None
    ipv6: str | None
    hostname: str
    given_name: str
    user_id: int | None
    tags: tuple[str, ...] = ()
    auth_key_id: int | None = None
    hostinfo: dict = field(default_factory=dict)
    endpoints: tuple[str, ...] = ()
    expiry: datetime | None = None
    last_seen: datetime | None = None
    created_at: datetime = datetime(2024, 1, 2, 3, 4, 5, 654321, tzinfo=timezone.utc)
    advertised_routes: tuple[str, ...] = ()
    approved_routes: tuple[str, ...] = ()
    register_method: str = "authkey"
    deleted: bool = False


@dataclass
class HSTailnet:
    users: list[HSUser] = field(default_factory=list)
    keys: list[HSKey] = field(default_factory=list)
    api_keys: list[HSApiKey] = field(default_factory=list)
    nodes: list[HSNode] = field(default_factory=list)
    policy: str | None = None


# --- schema ------------------------------------------------------------------------------


def schema_sql(version: str) -> str:
    """The version's schema (and its migrations rows), without data rows."""
    text = (DUMPS / SCHEMAS[version]).read_text()
    keep = [s for s in _statements(text) if not s.upper().startswith(("INSERT INTO USERS", "INSERT INTO NODES",
                                                                         "INSERT INTO PRE_AUTH", "INSERT INTO POLICIES",
                                                                         "INSERT INTO API_KEYS"))]
    sql = "\n".join(keep)
    if version == "0.30":
        ids = (DUMPS / "migrations-0.30.txt").read_text().split()
        sql += "\n" + "\n".join(f"INSERT INTO migrations VALUES('{i}');" for i in ids)
        sql += "\nINSERT INTO database_versions VALUES(1, 'v0.30.0', '2026-07-01 00:00:00+00:00');"
    return sql


def _statements(script: str) -> list[str]:
    out, cur = [], ""
    for line in script.splitlines(keepends=True):
        if not cur and (line.startswith("--") or not line.strip()):
            continue
        cur += line
        if sqlite3.complete_statement(cur):
            out.append(cur.strip())
            cur = ""
    return out


def postgres_schema(version: str) -> list[str]:
    """The SQLite schema in gorm's PostgreSQL types."""
    out = []
    for s in _statements(schema_sql(version)):
        up = s.upper()
        if up.startswith(("PRAGMA", "BEGIN", "COMMIT", "DELETE FROM SQLITE_SEQUENCE", "INSERT INTO SQLITE_SEQUENCE")):
            continue
        s = s.replace("`", '"')
        s = re.sub(r"integer PRIMARY KEY AUTOINCREMENT", "bigserial PRIMARY KEY", s, flags=re.I)
        s = re.sub(r"\binteger\b", "bigint", s)
        s = re.sub(r"\bdatetime\b", "timestamptz", s)
        s = re.sub(r"\bnumeric\b", "boolean", s)
        s = re.sub(r"\bblob\b", "bytea", s)
        out.append(s.rstrip(";"))
    # SQLite takes a foreign key to a table made later; PostgreSQL needs the table first.
    ordered, made = [], set()
    while out:
        for s in out:
            refs = set(re.findall(r'REFERENCES "(\w+)"', s))
            name = re.match(r'CREATE TABLE (?:IF NOT EXISTS )?"(\w+)"', s)
            if refs <= made | ({name[1]} if name else set()) or not name:
                if name or all(t in made for t in re.findall(r' ON "(\w+)"', s)):
                    ordered.append(s)
                    made |= {name[1]} if name else set()
                    out.remove(s)
                    break
        else:
            raise AssertionError(f"cannot order the schema: {out[:1]}")
    return ordered


# --- rows ----------------------------------------------------------------------------------


class _Writer:
    def __init__(self, conn: Any, version: str, postgres: bool) -> None:
        self.conn, self.version, self.pg = conn, version, postgres
        self.v = tuple(int(x) for x in version.split("."))

    def columns(self, table: str) -> set[str]:
        if self.pg:
            rows = self.conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s",
                                     (table,)).fetchall()
            return {r[0] for r in rows}
        return {r[1] for r in self.conn.execute(f'PRAGMA table_info("{table}")')}

    def time(self, t: datetime | None, zero_for_none: bool = False) -> Any:
        if t is None:
            if zero_for_none:
                return datetime(1, 1, 1, tzinfo=timezone.utc) if self.pg else ZERO_TIME
            return None
        return t if self.pg else t.strftime("%Y-%m-%d %H:%M:%S.%f") + "+00:00"

    def insert(self, table: str, row: dict[str, Any]) -> None:
        cols = self.columns(table)
        row = {k: v for k, v in row.items() if k in cols}
        mark = "%s" if self.pg else "?"
        names = ", ".join(f'"{k}"' for k in row)
        self.conn.execute(f'INSERT INTO "{table}" ({names}) VALUES ({", ".join([mark] * len(row))})',
                          tuple(row.values()))

    def key(self, kind: str, hexkey: str) -> str:
        return hexkey if self.v <= (0, 22) else f"{kind}:{hexkey}"


def fill(conn: Any, version: str, t: HSTailnet, *, postgres: bool = False) -> None:
    """Write ``t`` into a database holding ``version``'s schema."""
    w = _Writer(conn, version, postgres)
    deleted = w.time(datetime(2025, 1, 1, tzinfo=timezone.utc))
    for u in t.users:
        w.insert("users", {
            "id": u.id, "name": u.name, "display_name": u.display_name, "email": u.email,
            "provider": u.provider or None, "provider_identifier": u.provider_identifier,
            "created_at": w.time(u.created_at), "updated_at": w.time(u.created_at),
            "deleted_at": deleted if u.deleted else None,
        })
    hashed = w.v >= (0, 28)
    for k in t.keys:
        row = {"id": k.id, "user_id": k.user_id, "reusable": k.reusable, "ephemeral": k.ephemeral, "used": k.used,
               "created_at": w.time(k.created_at), "expiration": w.time(k.expiration),
               "tags": json.dumps(list(k.tags))}
        if hashed and k.text.startswith("hskey-auth-"):
            _, _, prefix, secret = k.text.split("-", 3)
            h = bcrypt.hashpw(secret.encode(), bcrypt.gensalt(rounds=4))
            row.update(prefix=prefix, hash=h if postgres else h)
        else:
            row["key"] = k.text
        if not w.pg:
            row.update({b: int(row[b]) for b in ("reusable", "ephemeral", "used")})
        w.insert("pre_auth_keys", row)
        if "tags" not in w.columns("pre_auth_keys"):
            for i, tag in enumerate(k.tags):
                w.insert("pre_auth_key_acl_tags", {"id": k.id * 100 + i, "pre_auth_key_id": k.id, "tag": tag})
    for a in t.api_keys:
        w.insert("api_keys", {"id": a.id, "prefix": a.prefix,
                              "hash": bcrypt.hashpw(a.secret.encode(), bcrypt.gensalt(rounds=4)),
                              "created_at": w.time(a.created_at), "expiration": w.time(a.expiration),
                              "last_seen": w.time(a.last_seen)})
    table = "machines" if w.v <= (0, 22) else "nodes"
    route_id = 0
    for n in t.nodes:
        hostinfo = dict(n.hostinfo)
        if w.v >= (0, 26) and n.advertised_routes:
            hostinfo["RoutableIPs"] = list(n.advertised_routes)
        tags = json.dumps(list(n.tags))
        w.insert(table, {
            "id": n.id, "machine_key": w.key("mkey", n.machine_key), "node_key": w.key("nodekey", n.node_key),
            "disco_key": w.key("discokey", n.disco_key),
            "ip_addresses": ",".join(a for a in (n.ipv6, n.ipv4) if a),
            "ipv4": n.ipv4, "ipv6": n.ipv6, "hostname": n.hostname, "given_name": n.given_name,
            "user_id": n.user_id, "register_method": n.register_method, "forced_tags": tags, "tags": tags,
            "auth_key_id": n.auth_key_id if n.auth_key_id is not None else (0 if w.v <= (0, 22) else None),
            "last_seen": w.time(n.last_seen), "expiry": w.time(n.expiry, zero_for_none=w.v < (0, 29)),
            "host_info": json.dumps(hostinfo), "endpoints": json.dumps(list(n.endpoints)),
            "approved_routes": json.dumps(list(n.approved_routes)),
            "created_at": w.time(n.created_at), "updated_at": w.time(n.created_at),
            "deleted_at": deleted if n.deleted else None,
        })
        if w.v < (0, 26):
            for prefix in sorted(set(n.advertised_routes) | set(n.approved_routes)):
                route_id += 1
                enabled = prefix in n.approved_routes
                w.insert("routes", {
                    "id": route_id, "machine_id": n.id, "node_id": n.id, "prefix": prefix,
                    "advertised": prefix in n.advertised_routes if w.pg else int(prefix in n.advertised_routes),
                    "enabled": enabled if w.pg else int(enabled), "is_primary": False if w.pg else 0,
                    "created_at": w.time(n.created_at), "updated_at": w.time(n.created_at),
                })
    if t.policy is not None and "policies" in _tables(w):
        w.insert("policies", {"id": 1, "data": t.policy, "created_at": w.time(datetime(2024, 5, 6, tzinfo=timezone.utc)),
                              "updated_at": w.time(datetime(2024, 5, 6, tzinfo=timezone.utc))})


def _tables(w: _Writer) -> set[str]:
    if w.pg:
        return {r[0] for r in w.conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()").fetchall()}
    return {r[0] for r in w.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def make_sqlite(path: Path, version: str, t: HSTailnet) -> Path:
    if path.exists():
        path.unlink()
    conn = sqlite3.connect(path)
    conn.executescript(schema_sql(version))
    fill(conn, version, t)
    conn.commit()
    conn.close()
    return path


def make_postgres(dsn: str, version: str, t: HSTailnet) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=False) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
        for s in postgres_schema(version):
            conn.execute(s)
        fill(conn, version, t, postgres=True)
        conn.commit()


def load_dump(path: Path, dump: str) -> Path:
    """One of Headscale's real dumps as an SQLite file."""
    if path.exists():
        path.unlink()
    conn = sqlite3.connect(path)
    conn.executescript((DUMPS / dump).read_text())
    conn.close()
    return path
