"""Backups of the database and restoring one.

A backup is made with SQLite's online backup API from a connection that sees a committed state,
so it is consistent even while the server writes (the server makes it between two of its
transactions). The copy is a single self-contained file (rollback journal mode, no -wal), mode
0600, checked with ``PRAGMA integrity_check`` before it is given its final name.

Restoring replaces the database of a stopped server with a checked backup; the database it
replaces is kept beside it.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from .errors import StoreError
from .migrations import LATEST
from .records import Snapshot
from .sqlite import keep_id_marks, open_database


class BackupError(StoreError):
    """A backup could not be made, or a file is not a usable backup."""


def _open_existing(path: Path) -> sqlite3.Connection:
    """A connection to an existing database file (never creates one)."""
    if not path.is_file():
        raise BackupError(f"{path}: no such database file")
    try:
        conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=rw", uri=True, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=5000")
        return conn
    except sqlite3.Error as e:
        raise BackupError(f"{path}: {e}") from None


def check_database(path: Path) -> int:
    """Raise BackupError unless ``path`` is a sound trioscale database this version can use;
    returns its schema version."""
    conn = _open_existing(path)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchall()
        if [tuple(r) for r in result] != [("ok",)]:
            raise BackupError(f"{path}: integrity check failed: {'; '.join(str(r[0]) for r in result[:5])}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as e:
        raise BackupError(f"{path}: not a usable database: {e}") from None
    finally:
        conn.close()
    if not {"users", "nodes", "pre_auth_keys"} <= tables or version < 1:
        raise BackupError(f"{path}: not a trioscale database")
    if version > LATEST:
        raise BackupError(f"{path}: schema version {version} is newer than this trioscale knows ({LATEST})")
    return version


def copy_database(src: sqlite3.Connection, dest: Path) -> None:
    """Copy the database behind ``src`` to the new file ``dest`` (consistent, checked, 0600).

    Written to a temporary name beside ``dest`` and renamed, so ``dest`` is the whole copy or
    absent. Raises BackupError (``dest`` exists, cannot be written, or the copy fails its check).
    """

    def fill(out: sqlite3.Connection) -> None:
        # One step (pages=-1): the source's read transaction spans the whole copy.
        src.backup(out)

    _write_checked(Path(dest), fill)


def write_sqlite_copy(snapshot: Snapshot, dest: Path) -> None:
    """Write ``snapshot`` (from any engine: a PostgreSQL store's backup) as a new trioscale
    SQLite database at ``dest``, with the same guarantees as copy_database."""
    from .store import write_snapshot

    def fill(out: sqlite3.Connection) -> None:
        out.close()  # the file is made by open_database, with the current schema
        conn = open_database(tmp_of(Path(dest)))
        try:
            conn.execute("BEGIN IMMEDIATE")
            write_snapshot(conn, snapshot, keep_id_marks)
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    _write_checked(Path(dest), fill)


def tmp_of(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.tmp-{os.getpid()}")


def _write_checked(dest: Path, fill) -> None:
    if dest.exists():
        raise BackupError(f"{dest} exists; choose a new file name")
    tmp = tmp_of(dest)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        out = sqlite3.connect(tmp, isolation_level=None)
        try:
            fill(out)
        finally:
            out.close()
        out = sqlite3.connect(tmp, isolation_level=None)
        try:
            out.execute("PRAGMA journal_mode=DELETE")  # one file, no -wal needed to read it
        finally:
            out.close()
        check_database(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.rename(tmp, dest)
        _fsync_dir(dest.parent)
    except (OSError, sqlite3.Error, StoreError) as e:
        if isinstance(e, BackupError):
            raise
        raise BackupError(f"backup to {dest} failed: {getattr(e, 'strerror', None) or e}") from None
    finally:
        for leftover in (tmp, *(tmp.with_name(tmp.name + s) for s in ("-journal", "-wal", "-shm"))):
            try:
                leftover.unlink()
            except OSError:
                pass


def backup_file(db: Path, dest: Path) -> None:
    """Back up the database file ``db`` directly (no server running: see cli.do_backup)."""
    check_version = _open_existing(Path(db))
    try:
        version = check_version.execute("PRAGMA user_version").fetchone()[0]
        if version > LATEST:
            raise BackupError(f"{db}: schema version {version} is newer than this trioscale knows ({LATEST})")
        copy_database(check_version, dest)
    except sqlite3.Error as e:
        raise BackupError(f"{db}: {e}") from None
    finally:
        check_version.close()


def restore_file(backup: Path, db: Path) -> Path | None:
    """Make the checked ``backup`` the database at ``db`` (the server must be stopped).

    The database it replaces is kept as ``db.before-restore-<UTC time>``, with its -wal (so
    whatever the log held stays with it, even for a file too damaged to open), and that path is
    returned (None when there was none). No -wal or -shm is left beside the restored file: SQLite
    would replay an old log into it. The new file gets the old one's owner and mode 0600; until
    it is in place the old database stays where it was.
    """
    backup, db = Path(backup), Path(db)
    check_database(backup)
    tmp = db.with_name(f".{db.name}.restore-{os.getpid()}")
    kept = None
    try:
        src = _open_existing(backup)
        try:
            copy_database(src, tmp)
        finally:
            src.close()
        if db.exists():
            st = db.stat()
            if os.geteuid() == 0:
                os.chown(tmp, st.st_uid, st.st_gid)
            kept = db.with_name(f"{db.name}.before-restore-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}")
            os.rename(db, kept)
            if Path(f"{db}-wal").exists():
                os.rename(f"{db}-wal", f"{kept}-wal")
        Path(f"{db}-shm").unlink(missing_ok=True)
        os.rename(tmp, db)
        _fsync_dir(db.parent)
    except OSError as e:
        raise BackupError(f"restore to {db} failed: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return kept


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
