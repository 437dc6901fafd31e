"""One SQLite connection behind a worker thread.

Every public method is async and runs one short transaction in a worker thread through a
CapacityLimiter(1), so the connection is never used by two threads at once. A transaction is
committed before the method returns: whatever a caller acknowledges is on disk.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar

import trio

from ..control.codec import to_json
from ..control.hostinfo import stored_hostinfo
from .migrations import LATEST, MIGRATIONS
from .records import (
    ApiKeyRecord, NodeRecord, PolicyRecord, PreAuthKeyRecord, SettingRecord, Snapshot, UserRecord,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreError(Exception):
    """The database cannot be used (newer schema, unreadable file)."""


class Conflict(StoreError):
    """A write would break a uniqueness rule (name taken, address taken)."""


class StoreFailed(StoreError):
    """The database failed while the server ran: the file is corrupt, unreadable, read-only or
    gone, or the disk reports I/O errors. Nothing more can be acknowledged, so the server stops
    and says why (``serve``); a full disk or a busy lock is not this: that write fails alone."""


# SQLite's primary result codes that mean the database itself can no longer be trusted or
# reached; sqlite3 exceptions carry the (extended) code in ``sqlite_errorcode``.
_FATAL_CODES = {
    sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CORRUPT,
    sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_NOTADB,
}


def is_fatal(e: BaseException) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    return isinstance(e, sqlite3.DatabaseError) and code is not None and (code & 0xFF) in _FATAL_CODES


def _ts(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(timezone.utc).isoformat()


def _dt(s: str | None) -> datetime | None:
    return None if s is None else datetime.fromisoformat(s)


def _user(r: sqlite3.Row) -> UserRecord:
    return UserRecord(
        id=r["id"], name=r["name"], display_name=r["display_name"], email=r["email"],
        created_at=_dt(r["created_at"]), provider=r["provider"], provider_id=r["provider_id"],
        profile_pic_url=r["profile_pic_url"], role=r["role"], groups=_groups(r["groups"]),
    )


def _groups(text: str) -> tuple[str, ...]:
    """A user's provider groups as stored; unreadable ones are none (the next sign-in writes
    them again), never a reason to leave the user out."""
    try:
        groups = json.loads(text)
    except (ValueError, RecursionError):
        return ()
    return tuple(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else ()


def _preauth(r: sqlite3.Row) -> PreAuthKeyRecord:
    return PreAuthKeyRecord(
        id=r["id"], prefix=r["prefix"], hash=r["hash"], user_id=r["user_id"],
        reusable=bool(r["reusable"]), ephemeral=bool(r["ephemeral"]), used=bool(r["used"]),
        tags=tuple(json.loads(r["tags"])), created_at=_dt(r["created_at"]),
        expiration=_dt(r["expiration"]), pre_approved=bool(r["pre_approved"]),
    )


def _apikey(r: sqlite3.Row) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=r["id"], prefix=r["prefix"], hash=r["hash"], created_at=_dt(r["created_at"]),
        expiration=_dt(r["expiration"]), last_seen=_dt(r["last_seen"]),
    )


def _node(r: sqlite3.Row) -> NodeRecord:
    return NodeRecord(
        id=r["id"], machine_key=r["machine_key"], node_key=r["node_key"],
        disco_key=r["disco_key"], ipv4=r["ipv4"], ipv6=r["ipv6"], hostname=r["hostname"],
        given_name=r["given_name"], user_id=r["user_id"], auth_key_id=r["auth_key_id"],
        tags=tuple(json.loads(r["tags"])), hostinfo=stored_hostinfo(r["hostinfo"]),
        endpoints=tuple(json.loads(r["endpoints"])), expiry=_dt(r["expiry"]),
        last_seen=_dt(r["last_seen"]), created_at=_dt(r["created_at"]),
        approved_routes=tuple(json.loads(r["approved_routes"])),
        ephemeral=bool(r["ephemeral"]), register_method=r["register_method"],
        authorized=bool(r["authorized"]),
    )


def _readable(c: sqlite3.Connection, table: str, convert: Callable[[sqlite3.Row], T]) -> list[T]:
    """Every row of ``table`` that converts; a row written by an older version or an import
    that does not (bad JSON, a bad time) is logged and left out, never fatal at start."""
    out = []
    for r in c.execute(f"SELECT * FROM {table} ORDER BY id"):
        try:
            out.append(convert(r))
        except (ValueError, TypeError, RecursionError) as e:
            log.warning("%s row %s left out at start: its stored data cannot be read (%s)", table, r["id"], e)
    return out


_NODE_COLUMNS = (
    "id", "machine_key", "node_key", "disco_key", "ipv4", "ipv6", "hostname", "given_name",
    "user_id", "auth_key_id", "tags", "hostinfo", "endpoints", "expiry", "last_seen",
    "created_at", "approved_routes", "ephemeral", "register_method", "authorized",
)


def _node_values(n: NodeRecord) -> tuple:
    return (
        n.id, n.machine_key, n.node_key, n.disco_key, n.ipv4, n.ipv6, n.hostname, n.given_name,
        n.user_id, n.auth_key_id, json.dumps(list(n.tags)), json.dumps(to_json(n.hostinfo)),
        json.dumps(list(n.endpoints)), _ts(n.expiry), _ts(n.last_seen), _ts(n.created_at),
        json.dumps(list(n.approved_routes)), int(n.ephemeral), n.register_method, int(n.authorized),
    )


def open_database(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) and migrate; raises StoreError for a newer schema."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    existed = path.exists() and path.stat().st_size > 0
    if not path.exists():
        # Create it private; SQLite gives its -wal and -shm files the same mode.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        # FULL: a commit is on disk before we acknowledge it, even across power loss.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > LATEST:
            raise StoreError(
                f"{path}: database schema version {version} is newer than this trioscale "
                f"knows ({LATEST}); run the newer trioscale that wrote it, or restore a backup"
            )
        if version < LATEST and existed:
            backup = path.with_name(f"{path.name}.backup-v{version}")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            shutil.copy2(path, backup)
            log.info("migrating %s from schema %d to %d; backup at %s", path, version, LATEST, backup)
        for number in range(version + 1, LATEST + 1):
            _migrate(conn, number)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise StoreError(f"{path}: {e}") from e
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, number: int) -> None:
    """Apply migration ``number`` in one transaction (see migrations.py for the rules)."""
    # Both pragmas are no-ops inside a transaction, so they go around it.
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("PRAGMA legacy_alter_table=ON")
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _statements(MIGRATIONS[number - 1]):
            conn.execute(statement)
        broken = conn.execute("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise StoreError(f"migration {number} would break {len(broken)} foreign keys: {list(map(tuple, broken))[:5]}")
        conn.execute(f"PRAGMA user_version={number}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.execute("PRAGMA legacy_alter_table=OFF")
        conn.execute("PRAGMA foreign_keys=ON")


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (sqlite3.complete_statement knows the rules)."""
    out, cur = [], ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--") and not cur.strip():
            continue
        cur += line
        if sqlite3.complete_statement(cur):
            out.append(cur.strip())
            cur = ""
    if cur.strip():
        out.append(cur.strip())
    return out


class Store:
    """Async facade over the connection. Owns it; ``close()`` checkpoints and closes it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn = open_database(self.path)
        self._limiter = trio.CapacityLimiter(1)
        self.failure: StoreFailed | None = None
        self._failed = trio.Event()

    def close(self) -> None:
        try:
            if self.failure is None:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:
            log.warning("%s: no checkpoint at close: %s", self.path, e)
        finally:
            self._conn.close()

    async def wait_failed(self) -> StoreFailed:
        """Wait until the database fails (see StoreFailed); returns the failure."""
        await self._failed.wait()
        assert self.failure is not None
        return self.failure

    def _fail(self, e: BaseException) -> StoreFailed:
        if self.failure is None:
            self.failure = StoreFailed(f"{self.path}: {e}")
            log.critical("the database failed: %s", self.failure)
            self._failed.set()
        return self.failure

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one transaction in the worker thread; committed when this returns."""
        if self.failure is not None:
            raise StoreFailed(str(self.failure))

        def txn() -> T:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except sqlite3.IntegrityError as e:
                conn.execute("ROLLBACK")
                raise Conflict(str(e)) from e
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the original error says more
                raise
            conn.execute("COMMIT")
            return result

        try:
            return await trio.to_thread.run_sync(txn, limiter=self._limiter)
        except sqlite3.DatabaseError as e:
            if is_fatal(e):
                raise self._fail(e) from e
            raise

    # --- loading ------------------------------------------------------------------------

    async def load_all(self) -> tuple[list[UserRecord], list[NodeRecord], list[PreAuthKeyRecord]]:
        def fn(c: sqlite3.Connection):
            users = _readable(c, "users", _user)
            nodes = _readable(c, "nodes", _node)
            keys = _readable(c, "pre_auth_keys", _preauth)
            return users, nodes, keys

        return await self._run(fn)

    # --- users --------------------------------------------------------------------------

    async def create_user(
        self, name: str, display_name: str, email: str, now: datetime, profile_pic_url: str = "", *,
        provider: str = "", provider_id: str = "", groups: tuple[str, ...] = (),
    ) -> UserRecord:
        """The first user of the tailnet is its owner (in the same transaction, so two
        concurrent first users cannot both be)."""

        def fn(c: sqlite3.Connection) -> UserRecord:
            first = c.execute("SELECT COUNT(*) FROM users").fetchone()[0] == 0
            cur = c.execute(
                "INSERT INTO users (name, display_name, email, created_at, provider, provider_id,"
                " profile_pic_url, groups, role) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, display_name, email, _ts(now), provider, provider_id, profile_pic_url,
                 json.dumps(list(groups)), "owner" if first else "member"),
            )
            return _user(c.execute("SELECT * FROM users WHERE id = ?", (cur.lastrowid,)).fetchone())

        return await self._run(fn)

    async def update_user(self, u: UserRecord) -> UserRecord:
        """Write a user's profile, role and groups (not its ID or creation time)."""
        return (await self.update_users([u]))[0]

    async def update_users(self, users: list[UserRecord]) -> list[UserRecord]:
        """update_user for several users in one transaction (an ownership handover)."""

        def fn(c: sqlite3.Connection) -> list[UserRecord]:
            for u in users:
                c.execute(
                    "UPDATE users SET name = ?, display_name = ?, email = ?, provider = ?, provider_id = ?,"
                    " profile_pic_url = ?, role = ?, groups = ? WHERE id = ?",
                    (u.name, u.display_name, u.email, u.provider, u.provider_id, u.profile_pic_url, u.role,
                     json.dumps(list(u.groups)), u.id),
                )
            return [_user(c.execute("SELECT * FROM users WHERE id = ?", (u.id,)).fetchone()) for u in users]

        return await self._run(fn)

    async def rename_user(self, user_id: int, new_name: str) -> None:
        await self._run(lambda c: c.execute("UPDATE users SET name = ? WHERE id = ?", (new_name, user_id)))

    async def delete_user(self, user_id: int) -> None:
        await self._run(lambda c: c.execute("DELETE FROM users WHERE id = ?", (user_id,)))

    # --- pre-auth keys ------------------------------------------------------------------

    async def create_preauth_key(
        self, prefix: str, hash_: str, user_id: int | None, reusable: bool, ephemeral: bool,
        tags: tuple[str, ...], now: datetime, expiration: datetime | None, pre_approved: bool = False,
    ) -> PreAuthKeyRecord:
        def fn(c: sqlite3.Connection) -> PreAuthKeyRecord:
            cur = c.execute(
                "INSERT INTO pre_auth_keys (prefix, hash, user_id, reusable, ephemeral, tags,"
                " created_at, expiration, pre_approved) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (prefix, hash_, user_id, int(reusable), int(ephemeral), json.dumps(list(tags)),
                 _ts(now), _ts(expiration), int(pre_approved)),
            )
            row = c.execute("SELECT * FROM pre_auth_keys WHERE id = ?", (cur.lastrowid,)).fetchone()
            return _preauth(row)

        return await self._run(fn)

    async def expire_preauth_key(self, key_id: int, now: datetime) -> None:
        await self._run(
            lambda c: c.execute("UPDATE pre_auth_keys SET expiration = ? WHERE id = ?", (_ts(now), key_id))
        )

    async def delete_preauth_key(self, key_id: int) -> None:
        await self._run(lambda c: c.execute("DELETE FROM pre_auth_keys WHERE id = ?", (key_id,)))

    # --- nodes --------------------------------------------------------------------------

    async def save_node(self, node: NodeRecord, *, mark_key_used: int | None = None) -> NodeRecord:
        """Insert or update a node (id 0 = insert); optionally mark a pre-auth key used in the
        same transaction, so a single-use key can never register two nodes."""

        def fn(c: sqlite3.Connection) -> NodeRecord:
            if mark_key_used is not None:
                cur = c.execute(
                    "UPDATE pre_auth_keys SET used = 1 WHERE id = ? AND (used = 0 OR reusable = 1)",
                    (mark_key_used,),
                )
                if cur.rowcount != 1:
                    raise Conflict("pre-auth key already used")
            values = _node_values(node)
            if node.id == 0:
                cols = _NODE_COLUMNS[1:]
                cur = c.execute(
                    f"INSERT INTO nodes ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                    values[1:],
                )
                node_id = cur.lastrowid
            else:
                sets = ", ".join(f"{col} = ?" for col in _NODE_COLUMNS[1:])
                c.execute(f"UPDATE nodes SET {sets} WHERE id = ?", values[1:] + (node.id,))
                node_id = node.id
            return _node(c.execute("SELECT * FROM nodes WHERE id = ?", (node_id,)).fetchone())

        return await self._run(fn)

    async def delete_node(self, node_id: int) -> None:
        await self._run(lambda c: c.execute("DELETE FROM nodes WHERE id = ?", (node_id,)))

    async def save_soft_state(self, nodes: list[NodeRecord]) -> None:
        """Write the soft columns of these nodes (what clients report often: last seen,
        endpoints, disco key, hostinfo) in one transaction. A node deleted meanwhile is skipped."""

        def fn(c: sqlite3.Connection) -> None:
            c.executemany(
                "UPDATE nodes SET last_seen = ?, endpoints = ?, disco_key = ?, hostinfo = ? WHERE id = ?",
                [(_ts(n.last_seen), json.dumps(list(n.endpoints)), n.disco_key, json.dumps(to_json(n.hostinfo)), n.id)
                 for n in nodes],
            )

        await self._run(fn)

    # --- API keys -----------------------------------------------------------------------

    async def create_api_key(self, prefix: str, hash_: str, now: datetime, expiration: datetime | None) -> ApiKeyRecord:
        def fn(c: sqlite3.Connection) -> ApiKeyRecord:
            cur = c.execute(
                "INSERT INTO api_keys (prefix, hash, created_at, expiration) VALUES (?, ?, ?, ?)",
                (prefix, hash_, _ts(now), _ts(expiration)),
            )
            return _apikey(c.execute("SELECT * FROM api_keys WHERE id = ?", (cur.lastrowid,)).fetchone())

        return await self._run(fn)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        return await self._run(lambda c: [_apikey(r) for r in c.execute("SELECT * FROM api_keys ORDER BY id")])

    async def expire_api_key(self, key_id: int, now: datetime) -> None:
        await self._run(lambda c: c.execute("UPDATE api_keys SET expiration = ? WHERE id = ?", (_ts(now), key_id)))

    async def delete_api_key(self, key_id: int) -> None:
        await self._run(lambda c: c.execute("DELETE FROM api_keys WHERE id = ?", (key_id,)))

    async def touch_api_keys(self, last_seen: dict[int, datetime]) -> None:
        """Record API keys' last use in one transaction (batched: not a write per request)."""

        def fn(c: sqlite3.Connection) -> None:
            c.executemany(
                "UPDATE api_keys SET last_seen = ? WHERE id = ?",
                [(_ts(t), i) for i, t in last_seen.items()],
            )

        await self._run(fn)

    # --- settings changed at run time (DNS, DERP regions), as JSON per name ---------------

    async def get_settings(self) -> dict[str, Any]:
        def fn(c: sqlite3.Connection) -> dict[str, Any]:
            return {r["name"]: json.loads(r["value"]) for r in c.execute("SELECT name, value FROM settings")}

        return await self._run(fn)

    async def put_setting(self, name: str, value: Any, now: datetime) -> None:
        """Store ``value`` (JSON) under ``name``; None deletes it."""

        def fn(c: sqlite3.Connection) -> None:
            if value is None:
                c.execute("DELETE FROM settings WHERE name = ?", (name,))
            else:
                c.execute(
                    "INSERT INTO settings (name, value, updated_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    (name, json.dumps(value), _ts(now)),
                )

        await self._run(fn)

    # --- policy -------------------------------------------------------------------------

    async def get_policy(self) -> str | None:
        def fn(c: sqlite3.Connection) -> str | None:
            row = c.execute("SELECT data FROM policies ORDER BY id DESC LIMIT 1").fetchone()
            return None if row is None else row["data"]

        return await self._run(fn)

    async def set_policy(self, data: str, now: datetime) -> None:
        await self._run(
            lambda c: c.execute("INSERT INTO policies (data, created_at) VALUES (?, ?)", (data, _ts(now)))
        )

    # --- whole-store snapshots (export, import) -----------------------------------------

    async def export_snapshot(self) -> Snapshot:
        """Everything, read in one transaction (a consistent backup of a running server)."""
        return await self._run(read_snapshot)

    async def import_snapshot(self, snapshot: Snapshot) -> None:
        """Write ``snapshot`` into this store in one transaction, keeping every ID.

        Raises StoreError when the store already holds users, nodes, keys or a policy (an
        import never merges), Conflict when the snapshot breaks a uniqueness rule; either
        way nothing is written."""
        await self._run(lambda c: write_snapshot(c, snapshot))

    async def backup(self, dest: Path) -> None:
        """Write a consistent copy of the database to ``dest`` (see backup.copy_database). It is
        taken between two transactions, so it holds every write acknowledged before it began."""
        from .backup import copy_database

        await trio.to_thread.run_sync(copy_database, self._conn, Path(dest), limiter=self._limiter)

    async def run_sync(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Escape hatch for maintenance code: ``fn`` runs inside one transaction."""
        return await self._run(fn)


# The tables a snapshot covers, in an order that satisfies the foreign keys.
_SNAPSHOT_TABLES = ("users", "pre_auth_keys", "api_keys", "nodes", "policies", "settings")


def read_snapshot(c: sqlite3.Connection) -> Snapshot:
    return Snapshot(
        users=tuple(_user(r) for r in c.execute("SELECT * FROM users ORDER BY id")),
        preauth_keys=tuple(_preauth(r) for r in c.execute("SELECT * FROM pre_auth_keys ORDER BY id")),
        api_keys=tuple(_apikey(r) for r in c.execute("SELECT * FROM api_keys ORDER BY id")),
        nodes=tuple(_node(r) for r in c.execute("SELECT * FROM nodes ORDER BY id")),
        policies=tuple(
            PolicyRecord(id=r["id"], data=r["data"], created_at=_dt(r["created_at"]))
            for r in c.execute("SELECT * FROM policies ORDER BY id")
        ),
        settings=tuple(
            SettingRecord(name=r["name"], value=json.loads(r["value"]), updated_at=_dt(r["updated_at"]))
            for r in c.execute("SELECT * FROM settings ORDER BY name")
        ),
    )


def write_snapshot(c: sqlite3.Connection, s: Snapshot) -> None:
    """Insert a whole snapshot into an empty store (the caller holds the transaction).

    The one place that knows every column an import writes: a schema change extends it."""
    held = [t for t in _SNAPSHOT_TABLES if c.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()]
    if held:
        raise StoreError(f"the database is not empty (it holds {', '.join(held)}): an import needs a new one")
    c.executemany(
        "INSERT INTO users (id, name, display_name, email, provider, provider_id, profile_pic_url, created_at,"
        " role, groups) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(u.id, u.name, u.display_name, u.email, u.provider, u.provider_id, u.profile_pic_url, _ts(u.created_at),
          u.role, json.dumps(list(u.groups))) for u in s.users],
    )
    c.executemany(
        "INSERT INTO pre_auth_keys (id, prefix, hash, user_id, reusable, ephemeral, used, tags, created_at,"
        " expiration, pre_approved) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(k.id, k.prefix, k.hash, k.user_id, int(k.reusable), int(k.ephemeral), int(k.used),
          json.dumps(list(k.tags)), _ts(k.created_at), _ts(k.expiration), int(k.pre_approved))
         for k in s.preauth_keys],
    )
    c.executemany(
        "INSERT INTO api_keys (id, prefix, hash, created_at, expiration, last_seen) VALUES (?, ?, ?, ?, ?, ?)",
        [(k.id, k.prefix, k.hash, _ts(k.created_at), _ts(k.expiration), _ts(k.last_seen)) for k in s.api_keys],
    )
    c.executemany(
        f"INSERT INTO nodes ({', '.join(_NODE_COLUMNS)}) VALUES ({', '.join('?' * len(_NODE_COLUMNS))})",
        [_node_values(n) for n in s.nodes],
    )
    c.executemany(
        "INSERT INTO policies (id, data, created_at) VALUES (?, ?, ?)",
        [(p.id, p.data, _ts(p.created_at)) for p in s.policies],
    )
    c.executemany(
        "INSERT INTO settings (name, value, updated_at) VALUES (?, ?, ?)",
        [(st.name, json.dumps(st.value), _ts(st.updated_at)) for st in s.settings],
    )
