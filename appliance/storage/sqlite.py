"""The SQLite engine: one file (WAL), one connection behind a worker thread.

Every transaction runs in a worker thread through a CapacityLimiter(1), so the connection is
never used by two threads at once. A transaction is committed before ``run`` returns: whatever
a caller acknowledges is on disk. The one process that opens the file is always the active
one: there is nothing to elect.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar

import trio

from .errors import Conflict, StoreError
from .leases import ClusterStatus, Lease
from .migrations import LATEST, MIGRATIONS

log = logging.getLogger(__name__)
T = TypeVar("T")

# The tables whose IDs are never reused (AUTOINCREMENT): sqlite_sequence holds the highest
# ID each ever handed out.
ID_TABLES = ("users", "pre_auth_keys", "api_keys", "nodes")

# SQLite's primary result codes that mean the database itself can no longer be trusted or
# reached; sqlite3 exceptions carry the (extended) code in ``sqlite_errorcode``.
_FATAL_CODES = {
    sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CORRUPT,
    sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_NOTADB,
}


def is_fatal(e: BaseException) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    return isinstance(e, sqlite3.DatabaseError) and code is not None and (code & 0xFF) in _FATAL_CODES


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
        for statement in statements(MIGRATIONS[number - 1]):
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


def statements(script: str) -> list[str]:
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


def id_marks(c: sqlite3.Connection) -> dict[str, int]:
    """The highest ID each table ever handed out (deleted ones included)."""
    return {r[0]: r[1] for r in c.execute("SELECT name, seq FROM sqlite_sequence") if r[0] in ID_TABLES and r[1] > 0}


def keep_id_marks(c: sqlite3.Connection, marks: dict[str, int]) -> None:
    """Raise each table's ID counter to ``marks`` (after rows were copied in with their IDs), so
    that an ID retired where they came from stays retired here."""
    have = id_marks(c)
    for table, mark in marks.items():
        if table not in ID_TABLES or mark <= have.get(table, 0):
            continue
        if table in have:
            c.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (mark, table))
        else:
            c.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, mark))


class SQLiteEngine:
    """One SQLite file; the process that opened it is always the active one."""

    kind = "sqlite"
    elects = False  # nothing to elect: one process, one file

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.description = str(self.path)
        self.conn = open_database(self.path)
        self._limiter = trio.CapacityLimiter(1)
        self._lease: Lease | None = None

    def close(self, *, checkpoint: bool) -> None:
        try:
            if checkpoint:
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:
            log.warning("%s: no checkpoint at close: %s", self.path, e)
        finally:
            self.conn.close()

    def is_fatal(self, e: BaseException) -> bool:
        return is_fatal(e)

    async def run(self, fn: Callable[[Any], T], *, write: bool = True) -> T:
        """Run ``fn(connection)`` in one transaction in the worker thread; committed when this
        returns. Raises Conflict for a broken uniqueness rule (rolled back)."""

        def txn() -> T:
            conn = self.conn
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

        return await trio.to_thread.run_sync(txn, limiter=self._limiter)

    async def backup(self, dest: Path, store: Any = None) -> None:
        """A consistent copy (see backup.copy_database), between two transactions."""
        from .backup import copy_database

        await trio.to_thread.run_sync(copy_database, self.conn, Path(dest), limiter=self._limiter)

    # --- the active role: always this process's ------------------------------------------

    async def try_become_active(self, name: str, noise_public: str) -> Lease:
        self._lease = Lease(0, name, datetime.now(timezone.utc))
        return self._lease

    async def keep_active(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def step_down(self) -> None:
        pass

    async def cluster_status(self) -> ClusterStatus:
        lease = self._lease
        return ClusterStatus(lease.name, lease.since, 0) if lease else ClusterStatus("", None, 0)

    # The SQL the store writes once for both engines differs in these few places.
    id_marks = staticmethod(id_marks)
    keep_id_marks = staticmethod(keep_id_marks)
