import sqlite3
from datetime import datetime, timezone

import pytest
import trio

from appliance.control.hostinfo import Hostinfo
from appliance.storage import Store, StoreError
from appliance.storage.migrations import LATEST, MIGRATIONS
from appliance.storage.records import NodeRecord
from appliance.storage.store import Conflict

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def _schema(conn) -> list[tuple]:
    rows = conn.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
    return sorted(tuple(r) for r in rows)


def test_migrations_produce_schema_sql(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    migrated = _schema(store._conn)
    store.close()
    fresh = sqlite3.connect(":memory:")
    from importlib import resources

    fresh.executescript(resources.files("appliance.storage").joinpath("schema.sql").read_text())
    assert migrated == _schema(fresh)
    assert len(MIGRATIONS) == LATEST


def test_wal_and_foreign_keys(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    store.close()


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "db.sqlite"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={LATEST + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this trioscale knows"):
        Store(path)


def test_garbage_file_is_a_clear_error(tmp_path):
    path = tmp_path / "db.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        Store(path)


def _node(**kw) -> NodeRecord:
    base = dict(
        id=0, machine_key="mkey:" + "1" * 64, node_key="nodekey:" + "2" * 64, disco_key="",
        ipv4="100.64.0.1", ipv6="fd7a:115c:a1e0::1", hostname="h", given_name="h", user_id=None,
        auth_key_id=None, tags=("tag:x",), hostinfo=Hostinfo(hostname="h"), endpoints=("1.2.3.4:5",),
        expiry=None, last_seen=None, created_at=NOW,
    )
    base.update(kw)
    return NodeRecord(**base)


async def test_round_trip_and_persistence(tmp_path):
    path = tmp_path / "db.sqlite"
    store = Store(path)
    u = await store.create_user("alice", "Alice", "alice@example.com", NOW)
    k = await store.create_preauth_key("abcdefabcdef", "h" * 64, u.id, False, False, (), NOW, None)
    n = await store.save_node(_node(user_id=u.id), mark_key_used=k.id)
    assert n.id > 0 and n.tags == ("tag:x",) and n.hostinfo == Hostinfo(hostname="h")
    store.close()
    store = Store(path)
    users, nodes, keys = await store.load_all()
    assert [x.name for x in users] == ["alice"]
    assert nodes == [n]
    assert keys[0].used
    store.close()


async def test_single_use_key_cannot_register_twice(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    k = await store.create_preauth_key("abcdefabcdef", "h" * 64, None, False, False, ("tag:a",), NOW, None)
    await store.save_node(_node(), mark_key_used=k.id)
    with pytest.raises(Conflict):
        await store.save_node(
            _node(node_key="nodekey:" + "3" * 64, ipv4="100.64.0.2", ipv6=None, given_name="h2"), mark_key_used=k.id
        )
    _, nodes, _ = await store.load_all()
    assert len(nodes) == 1  # the failed transaction left nothing behind
    store.close()


async def test_duplicate_address_is_a_conflict(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    await store.save_node(_node())
    with pytest.raises(Conflict):
        await store.save_node(_node(node_key="nodekey:" + "4" * 64, given_name="other"))
    store.close()


# --- issue 10: IDs never reused (migration 3, a rebuild of four tables) ---------------------


def _v1_database(path) -> None:
    """A database as schema 1 left it: ids 1-3, the highest (3) of each table already deleted."""
    from appliance.storage.migrations import MIGRATIONS
    from appliance.storage.store import _statements

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=ON")
    for statement in _statements(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version=1")
    ts = NOW.isoformat()
    for i in (1, 2):
        conn.execute("INSERT INTO users (id, name, created_at) VALUES (?, ?, ?)", (i, f"u{i}", ts))
        conn.execute("INSERT INTO pre_auth_keys (id, prefix, hash, user_id, created_at, used) VALUES (?, ?, ?, ?, ?, 1)",
                     (i, f"prefix{i}", "h", i, ts))
        conn.execute("INSERT INTO api_keys (id, prefix, hash, created_at) VALUES (?, ?, ?, ?)", (i, f"api{i}", "h", ts))
        conn.execute("INSERT INTO nodes (id, machine_key, node_key, given_name, user_id, auth_key_id, ipv4, created_at)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (i, f"mkey:{i}", f"nodekey:{i}", f"n{i}", i, i, f"100.64.0.{i}", ts))
    conn.close()


async def test_migrating_to_autoincrement_keeps_every_row_and_retires_ids(tmp_path):
    path = tmp_path / "db.sqlite"
    _v1_database(path)
    store = Store(path)
    assert store._conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
    assert store._conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert store._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    users, nodes, keys = await store.load_all()
    assert [(u.id, u.name) for u in users] == [(1, "u1"), (2, "u2")]
    assert [(n.id, n.given_name, n.user_id, n.auth_key_id) for n in nodes] == [(1, "n1", 1, 1), (2, "n2", 2, 2)]
    assert [(k.id, k.used) for k in keys] == [(1, True), (2, True)]
    # Foreign keys still hold after the rebuild: deleting a user takes its nodes and keys.
    await store.delete_user(2)
    _, nodes, keys = await store.load_all()
    assert [n.id for n in nodes] == [1] and [k.id for k in keys] == [1]
    # The deleted ids 2 stay retired: new rows get 3, never 2.
    u = await store.create_user("new", "", "", NOW)
    assert u.id == 3
    n = await store.save_node(_node(ipv4="100.64.0.9", ipv6=None, given_name="fresh", user_id=u.id))
    assert n.id == 3
    store.close()
    assert (tmp_path / "db.sqlite.backup-v1").exists()  # the copy taken before migrating


async def test_migrating_to_sign_in_keeps_nodes_approved_and_gives_the_first_user_the_tailnet(tmp_path):
    """Migration 4 (issue 11): an existing tailnet's nodes stay in it (approved), its first user
    owns it, nobody has provider groups, no key is pre-approved."""
    path = tmp_path / "db.sqlite"
    _v1_database(path)
    store = Store(path)
    users, nodes, keys = await store.load_all()
    assert [(u.name, u.role, u.groups) for u in users] == [("u1", "owner", ()), ("u2", "member", ())]
    assert all(n.authorized for n in nodes) and not any(k.pre_approved for k in keys)
    store.close()


async def test_node_ids_are_never_reused_even_across_restarts(tmp_path):
    path = tmp_path / "db.sqlite"
    store = Store(path)
    first = await store.save_node(_node())
    await store.delete_node(first.id)
    store.close()
    store = Store(path)
    second = await store.save_node(_node(node_key="nodekey:" + "5" * 64))
    assert second.id == first.id + 1
    store.close()


# --- issue 10: an unrecoverable store error ends the server, other errors do not -------------


class _FailingConnection:
    """The real connection, but statements matching ``when`` fail as a broken disk does."""

    def __init__(self, conn, error: sqlite3.Error, when: str) -> None:
        self._conn, self.error, self.when = conn, error, when

    def execute(self, sql, *args):
        if self.when in sql:
            raise self.error
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def _sqlite_error(cls, message: str, code: int) -> sqlite3.Error:
    e = cls(message)
    e.sqlite_errorcode = code
    return e


async def test_an_io_error_fails_the_store_for_good(tmp_path):
    from appliance.storage.store import StoreFailed

    store = Store(tmp_path / "db.sqlite")
    real = store._conn
    store._conn = _FailingConnection(real, _sqlite_error(sqlite3.OperationalError, "disk I/O error",
                                                         sqlite3.SQLITE_IOERR_WRITE), "INSERT INTO users")
    with pytest.raises(StoreFailed, match="disk I/O error"):
        await store.create_user("alice", "", "", NOW)
    with trio.fail_after(1):
        failure = await store.wait_failed()
    assert "disk I/O error" in str(failure)
    with pytest.raises(StoreFailed):  # nothing more is accepted, not even what would work
        await store.get_policy()
    store._conn = real
    store.close()


async def test_a_full_disk_or_a_conflict_fails_only_that_write(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    real = store._conn
    store._conn = _FailingConnection(real, _sqlite_error(sqlite3.OperationalError, "database or disk is full",
                                                         sqlite3.SQLITE_FULL), "INSERT INTO users")
    with pytest.raises(sqlite3.OperationalError):
        await store.create_user("alice", "", "", NOW)
    store._conn = real
    await store.create_user("bob", "", "", NOW)
    with pytest.raises(Conflict):
        await store.create_user("bob", "", "", NOW)
    assert store.failure is None
    store.close()


# --- issue 10: backups and restore -----------------------------------------------------------


async def test_backup_while_writing_is_consistent_and_has_every_earlier_write(tmp_path):
    from appliance.storage.backup import check_database

    store = Store(tmp_path / "db.sqlite")
    acked: list[str] = []
    backup_started = None

    async def writer():
        for i in range(300):
            await store.create_user(f"user{i}", "", "", NOW)
            acked.append(f"user{i}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        while len(acked) < 100:
            await trio.sleep(0)
        backup_started = list(acked)
        await store.backup(tmp_path / "copy.sqlite")
    copy = tmp_path / "copy.sqlite"
    assert check_database(copy) == LATEST
    assert copy.stat().st_mode & 0o777 == 0o600
    conn = sqlite3.connect(copy)
    names = {r[0] for r in conn.execute("SELECT name FROM users")}
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one self-contained file
    conn.close()
    assert set(backup_started) <= names <= set(acked)
    store.close()


async def test_restore_replaces_the_database_and_keeps_the_old_one(tmp_path):
    from appliance.storage.backup import BackupError, restore_file

    import shutil

    store = Store(tmp_path / "live" / "db.sqlite")
    await store.create_user("before", "", "", NOW)
    await store.backup(tmp_path / "backup.sqlite")
    await store.create_user("after", "", "", NOW)
    # What a crash leaves: the last writes only in the -wal. A restore must not replay that log
    # into the restored file, and the database it replaces is kept whole.
    (tmp_path / "data").mkdir()
    for name in ("db.sqlite", "db.sqlite-wal"):
        shutil.copy(tmp_path / "live" / name, tmp_path / "data" / name)
    store.close()
    db = tmp_path / "data" / "db.sqlite"
    assert (tmp_path / "data" / "db.sqlite-wal").stat().st_size > 0
    kept = restore_file(tmp_path / "backup.sqlite", db)
    assert not (tmp_path / "data" / "db.sqlite-wal").exists()
    store = Store(db)
    users, _, _ = await store.load_all()
    assert [u.name for u in users] == ["before"]
    store.close()
    conn = sqlite3.connect(kept)
    assert {r[0] for r in conn.execute("SELECT name FROM users")} == {"before", "after"}
    conn.close()
    (tmp_path / "junk").write_bytes(b"not a database" * 100)
    with pytest.raises(BackupError):
        restore_file(tmp_path / "junk", db)
