"""The PostgreSQL engine: one database shared by an active server and its standbys.

Connections (psycopg 3, blocking, each used by one worker thread at a time):

- reads go to a small pool (``max_open_conns`` - 1 of them at once, ``max_idle_conns`` kept
  open, each closed after ``conn_max_idle_time_secs`` unused), in REPEATABLE READ READ ONLY
  transactions, on the active server and on standbys alike;
- writes go to one connection, the *writer*, behind a CapacityLimiter(1) as SQLite's, and only
  while this process holds the active lease.

The lease is a session-level advisory lock held by the writer's session, so fencing is
PostgreSQL's own: a process writes only on the session that holds the lock, and the lock passes
to another process only once that session has ended. The writer's session is given
``idle_session_timeout`` and ``idle_in_transaction_session_timeout`` equal to the lease timeout
and the active process renews it (a short query) several times per timeout. A process that is
killed closes its connections at once; one that is frozen (SIGSTOP, a VM paused) or cut off
from the database stops renewing, so PostgreSQL ends its session after the lease timeout and a
standby takes the lock. When the old process runs again, its session is gone: every write it
tries fails, it learns it lost the lease and steps down. No write of an old active can land
after a new one took over.

A standby polls the lock once a second on the connection that becomes its writer. A process
that takes the lock bumps ``trioscale_cluster.epoch`` and records its name, in its first
transaction; the table also holds the Noise public key the tailnet is served with, which every
server must share (a server whose key differs is refused).

Needs PostgreSQL 14 or newer (idle_session_timeout), reached directly: a pooler in transaction
mode (PgBouncer's default) would hand the session lock to whichever client comes next.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import trio

from .errors import Conflict, KeyMismatch, LeaseLost, StoreError
from .leases import ClusterStatus, Lease
from .migrations import FIRST_POSTGRES, LATEST, POSTGRES_MIGRATIONS

if TYPE_CHECKING:
    from ..config.model import PostgresConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

MIN_SERVER_VERSION = 140000  # idle_session_timeout
# Advisory lock keys (the two-int4 form): trioscale's, then which lock.
LOCK_SPACE = 0x7472696F  # "trio"
ACTIVE_LOCK = 1  # held by the active server's writer session
MIGRATE_LOCK = 2  # held (per transaction) while the schema is migrated
STANDBY_POLL = 1.0  # seconds between a standby's tries for the lock
RENEWALS_PER_LEASE = 5
CONNECT_TIMEOUT = 10  # seconds; libpq's connect_timeout

# What PostgreSQL reports when the database itself can no longer be used as ours: corrupt data
# or index, or a schema or privileges taken away. The server stops (StoreFailed).
_FATAL_STATES = {"XX001", "XX002", "42501", "42P01", "42703", "3D000"}
# What means the writer's session is gone (or can no longer write): the lease with it.
_SESSION_GONE_STATES = {"57P01", "57P02", "57P03", "57P05", "25006"}


def _psycopg():
    import psycopg
    from psycopg.rows import dict_row

    return psycopg, dict_row


def describe(cfg: "PostgresConfig") -> str:
    where = cfg.host or "the local socket"
    if cfg.host.startswith("/"):
        where = f"socket {cfg.host}"
    return f"PostgreSQL database {cfg.name!r} on {where}:{cfg.port}"


def is_fatal(e: BaseException) -> bool:
    return getattr(e, "sqlstate", None) in _FATAL_STATES


def _session_gone(conn: Any, e: BaseException) -> bool:
    state = getattr(e, "sqlstate", None) or ""
    return conn.closed or conn.broken or state.startswith("08") or state in _SESSION_GONE_STATES


def _short(e: BaseException) -> str:
    """libpq's message without its repeated "connection to server ... failed:" lines."""
    text = " ".join(str(e).split())
    return text[:300]


@functools.lru_cache(maxsize=512)
def _sql(sql: str) -> str:
    """The store's portable SQL (``?`` placeholders) in psycopg's (``%s``)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _Tx:
    """What a transaction function gets: ``execute``/``executemany`` as on sqlite3's connection
    (``?`` placeholders), rows as dicts."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self._conn.execute(_sql(sql), params)

    def executemany(self, sql: str, seq: Any) -> Any:
        cur = self._conn.cursor()
        rows = list(seq)
        if rows:
            cur.executemany(_sql(sql), rows)
        return cur


class _Pool:
    """Idle read connections (thread-safe); how many are in use at once is bounded by the
    engine's CapacityLimiter."""

    def __init__(self, connect: Callable[[], Any], max_idle: int, idle_time: float) -> None:
        self._connect = connect
        self._max_idle = max_idle
        self._idle_time = idle_time
        self._idle: list[tuple[float, Any]] = []
        self._lock = threading.Lock()

    def get(self) -> Any:
        now = time.monotonic()
        stale = []
        conn = None
        with self._lock:
            while self._idle:
                since, c = self._idle.pop()
                if (self._idle_time and now - since > self._idle_time) or c.closed or c.broken:
                    stale.append(c)
                    continue
                conn = c
                break
        for c in stale:
            c.close()
        return conn if conn is not None else self._connect()

    def put(self, conn: Any) -> None:
        if conn.closed or conn.broken:
            conn.close()
            return
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append((time.monotonic(), conn))
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, c in idle:
            c.close()


def migrate_schema(conn: Any, description: str) -> int:
    """Bring the schema to LATEST in one transaction; returns the version found. Raises
    StoreError for a newer schema or a database that holds other tables."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_SPACE, MIGRATE_LOCK))
        tables = {r["tablename"] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
        if "trioscale_schema" in tables:
            version = conn.execute("SELECT version FROM trioscale_schema").fetchone()["version"]
        elif tables:
            raise StoreError(
                f"{description} holds tables that are not trioscale's ({', '.join(sorted(tables)[:6])}): give "
                "trioscale an empty database of its own (`trioscale import headscale` reads Headscale's)")
        else:
            version = 0
            conn.execute("CREATE TABLE trioscale_schema (version integer NOT NULL)")
            conn.execute("INSERT INTO trioscale_schema (version) VALUES (0)")
        if version > LATEST:
            raise StoreError(
                f"{description}: database schema version {version} is newer than this trioscale knows "
                f"({LATEST}); run the newer trioscale that wrote it")
        if version and version < LATEST:
            log.info("migrating %s from schema %d to %d", description, version, LATEST)
        for number in range(max(version + 1, FIRST_POSTGRES), LATEST + 1):
            conn.execute(POSTGRES_MIGRATIONS[number])
        if version < LATEST:
            conn.execute("UPDATE trioscale_schema SET version = %s", (LATEST,))
    return version


class PostgresEngine:
    """See the module docstring. Raises StoreError when the database cannot be reached or used."""

    kind = "postgres"
    elects = True

    def __init__(self, cfg: "PostgresConfig", *, migrate: bool = True, name: str = "trioscale") -> None:
        self.cfg = cfg
        self.app_name = name[:63]  # PostgreSQL's limit (NAMEDATALEN - 1)
        self.description = describe(cfg)
        self.lease_timeout = cfg.lease_timeout
        first = self._connect()
        try:
            if first.info.server_version < MIN_SERVER_VERSION:
                raise StoreError(
                    f"{self.description}: PostgreSQL {first.info.server_version // 10000} is too old: "
                    "trioscale needs 14 or newer (idle_session_timeout fences a stalled active server)")
            if migrate:
                migrate_schema(first, self.description)
            else:
                self._check_schema(first)
        except Exception as e:
            first.close()
            psycopg, _ = _psycopg()
            if isinstance(e, psycopg.Error):
                raise StoreError(f"{self.description}: {_short(e)}") from None
            raise
        self._pool = _Pool(self._connect_reader, cfg.max_idle_conns, cfg.conn_max_idle_time)
        first.close()
        self._reads = trio.CapacityLimiter(max(1, cfg.max_open_conns - 1))
        self._writes = trio.CapacityLimiter(1)
        self._candidacy = trio.CapacityLimiter(1)
        self._candidate: Any = None  # a standby's connection, polling the lock
        self._writer: Any = None  # the session that holds the lock
        self.lease: Lease | None = None
        self._lost = trio.Event()
        self.lost_reason = ""

    def _check_schema(self, conn: Any) -> None:
        try:
            version = conn.execute("SELECT version FROM trioscale_schema").fetchone()["version"]
        except Exception:
            raise StoreError(f"{self.description}: no trioscale database here") from None
        if version != LATEST:
            raise StoreError(f"{self.description}: schema version {version}, this trioscale needs {LATEST}: "
                             "start the server once to migrate it")

    # --- connections --------------------------------------------------------------------

    def _connect(self, *, writer: bool = False) -> Any:
        psycopg, dict_row = _psycopg()
        cfg = self.cfg
        params: dict[str, Any] = {
            "dbname": cfg.name, "port": cfg.port, "connect_timeout": CONNECT_TIMEOUT,
            "application_name": self.app_name, "options": "-c TimeZone=UTC",
        }
        if cfg.host:
            params["host"] = cfg.host
        if cfg.user:
            params["user"] = cfg.user
        if cfg.password:
            params["password"] = cfg.password
        if cfg.ssl:
            params["sslmode"] = cfg.ssl
        if not cfg.host.startswith("/"):
            # A dead network makes a blocked call fail within the lease instead of TCP's minutes.
            lease_ms = int(self.lease_timeout * 1000)
            params.update(keepalives=1, keepalives_idle=max(1, int(self.lease_timeout)), keepalives_interval=1,
                          keepalives_count=3, tcp_user_timeout=lease_ms)
        try:
            conn = psycopg.connect(autocommit=True, row_factory=dict_row, **params)
        except psycopg.Error as e:
            raise StoreError(f"{self.description}: cannot connect: {_short(e)}") from None
        if writer:
            timeout = str(int(self.lease_timeout * 1000))
            conn.execute("SELECT set_config('idle_session_timeout', %s, false),"
                         " set_config('idle_in_transaction_session_timeout', %s, false)", (timeout, timeout))
        return conn

    def _connect_reader(self) -> Any:
        from psycopg import IsolationLevel

        conn = self._connect()
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        return conn

    def close(self, *, checkpoint: bool = True) -> None:
        self.lease = None
        for conn in (self._writer, self._candidate):
            if conn is not None:
                _close_when_free(conn)
        self._writer = self._candidate = None
        self._pool.close()

    def is_fatal(self, e: BaseException) -> bool:
        return is_fatal(e)

    # --- transactions -------------------------------------------------------------------

    async def run(self, fn: Callable[[Any], T], *, write: bool = True) -> T:
        psycopg, _ = _psycopg()
        if not write:
            return await trio.to_thread.run_sync(self._read, fn, limiter=self._reads)
        if self.lease is None:
            raise LeaseLost(f"this server is not the active one ({self.lost_reason or 'a standby does not write'})")
        conn = self._writer

        def txn() -> T:
            try:
                with conn.transaction():
                    return fn(_Tx(conn))
            except psycopg.IntegrityError as e:
                raise Conflict(_short(e)) from e

        try:
            return await trio.to_thread.run_sync(txn, limiter=self._writes)
        except psycopg.Error as e:
            if _session_gone(conn, e):
                self._lose(f"the database session was lost: {_short(e)}")
                raise LeaseLost(f"not written: {self.lost_reason}") from e
            raise

    def _read(self, fn: Callable[[Any], T]) -> T:
        """In a worker thread. A pooled connection that died while idle (a database restart)
        is replaced once."""
        psycopg, _ = _psycopg()
        for attempt in (1, 2):
            conn = self._pool.get()
            try:
                with conn.transaction():
                    return fn(_Tx(conn))
            except psycopg.Error as e:
                if attempt == 1 and (conn.closed or conn.broken):
                    continue
                raise
            finally:
                self._pool.put(conn)
        raise AssertionError("unreachable")

    # --- the lease ------------------------------------------------------------------------

    def _lose(self, reason: str) -> None:
        """Forget the lease (in the Trio thread); the writer's connection is closed aside."""
        if self.lease is not None:
            log.error("this server lost the active role: %s", reason)
        self.lease = None
        self.lost_reason = reason
        self._lost.set()
        writer, self._writer = self._writer, None
        if writer is not None:
            # Never awaited: closing waits for a thread still blocked on the connection.
            trio.lowlevel.start_thread_soon(functools.partial(_close_when_free, writer), lambda outcome: None)

    async def try_become_active(self, name: str, noise_public: str) -> Lease | None:
        if self.lease is not None:
            return self.lease
        got = await trio.to_thread.run_sync(self._try_acquire, name, noise_public, limiter=self._candidacy,
                                            abandon_on_cancel=True)
        if got is None:
            return None
        self._writer, lease = got
        if lease is not None:
            self._writes = trio.CapacityLimiter(1)  # a thread stuck on a lost writer keeps the old one
            self._lost = trio.Event()
            self.lost_reason = ""
            self.lease = lease
            log.info("this server is now the active one (epoch %d) on %s", lease.epoch, self.description)
        return lease

    def _try_acquire(self, name: str, noise_public: str) -> tuple[Any, Lease] | None:
        psycopg, _ = _psycopg()
        conn = self._candidate
        if conn is None or conn.closed or conn.broken:
            self._candidate = None
            conn = self._connect(writer=True)
            self._candidate = conn
        try:
            got = conn.execute("SELECT pg_try_advisory_lock(%s, %s) AS got", (LOCK_SPACE, ACTIVE_LOCK)).fetchone()["got"]
            if not got:
                return None
            try:
                if conn.execute("SELECT pg_is_in_recovery() AS r").fetchone()["r"]:
                    raise StoreError(f"{self.description} is a read-only replica: the active server needs the primary")
                with conn.transaction():
                    row = conn.execute("SELECT noise_public FROM trioscale_cluster WHERE id = 1 FOR UPDATE").fetchone()
                    if row["noise_public"] and row["noise_public"] != noise_public:
                        raise KeyMismatch(_key_mismatch(row["noise_public"], noise_public))
                    row = conn.execute(
                        "UPDATE trioscale_cluster SET noise_public = %s, epoch = epoch + 1, active_name = %s,"
                        " active_since = now() WHERE id = 1 RETURNING epoch, active_since",
                        (noise_public, name)).fetchone()
            except BaseException:
                if not (conn.closed or conn.broken):
                    conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_SPACE, ACTIVE_LOCK))
                raise
        except psycopg.Error as e:
            self._candidate = None
            conn.close()
            raise StoreError(f"{self.description}: cannot take the active role: {_short(e)}") from None
        self._candidate = None
        return conn, Lease(row["epoch"], name, row["active_since"])

    async def keep_active(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        if self.lease is None:
            raise LeaseLost(f"this server is not the active one ({self.lost_reason or 'never was'})")
        lost, writer = self._lost, self._writer
        task_status.started()
        interval = self.lease_timeout / RENEWALS_PER_LEASE
        psycopg, _ = _psycopg()
        while True:
            with trio.move_on_after(interval):
                await lost.wait()
            if lost.is_set():
                raise LeaseLost(self.lost_reason)
            reason = None
            with trio.move_on_after(self.lease_timeout) as waited:
                try:
                    held = await trio.to_thread.run_sync(self._renew, writer, limiter=self._writes,
                                                         abandon_on_cancel=True)
                    if not held:
                        reason = "the database no longer shows this server's lock"
                except psycopg.Error as e:
                    reason = f"the database session was lost: {_short(e)}"
            if waited.cancelled_caught:
                reason = f"the database did not answer within {self.lease_timeout:g}s"
            if reason is not None and self._writer is writer:
                self._lose(reason)
            if lost.is_set():
                raise LeaseLost(self.lost_reason)

    @staticmethod
    def _renew(conn: Any) -> bool:
        row = conn.execute(
            "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            " AND classid = %s AND objid = %s AND objsubid = 2 AND granted", (LOCK_SPACE, ACTIVE_LOCK)).fetchone()
        return row["n"] == 1

    async def step_down(self) -> None:
        if self.lease is not None or self._writer is not None:
            self._lose("it stepped down")

    async def cluster_status(self) -> ClusterStatus:
        def fn(c: Any) -> ClusterStatus:
            row = c.execute(
                "SELECT active_name, active_since, epoch, EXISTS (SELECT 1 FROM pg_locks l WHERE"
                " l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND l.classid = ? AND l.objid = ? AND l.objsubid = 2 AND l.granted) AS held"
                " FROM trioscale_cluster WHERE id = 1", (LOCK_SPACE, ACTIVE_LOCK)).fetchone()
            if row is None or not row["held"]:
                return ClusterStatus("", None, row["epoch"] if row else 0)
            return ClusterStatus(row["active_name"], row["active_since"], row["epoch"])

        return await self.run(fn, write=False)

    async def noise_public(self) -> str:
        """The Noise public key the tailnet is served with ("" before a server first ran)."""
        return await self.run(
            lambda c: c.execute("SELECT noise_public FROM trioscale_cluster WHERE id = 1").fetchone()["noise_public"],
            write=False)

    # --- copies ---------------------------------------------------------------------------

    async def backup(self, dest: Path, store: Any) -> None:
        """An SQLite file holding the database's consistent snapshot (see backup.py)."""
        from .backup import write_sqlite_copy

        snapshot = await store.export_snapshot()
        await trio.to_thread.run_sync(write_sqlite_copy, snapshot, Path(dest))

    @staticmethod
    def id_marks(c: Any) -> dict[str, int]:
        from .sqlite import ID_TABLES

        out = {}
        for table in ID_TABLES:
            row = c.execute("SELECT pg_sequence_last_value(pg_get_serial_sequence(?, 'id')) AS v", (table,)).fetchone()
            if row["v"] is not None:
                out[table] = row["v"]
        return out

    @staticmethod
    def keep_id_marks(c: Any, marks: dict[str, int]) -> None:
        for table, mark in marks.items():
            if mark > 0:
                c.execute(
                    "SELECT setval(pg_get_serial_sequence(?, 'id'), GREATEST(?, COALESCE("
                    "pg_sequence_last_value(pg_get_serial_sequence(?, 'id')), 0)))", (table, mark, table))


def _close_when_free(conn: Any) -> None:
    """Close ``conn`` once no other thread is using it (libpq's connection is not safe to
    finish under a call in progress)."""
    with conn.lock:
        conn.close()


def _key_mismatch(stored: str, ours: str) -> str:
    return (f"this server's Noise key ({ours[:16]}...) is not the tailnet's ({stored[:16]}..., the key the other "
            "servers on this database use): copy noise.private_key_path from one of them to this machine")
