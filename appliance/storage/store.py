"""The store: every read and write of the tailnet's state, one short transaction each.

The SQL is written once for both engines (the portable subset of SQLite and PostgreSQL:
``?`` placeholders, ``INSERT ... RETURNING``, ``TRUE``/``FALSE``); the engine runs it:

- SQLite (sqlite.py, the default): one file, one connection behind a worker thread;
- PostgreSQL (postgres.py): a small pool of connections behind worker threads, and a lease that
  makes exactly one of the processes sharing the database the active one, which alone writes.

Every public method is async and runs one transaction; a write is committed before the method
returns: whatever a caller acknowledges is stored.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, TypeVar

import trio

from .. import meters
from ..control.codec import to_json
from ..control.hostinfo import stored_hostinfo
from .errors import Conflict, LeaseLost, StoreError, StoreFailed
from .leases import ClusterStatus, Lease
from .sqlite import SQLiteEngine
from .audit import stamp
from .webhooks import list_webhooks
from .records import (
    ApiKeyRecord, ConsoleSession, NodeRecord, PolicyRecord, PolicyVersion, PreAuthKeyRecord, SettingRecord,
    Snapshot, UserRecord,
)

__all__ = ["Store", "StoreError", "Conflict", "StoreFailed", "LeaseLost", "Lease", "ClusterStatus"]

log = logging.getLogger(__name__)
T = TypeVar("T")
Row = Mapping[str, Any]


class Tx(Protocol):
    """What a transaction function is given: an sqlite3 connection, or the PostgreSQL engine's
    equivalent (same ``execute``/``executemany``, rows read by column name)."""

    def execute(self, sql: str, params: Any = ...) -> Any: ...

    def executemany(self, sql: str, seq: Any) -> Any: ...


def _ts(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(timezone.utc).isoformat()


def _dt(s: str | datetime | None) -> datetime | None:
    """A stored time: ISO text (SQLite) or a timestamptz (PostgreSQL), in UTC."""
    if s is None:
        return None
    if isinstance(s, datetime):
        return s.astimezone(timezone.utc)
    return datetime.fromisoformat(s)


def _user(r: Row) -> UserRecord:
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


def _preauth(r: Row) -> PreAuthKeyRecord:
    return PreAuthKeyRecord(
        id=r["id"], prefix=r["prefix"], hash=r["hash"], user_id=r["user_id"],
        reusable=bool(r["reusable"]), ephemeral=bool(r["ephemeral"]), used=bool(r["used"]),
        tags=tuple(json.loads(r["tags"])), created_at=_dt(r["created_at"]),
        expiration=_dt(r["expiration"]), pre_approved=bool(r["pre_approved"]),
    )


def _apikey(r: Row) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=r["id"], prefix=r["prefix"], hash=r["hash"], created_at=_dt(r["created_at"]),
        expiration=_dt(r["expiration"]), last_seen=_dt(r["last_seen"]),
    )


def _node(r: Row) -> NodeRecord:
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


def _readable(c: Tx, table: str, convert: Callable[[Row], T]) -> list[T]:
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
        json.dumps(list(n.approved_routes)), bool(n.ephemeral), n.register_method, bool(n.authorized),
    )


class Store:
    """The tailnet's state in a database. Owns the engine; ``close()`` closes it.

    ``Store(path)`` opens (or creates) the SQLite file at ``path``; ``open_store(config)``
    (storage/__init__.py) picks the engine the configuration names.
    """

    def __init__(self, where: "Path | str | Any") -> None:
        if isinstance(where, (str, Path)):
            where = SQLiteEngine(Path(where))
        self._engine = where
        self.kind: str = where.kind
        self.description: str = where.description
        self.failure: StoreFailed | None = None
        self._failed = trio.Event()

    @property
    def elects(self) -> bool:
        """True when processes share the database and one of them is elected active."""
        return self._engine.elects

    def close(self) -> None:
        self._engine.close(checkpoint=self.failure is None)

    async def wait_failed(self) -> StoreFailed:
        """Wait until the database fails (see StoreFailed); returns the failure."""
        await self._failed.wait()
        assert self.failure is not None
        return self.failure

    def _fail(self, e: BaseException) -> StoreFailed:
        if self.failure is None:
            self.failure = StoreFailed(f"{self.description}: {e}")
            log.critical("the database failed: %s", self.failure)
            self._failed.set()
        return self.failure

    async def _run(self, fn: Callable[[Tx], T], *, write: bool = True) -> T:
        """Run ``fn`` in one transaction; committed when this returns. ``write=False``: it only
        reads (PostgreSQL runs it on a pooled connection, on a standby too)."""
        if self.failure is not None:
            raise StoreFailed(str(self.failure))
        began = time.monotonic()
        try:
            return await self._engine.run(fn, write=write)
        except (Conflict, LeaseLost):
            raise
        except Exception as e:
            if self._engine.is_fatal(e):
                raise self._fail(e) from e
            raise
        finally:
            meters.store_latency.observe(time.monotonic() - began)

    # --- the active role (see postgres.py for the lease) ---------------------------------

    async def try_become_active(self, name: str, noise_public: str) -> Lease | None:
        """Take the active role if no other process holds it; None when one does. ``name``
        says who holds it (status); ``noise_public`` is this server's Noise public key, which
        must be the one the database was first served with (StoreError otherwise)."""
        return await self._engine.try_become_active(name, noise_public)

    async def keep_active(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Renew the lease for as long as this process holds it; raises LeaseLost when it is
        lost (the database is unreachable, or it passed to another process)."""
        await self._engine.keep_active(task_status=task_status)

    async def step_down(self) -> None:
        """Give the active role up (a clean stop, or after LeaseLost)."""
        await self._engine.step_down()

    async def cluster_status(self) -> ClusterStatus:
        return await self._engine.cluster_status()

    async def noise_public(self) -> str:
        """The Noise public key the tailnet on a shared database is served with ("" when none
        yet, or with SQLite, where the key file is the only truth)."""
        return await self._engine.noise_public() if self.elects else ""

    async def ping(self) -> None:
        """One round trip to the database (health checks)."""
        await self._run(lambda c: c.execute("SELECT 1").fetchall(), write=False)

    # --- loading ------------------------------------------------------------------------

    async def load_all(self) -> tuple[list[UserRecord], list[NodeRecord], list[PreAuthKeyRecord]]:
        def fn(c: Tx):
            users = _readable(c, "users", _user)
            nodes = _readable(c, "nodes", _node)
            keys = _readable(c, "pre_auth_keys", _preauth)
            return users, nodes, keys

        return await self._run(fn, write=False)

    # --- users --------------------------------------------------------------------------

    async def create_user(
        self, name: str, display_name: str, email: str, now: datetime, profile_pic_url: str = "", *,
        provider: str = "", provider_id: str = "", groups: tuple[str, ...] = (),
    ) -> UserRecord:
        """The first user of the tailnet is its owner (in the same transaction, and only the
        active server writes, so two concurrent first users cannot both be)."""

        def fn(c: Tx) -> UserRecord:
            first = c.execute("SELECT COUNT(*) AS n FROM users").fetchone()["n"] == 0
            return _user(c.execute(
                "INSERT INTO users (name, display_name, email, created_at, provider, provider_id,"
                " profile_pic_url, groups, role) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                (name, display_name, email, _ts(now), provider, provider_id, profile_pic_url,
                 json.dumps(list(groups)), "owner" if first else "member"),
            ).fetchall()[0])

        return await self._run(fn)

    async def update_user(self, u: UserRecord) -> UserRecord:
        """Write a user's profile, role and groups (not its ID or creation time)."""
        return (await self.update_users([u]))[0]

    async def update_users(self, users: list[UserRecord]) -> list[UserRecord]:
        """update_user for several users in one transaction (an ownership handover)."""

        def fn(c: Tx) -> list[UserRecord]:
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
        def fn(c: Tx) -> PreAuthKeyRecord:
            return _preauth(c.execute(
                "INSERT INTO pre_auth_keys (prefix, hash, user_id, reusable, ephemeral, tags,"
                " created_at, expiration, pre_approved) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                (prefix, hash_, user_id, bool(reusable), bool(ephemeral), json.dumps(list(tags)),
                 _ts(now), _ts(expiration), bool(pre_approved)),
            ).fetchall()[0])

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

        def fn(c: Tx) -> NodeRecord:
            if mark_key_used is not None:
                cur = c.execute(
                    "UPDATE pre_auth_keys SET used = TRUE WHERE id = ? AND (used = FALSE OR reusable = TRUE)",
                    (mark_key_used,),
                )
                if cur.rowcount != 1:
                    raise Conflict("pre-auth key already used")
            values = _node_values(node)
            if node.id == 0:
                cols = _NODE_COLUMNS[1:]
                rows = c.execute(
                    f"INSERT INTO nodes ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) RETURNING *",
                    values[1:],
                ).fetchall()
            else:
                sets = ", ".join(f"{col} = ?" for col in _NODE_COLUMNS[1:])
                rows = c.execute(f"UPDATE nodes SET {sets} WHERE id = ? RETURNING *", values[1:] + (node.id,)).fetchall()
                if not rows:
                    raise StoreError(f"node {node.id} is not in the database")
            return _node(rows[0])

        return await self._run(fn)

    async def delete_node(self, node_id: int) -> None:
        await self._run(lambda c: c.execute("DELETE FROM nodes WHERE id = ?", (node_id,)))

    async def save_soft_state(self, nodes: list[NodeRecord]) -> None:
        """Write the soft columns of these nodes (what clients report often: last seen,
        endpoints, disco key, hostinfo) in one transaction. A node deleted meanwhile is skipped."""

        def fn(c: Tx) -> None:
            c.executemany(
                "UPDATE nodes SET last_seen = ?, endpoints = ?, disco_key = ?, hostinfo = ? WHERE id = ?",
                [(_ts(n.last_seen), json.dumps(list(n.endpoints)), n.disco_key, json.dumps(to_json(n.hostinfo)), n.id)
                 for n in nodes],
            )

        await self._run(fn)

    # --- API keys -----------------------------------------------------------------------

    async def create_api_key(self, prefix: str, hash_: str, now: datetime, expiration: datetime | None) -> ApiKeyRecord:
        def fn(c: Tx) -> ApiKeyRecord:
            return _apikey(c.execute(
                "INSERT INTO api_keys (prefix, hash, created_at, expiration) VALUES (?, ?, ?, ?) RETURNING *",
                (prefix, hash_, _ts(now), _ts(expiration)),
            ).fetchall()[0])

        return await self._run(fn)

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        return await self._run(lambda c: [_apikey(r) for r in c.execute("SELECT * FROM api_keys ORDER BY id")],
                               write=False)

    async def expire_api_key(self, key_id: int, now: datetime) -> None:
        await self._run(lambda c: c.execute("UPDATE api_keys SET expiration = ? WHERE id = ?", (_ts(now), key_id)))

    async def delete_api_key(self, key_id: int) -> None:
        await self._run(lambda c: c.execute("DELETE FROM api_keys WHERE id = ?", (key_id,)))

    async def touch_api_keys(self, last_seen: dict[int, datetime]) -> None:
        """Record API keys' last use in one transaction (batched: not a write per request)."""

        def fn(c: Tx) -> None:
            c.executemany(
                "UPDATE api_keys SET last_seen = ? WHERE id = ?",
                [(_ts(t), i) for i, t in last_seen.items()],
            )

        await self._run(fn)

    # --- settings changed at run time (DNS, DERP regions), as JSON per name ---------------

    async def get_settings(self) -> dict[str, Any]:
        def fn(c: Tx) -> dict[str, Any]:
            return {r["name"]: json.loads(r["value"]) for r in c.execute("SELECT name, value FROM settings")}

        return await self._run(fn, write=False)

    async def put_setting(self, name: str, value: Any, now: datetime) -> None:
        """Store ``value`` (JSON) under ``name``; None deletes it."""

        def fn(c: Tx) -> None:
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
        def fn(c: Tx) -> str | None:
            row = c.execute("SELECT data FROM policies ORDER BY id DESC LIMIT 1").fetchone()
            return None if row is None else row["data"]

        return await self._run(fn, write=False)

    async def set_policy(self, data: str, now: datetime, author: str = "") -> int:
        """Store a new version (the newest is in force); returns its ID."""
        return await self._run(
            lambda c: c.execute("INSERT INTO policies (data, created_at, author) VALUES (?, ?, ?) RETURNING id",
                                (data, _ts(now), author)).fetchall()[0]["id"]
        )

    async def policy_versions(self, limit: int) -> list[PolicyVersion]:
        """The newest ``limit`` versions, newest first, without their text."""
        def fn(c: Tx) -> list[PolicyVersion]:
            rows = c.execute("SELECT id, created_at, author, length(data) AS size FROM policies"
                             " ORDER BY id DESC LIMIT ?", (limit,))
            return [PolicyVersion(r["id"], _dt(r["created_at"]), r["author"], r["size"]) for r in rows]

        return await self._run(fn, write=False)

    async def policy_version(self, version_id: int) -> tuple[PolicyVersion, str] | None:
        def fn(c: Tx):
            r = c.execute("SELECT * FROM policies WHERE id = ?", (version_id,)).fetchone()
            if r is None:
                return None
            return PolicyVersion(r["id"], _dt(r["created_at"]), r["author"], len(r["data"])), r["data"]

        return await self._run(fn, write=False)

    # --- the web console's one-time links and sessions (hashes of their secrets) ---------

    async def create_console_link(self, hash_: str, user_id: int | None, now: datetime, expires: datetime) -> None:
        def fn(c: Tx) -> None:
            c.execute("DELETE FROM console_links WHERE expires_at <= ?", (_ts(now),))
            c.execute("INSERT INTO console_links (hash, user_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                      (hash_, user_id, _ts(now), _ts(expires)))

        await self._run(fn)

    async def take_console_link(self, hash_: str, now: datetime) -> tuple[bool, int | None]:
        """Use a link once: (found and not expired, its user ID); it is gone either way."""
        def fn(c: Tx) -> tuple[bool, int | None]:
            r = c.execute("DELETE FROM console_links WHERE hash = ? RETURNING user_id, expires_at",
                          (hash_,)).fetchone()
            if r is None or _dt(r["expires_at"]) <= now:
                return False, None
            return True, r["user_id"]

        return await self._run(fn)

    async def create_console_session(self, s: ConsoleSession) -> None:
        def fn(c: Tx) -> None:
            c.execute("DELETE FROM console_sessions WHERE expires_at <= ?", (_ts(s.created_at),))
            c.execute("INSERT INTO console_sessions (hash, user_id, method, source, created_at, expires_at)"
                      " VALUES (?, ?, ?, ?, ?, ?)",
                      (s.hash, s.user_id, s.method, s.source, _ts(s.created_at), _ts(s.expires_at)))

        await self._run(fn)

    async def get_console_session(self, hash_: str) -> ConsoleSession | None:
        def fn(c: Tx) -> ConsoleSession | None:
            r = c.execute("SELECT * FROM console_sessions WHERE hash = ?", (hash_,)).fetchone()
            if r is None:
                return None
            return ConsoleSession(r["hash"], r["user_id"], r["method"], r["source"], _dt(r["created_at"]),
                                  _dt(r["expires_at"]))

        return await self._run(fn, write=False)

    async def delete_console_session(self, hash_: str) -> None:
        await self._run(lambda c: c.execute("DELETE FROM console_sessions WHERE hash = ?", (hash_,)))

    # --- whole-store snapshots (export, import) -----------------------------------------

    async def export_snapshot(self) -> Snapshot:
        """Everything, read in one transaction (a consistent backup of a running server)."""
        engine = self._engine
        return await self._run(lambda c: read_snapshot(c, engine.id_marks(c)), write=False)

    async def import_snapshot(self, snapshot: Snapshot) -> None:
        """Write ``snapshot`` into this store in one transaction, keeping every ID.

        Raises StoreError when the store already holds users, nodes, keys or a policy (an
        import never merges), Conflict when the snapshot breaks a uniqueness rule; either
        way nothing is written. The snapshot's ``id_marks`` (and its highest IDs) become the
        tables' ID counters here, so an ID retired where it came from stays retired."""
        await self._run(lambda c: write_snapshot(c, snapshot, self._engine.keep_id_marks))

    async def replace_all(self, snapshot: Snapshot) -> None:
        """Make the store hold exactly ``snapshot`` (a restore), in one transaction. ID
        counters only go up: an ID handed out after the snapshot was taken stays retired."""

        def fn(c: Tx) -> None:
            for table in reversed(_SNAPSHOT_TABLES):
                c.execute(f"DELETE FROM {table}")
            write_snapshot(c, snapshot, self._engine.keep_id_marks)

        await self._run(fn)

    async def backup(self, dest: Path) -> None:
        """Write a consistent copy of the database to ``dest``: an SQLite file, mode 0600,
        checked (see backup.py), whatever the engine. It holds every write acknowledged before
        it began."""
        await self._engine.backup(Path(dest), self)

    async def node_key_usable(self, node_key: str, now: datetime) -> bool:
        """Whether a stored node has ``node_key`` and has not expired (a standby's relay asks)."""

        def fn(c: Tx) -> bool:
            row = c.execute("SELECT expiry FROM nodes WHERE node_key = ?", (node_key,)).fetchone()
            return row is not None and (row["expiry"] is None or _dt(row["expiry"]) > now)

        return await self._run(fn, write=False)

    async def held_identities(self) -> list[tuple[str | None, str | None, str]]:
        """(ipv4, ipv6, given name) of every stored node, readable or not: what a new node
        must not be given."""
        return await self._run(
            lambda c: [(r["ipv4"], r["ipv6"], r["given_name"]) for r in c.execute("SELECT ipv4, ipv6, given_name FROM nodes")],
            write=False)

    async def run_sync(self, fn: Callable[[Tx], Any]) -> Any:
        """Escape hatch for maintenance code: ``fn`` runs inside one transaction."""
        return await self._run(fn)


# The tables a snapshot covers, in an order that satisfies the foreign keys.
_SNAPSHOT_TABLES = ("users", "pre_auth_keys", "api_keys", "nodes", "policies", "settings", "webhooks")


def read_snapshot(c: Tx, id_marks: dict[str, int] | None = None) -> Snapshot:
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
        webhooks=tuple(list_webhooks(c)),
        id_marks=tuple(sorted((id_marks or {}).items())),
    )


def write_snapshot(c: Tx, s: Snapshot, keep_id_marks: Callable[[Tx, dict[str, int]], None]) -> None:
    """Insert a whole snapshot into an empty store (the caller holds the transaction), then set
    each table's ID counter with ``keep_id_marks`` (the engine's) to the highest ID it holds or
    the snapshot says was handed out.

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
        [(k.id, k.prefix, k.hash, k.user_id, bool(k.reusable), bool(k.ephemeral), bool(k.used),
          json.dumps(list(k.tags)), _ts(k.created_at), _ts(k.expiration), bool(k.pre_approved))
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
    c.executemany(
        "INSERT INTO webhooks (id, url, secret, events, created_at) VALUES (?, ?, ?, ?, ?)",
        [(w.id, w.url, w.secret, json.dumps(list(w.events)), stamp(w.created_at)) for w in s.webhooks],
    )
    marks = dict(s.id_marks)
    for table, rows in (("users", s.users), ("pre_auth_keys", s.preauth_keys), ("api_keys", s.api_keys),
                        ("nodes", s.nodes), ("policies", s.policies),
                        ("webhooks", s.webhooks)):
        marks[table] = max([marks.get(table, 0), *(r.id for r in rows)])
    keep_id_marks(c, marks)
