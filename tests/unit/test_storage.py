"""The store's suite. Everything that both engines promise runs on each of them (the
``new_store`` and ``open_store_again`` fixtures, tests/stores.py: SQLite in a file, PostgreSQL on
a real server); what only one of them has (SQLite's file, WAL and migrations from its first
schemas; PostgreSQL's lease) follows, per engine."""

import sqlite3
from dataclasses import replace
from datetime import datetime, timezone
from importlib import resources

import pytest
import trio

from appliance.control.hostinfo import Hostinfo
from appliance.storage import LeaseLost, Store, StoreError
from appliance.storage.migrations import LATEST, MIGRATIONS
from appliance.storage.records import NodeRecord
from appliance.storage.store import Conflict, StoreFailed
from tests.stores import new_store, open_store_again, pg_database, postgres_config, store_engine  # noqa: F401

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def _node(**kw) -> NodeRecord:
    base = dict(
        id=0, machine_key="mkey:" + "1" * 64, node_key="nodekey:" + "2" * 64, disco_key="",
        ipv4="100.64.0.1", ipv6="fd7a:115c:a1e0::1", hostname="h", given_name="h", user_id=None,
        auth_key_id=None, tags=("tag:x",), hostinfo=Hostinfo(hostname="h"), endpoints=("1.2.3.4:5",),
        expiry=None, last_seen=None, created_at=NOW,
    )
    base.update(kw)
    return NodeRecord(**base)


# --- what both engines promise ---------------------------------------------------------------


async def test_round_trip_and_persistence(open_store_again):
    store = open_store_again()
    await store.try_become_active("test", "k")
    u = await store.create_user("alice", "Alice", "alice@example.com", NOW)
    k = await store.create_preauth_key("abcdefabcdef", "h" * 64, u.id, False, False, (), NOW, None)
    n = await store.save_node(_node(user_id=u.id, last_seen=NOW), mark_key_used=k.id)
    assert n.id > 0 and n.tags == ("tag:x",) and n.hostinfo == Hostinfo(hostname="h")
    assert n.created_at == NOW and n.last_seen == NOW and n.last_seen.tzinfo is not None
    store.close()
    store = open_store_again()
    users, nodes, keys = await store.load_all()
    assert [x.name for x in users] == ["alice"] and users[0].created_at == NOW
    assert nodes == [n]
    assert keys[0].used and not keys[0].reusable


async def test_every_kind_of_write_reads_back(new_store):
    store = new_store
    u = await store.create_user("bob", "", "", NOW, profile_pic_url="https://example.com/p.png")
    await store.rename_user(u.id, "robert")
    k = await store.create_preauth_key("0123456789ab", "h" * 64, None, True, True, ("tag:a", "tag:b"), NOW, NOW)
    await store.expire_preauth_key(k.id, NOW)
    n = await store.save_node(_node(user_id=u.id))
    n = await store.save_node(replace(n, given_name="renamed", approved_routes=("10.0.0.0/24",), ephemeral=True))
    await store.save_soft_state([replace(n, last_seen=NOW, endpoints=("5.6.7.8:9",), disco_key="d")])
    a = await store.create_api_key("apikeyprefix", "h" * 64, NOW, None)
    await store.touch_api_keys({a.id: NOW})
    await store.put_setting("dns", {"magic_dns": False, "nested": [1, "two"]}, NOW)
    await store.put_setting("dns", {"magic_dns": True}, NOW)
    await store.put_setting("gone", 1, NOW)
    await store.put_setting("gone", None, NOW)
    await store.set_policy('{"acls": []}', NOW)
    await store.set_policy('{"acls": [1]}', NOW)
    users, nodes, keys = await store.load_all()
    assert [(x.name, x.profile_pic_url) for x in users] == [("robert", "https://example.com/p.png")]
    assert [(x.given_name, x.approved_routes, x.ephemeral, x.endpoints, x.disco_key, x.last_seen) for x in nodes] == [
        ("renamed", ("10.0.0.0/24",), True, ("5.6.7.8:9",), "d", NOW)]
    assert [(x.tags, x.reusable, x.ephemeral, x.expiration) for x in keys] == [(("tag:a", "tag:b"), True, True, NOW)]
    assert [(x.prefix, x.last_seen) for x in await store.list_api_keys()] == [("apikeyprefix", NOW)]
    assert await store.get_settings() == {"dns": {"magic_dns": True}}
    assert await store.get_policy() == '{"acls": [1]}'
    assert await store.held_identities() == [("100.64.0.1", "fd7a:115c:a1e0::1", "renamed")]
    await store.expire_api_key(a.id, NOW)
    await store.delete_api_key(a.id)
    assert await store.list_api_keys() == []
    # Deleting a user takes its nodes (foreign keys hold on both engines); its key is kept
    # by the node's ON DELETE SET NULL when the key goes first.
    await store.delete_preauth_key(k.id)
    await store.delete_user(u.id)
    assert await store.load_all() == ([], [], [])


async def test_sign_in_columns_read_back(new_store):
    """Migration 4 (issue 11): the first user owns the tailnet, roles and provider groups are
    written, one provider identity is one user, keys may be pre-approved, nodes may wait for
    approval."""
    store = new_store
    a = await store.create_user("alice", "", "", NOW, provider="oidc", provider_id="https://id/1", groups=("eng", "ops"))
    b = await store.create_user("bob", "", "", NOW)
    assert (a.role, a.groups, a.provider_id, b.role, b.groups) == ("owner", ("eng", "ops"), "https://id/1", "member", ())
    with pytest.raises(Conflict):
        await store.create_user("mallory", "", "", NOW, provider="oidc", provider_id="https://id/1")
    await store.create_user("carol", "", "", NOW)  # no provider identity: "" is not unique
    a2, b2 = await store.update_users([replace(a, role="admin", groups=()), replace(b, role="owner", email="b@x")])
    assert (a2.role, a2.groups, b2.role, b2.email) == ("admin", (), "owner", "b@x")
    assert (await store.update_user(replace(a2, display_name="Alice"))).display_name == "Alice"
    k = await store.create_preauth_key("abcdefabcdef", "h" * 64, b.id, False, False, (), NOW, None, pre_approved=True)
    n = await store.save_node(_node(user_id=b.id, authorized=False))
    assert k.pre_approved and not n.authorized
    assert (await store.save_node(replace(n, authorized=True))).authorized
    users, nodes, keys = await store.load_all()
    assert [(u.name, u.role, u.groups) for u in users] == [("alice", "admin", ()), ("bob", "owner", ()),
                                                          ("carol", "member", ())]
    assert [x.authorized for x in nodes] == [True] and [x.pre_approved for x in keys] == [True]
    assert store.failure is None


async def test_single_use_key_cannot_register_twice(new_store):
    store = new_store
    k = await store.create_preauth_key("abcdefabcdef", "h" * 64, None, False, False, ("tag:a",), NOW, None)
    await store.save_node(_node(), mark_key_used=k.id)
    with pytest.raises(Conflict):
        await store.save_node(
            _node(node_key="nodekey:" + "3" * 64, ipv4="100.64.0.2", ipv6=None, given_name="h2"), mark_key_used=k.id
        )
    _, nodes, _ = await store.load_all()
    assert len(nodes) == 1  # the failed transaction left nothing behind


async def test_duplicate_address_is_a_conflict(new_store):
    store = new_store
    await store.save_node(_node())
    with pytest.raises(Conflict):
        await store.save_node(_node(node_key="nodekey:" + "4" * 64, given_name="other"))
    await store.create_user("bob", "", "", NOW)
    with pytest.raises(Conflict):
        await store.create_user("bob", "", "", NOW)
    assert store.failure is None


async def test_node_ids_are_never_reused_even_across_restarts(open_store_again):
    store = open_store_again()
    await store.try_become_active("test", "k")
    first = await store.save_node(_node())
    await store.delete_node(first.id)
    u = await store.create_user("gone", "", "", NOW)
    await store.delete_user(u.id)
    store.close()
    store = open_store_again()
    await store.try_become_active("test", "k")
    second = await store.save_node(_node(node_key="nodekey:" + "5" * 64))
    assert second.id == first.id + 1
    assert (await store.create_user("new", "", "", NOW)).id == u.id + 1


async def test_newer_schema_is_refused(open_store_again, store_engine, tmp_path):
    open_store_again().close()
    if store_engine == "sqlite":
        conn = sqlite3.connect(tmp_path / "db.sqlite")
        conn.execute(f"PRAGMA user_version={LATEST + 1}")
        conn.close()
    else:
        with open_store_again.database.connect() as conn:
            conn.execute("UPDATE trioscale_schema SET version = %s", (LATEST + 1,))
    with pytest.raises(StoreError, match="newer than this trioscale knows"):
        open_store_again()


async def test_backup_while_writing_is_consistent_and_has_every_earlier_write(new_store, tmp_path):
    """On either engine a backup is one SQLite file, checked, that `trioscale restore` (or a
    copy into PostgreSQL) takes."""
    from appliance.storage.backup import check_database

    store = new_store
    acked: list[str] = []

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
    backup = Store(copy)
    assert (await backup.export_snapshot()).users == (await store.export_snapshot()).users[:len(names)]
    backup.close()


async def test_a_copy_to_the_other_engine_keeps_everything_and_retired_ids(open_store_again, tmp_path, pg_database):
    """What `trioscale db migrate` relies on: a snapshot, ID counters included, written into an
    empty store of the other engine reads back the same, and an ID deleted before the copy is
    never handed out after it."""
    from appliance.storage import open_store
    from tests.stores import database_config

    store = open_store_again()
    await store.try_become_active("test", "k")
    u = await store.create_user("alice", "", "a@example.com", NOW, provider="oidc", provider_id="https://id/1",
                                groups=("eng",))
    await store.create_user("bob", "", "", NOW)
    k = await store.create_preauth_key("abcdefabcdef", "h" * 64, u.id, True, False, ("tag:t",), NOW, None,
                                       pre_approved=True)
    for i in range(1, 4):
        await store.save_node(_node(node_key=f"nodekey:{i:064x}", ipv4=f"100.64.0.{i}", ipv6=None, given_name=f"n{i}",
                                    user_id=u.id, auth_key_id=k.id, authorized=i != 2), mark_key_used=k.id)
    await store.delete_node(3)  # ID 3 is retired
    await store.set_policy("{}", NOW)
    await store.put_setting("dns", {"x": 1}, NOW)
    await store.create_api_key("apikeyprefix", "h" * 64, NOW, None)
    snapshot = await store.export_snapshot()
    assert dict(snapshot.id_marks)["nodes"] == 3
    assert [(x.role, x.groups, x.provider_id) for x in snapshot.users] == [
        ("owner", ("eng",), "https://id/1"), ("member", (), "")]
    assert [x.authorized for x in snapshot.nodes] == [True, False] and snapshot.preauth_keys[0].pre_approved
    other_engine = "sqlite" if store.kind == "postgres" else "postgres"
    other = open_store(database_config(other_engine, tmp_path / "other", postgres_config(pg_database)))
    try:
        await other.try_become_active("test", "k")
        await other.import_snapshot(snapshot)
        again = await other.export_snapshot()
        assert again == snapshot
        assert (await other.save_node(_node(node_key="nodekey:" + "9" * 64, ipv4="100.64.0.9", ipv6=None,
                                            given_name="new"))).id == 4
        with pytest.raises(StoreError, match="not empty"):
            await other.import_snapshot(snapshot)
    finally:
        other.close()


# --- StoreFailed: which database errors end the server ----------------------------------------


class _FailingConnection:
    """The real SQLite connection, but statements matching ``when`` whose first parameter is
    ``value`` fail as a broken disk does."""

    def __init__(self, conn, error: sqlite3.Error, when: str, value: str) -> None:
        self._conn, self.error, self.when, self.value = conn, error, when, value

    def execute(self, sql, *args):
        if self.when in sql and args and args[0][0] == self.value:
            raise self.error
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def _sqlite_error(cls, message: str, code: int) -> sqlite3.Error:
    e = cls(message)
    e.sqlite_errorcode = code
    return e


def _fail_inserts_of(store: Store, name: str, kind: str, database) -> None:
    """Make inserting the user ``name`` fail: on SQLite as a disk does (``kind`` io or full), on
    PostgreSQL with the SQLSTATE the server gives for corrupt data (XX001) or a full disk (53100),
    raised by a trigger inside the server."""
    if store.kind == "sqlite":
        error = (_sqlite_error(sqlite3.OperationalError, "disk I/O error", sqlite3.SQLITE_IOERR_WRITE) if kind == "io"
                 else _sqlite_error(sqlite3.OperationalError, "database or disk is full", sqlite3.SQLITE_FULL))
        store._engine.conn = _FailingConnection(store._engine.conn, error, "INSERT INTO users", name)
        return
    state, message = ("XX001", "invalid page in block 7 of relation base/1/2") if kind == "io" else (
        "53100", "could not extend file: No space left on device")
    with database.connect() as conn:
        conn.execute(f"""
            CREATE FUNCTION fail_{kind}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.name = '{name}' THEN RAISE EXCEPTION '{message}' USING ERRCODE = '{state}'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER fail_{kind} BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION fail_{kind}();
        """)


async def test_a_corrupt_database_fails_the_store_for_good(new_store, open_store_again):
    store = new_store
    _fail_inserts_of(store, "alice", "io", getattr(open_store_again, "database", None))
    with pytest.raises(StoreFailed, match="disk I/O error|invalid page"):
        await store.create_user("alice", "", "", NOW)
    with trio.fail_after(1):
        failure = await store.wait_failed()
    assert "disk I/O error" in str(failure) or "invalid page" in str(failure)
    with pytest.raises(StoreFailed):  # nothing more is accepted, not even what would work
        await store.get_policy()


async def test_a_full_disk_or_a_conflict_fails_only_that_write(new_store, open_store_again):
    store = new_store
    _fail_inserts_of(store, "alice", "full", getattr(open_store_again, "database", None))
    with pytest.raises(Exception, match="full|No space left") as raised:
        await store.create_user("alice", "", "", NOW)
    assert not isinstance(raised.value, StoreFailed)
    await store.create_user("bob", "", "", NOW)
    with pytest.raises(Conflict):
        await store.create_user("bob", "", "", NOW)
    assert store.failure is None
    assert [u.name for u in (await store.load_all())[0]] == ["bob"]


# --- SQLite only: the file, WAL, migrations from the first schemas, restore -----------------------


def _schema(conn) -> list[tuple]:
    rows = conn.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
    return sorted(tuple(r) for r in rows)


def test_sqlite_migrations_produce_schema_sql(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    migrated = _schema(store._engine.conn)
    store.close()
    fresh = sqlite3.connect(":memory:")
    fresh.executescript(resources.files("appliance.storage").joinpath("schema.sql").read_text())
    assert migrated == _schema(fresh)
    assert len(MIGRATIONS) == LATEST


def test_sqlite_wal_and_foreign_keys(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    assert store._engine.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._engine.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    store.close()


def test_sqlite_garbage_file_is_a_clear_error(tmp_path):
    path = tmp_path / "db.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        Store(path)


def _v1_database(path) -> None:
    """A database as schema 1 left it: ids 1-3, the highest (3) of each table already deleted."""
    from appliance.storage.sqlite import statements

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=ON")
    for statement in statements(MIGRATIONS[0]):
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


async def test_sqlite_migrating_to_autoincrement_keeps_every_row_and_retires_ids(tmp_path):
    path = tmp_path / "db.sqlite"
    _v1_database(path)
    store = Store(path)
    conn = store._engine.conn
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
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


async def test_sqlite_migrating_to_sign_in_keeps_nodes_approved_and_gives_the_first_user_the_tailnet(tmp_path):
    """Migration 4 (issue 11): an existing tailnet's nodes stay in it (approved), its first user
    owns it, nobody has provider groups, no key is pre-approved."""
    path = tmp_path / "db.sqlite"
    _v1_database(path)
    store = Store(path)
    users, nodes, keys = await store.load_all()
    assert [(u.name, u.role, u.groups) for u in users] == [("u1", "owner", ()), ("u2", "member", ())]
    assert all(n.authorized for n in nodes) and not any(k.pre_approved for k in keys)
    store.close()


async def test_sqlite_restore_replaces_the_database_and_keeps_the_old_one(tmp_path):
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


# --- PostgreSQL only: its schema, the database it is given, the lease ----------------------------


def _pg_catalog(conn) -> dict:
    """Tables, columns (type, NOT NULL, default), constraints and indexes of the current schema."""
    columns = conn.execute(
        "SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity, identity_generation"
        " FROM information_schema.columns WHERE table_schema = current_schema() ORDER BY 1, 2").fetchall()
    constraints = conn.execute(
        "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE connamespace = current_schema()::regnamespace ORDER BY 1, 2").fetchall()
    indexes = conn.execute("SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
                           " ORDER BY 1, 2").fetchall()
    return {"columns": columns, "constraints": constraints, "indexes": indexes}


async def test_postgres_migrations_produce_schema_postgres_sql(pg_database):
    from appliance.storage import open_store
    from tests.pgserver import PostgresServer
    from tests.stores import database_config

    open_store(database_config("postgres", None, postgres_config(pg_database))).close()
    fresh = PostgresServer.shared().new_database()
    try:
        with fresh.connect() as conn:
            conn.execute(resources.files("appliance.storage").joinpath("schema_postgres.sql").read_text())
            expected = _pg_catalog(conn)
        with pg_database.connect() as conn:
            assert _pg_catalog(conn) == expected
            assert conn.execute("SELECT version FROM trioscale_schema").fetchone()[0] == LATEST
    finally:
        PostgresServer.shared().drop_database(fresh)


async def test_postgres_migrating_to_sign_in_keeps_nodes_approved_and_gives_the_first_user_the_tailnet(pg_database):
    """A database at schema 3 (the first PostgreSQL one) with a tailnet in it takes migration 4
    as SQLite's does."""
    from appliance.storage import open_store
    from appliance.storage.migrations import POSTGRES_MIGRATIONS
    from tests.stores import database_config

    with pg_database.connect() as conn:
        conn.execute(f"SET ROLE {pg_database.user}")
        conn.execute("CREATE TABLE trioscale_schema (version integer NOT NULL); INSERT INTO trioscale_schema VALUES (3)")
        conn.execute(POSTGRES_MIGRATIONS[3])
        for i in (1, 2):
            conn.execute("INSERT INTO users (name, created_at) VALUES (%s, now())", (f"u{i}",))
            conn.execute("INSERT INTO pre_auth_keys (prefix, hash, user_id, created_at) VALUES (%s, 'h', %s, now())",
                         (f"prefix{i}", i))
            conn.execute("INSERT INTO nodes (machine_key, node_key, given_name, user_id, created_at)"
                         " VALUES (%s, %s, %s, %s, now())", (f"mkey:{i}", f"nodekey:{i}", f"n{i}", i))
    store = open_store(database_config("postgres", None, postgres_config(pg_database)))
    try:
        users, nodes, keys = await store.load_all()
        assert [(u.name, u.role, u.groups) for u in users] == [("u1", "owner", ()), ("u2", "member", ())]
        assert [n.authorized for n in nodes] == [True, True] and not any(k.pre_approved for k in keys)
    finally:
        store.close()
    with pg_database.connect() as conn:
        assert conn.execute("SELECT version FROM trioscale_schema").fetchone()[0] == LATEST


def test_postgres_schema_holds_what_sqlite_schema_holds(pg_database):
    """Both engines' schemas name the same tables and columns with the same NOT NULLs,
    defaults and keys: a column added to one and not the other fails here."""
    from appliance.storage import open_store
    from tests.stores import database_config

    open_store(database_config("postgres", None, postgres_config(pg_database))).close()
    lite = sqlite3.connect(":memory:")
    lite.executescript(resources.files("appliance.storage").joinpath("schema.sql").read_text())
    tables = [r[0] for r in lite.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    norm = {"0": "false", "1": "true"}  # SQLite's 0/1 flags are PostgreSQL booleans
    with pg_database.connect() as conn:
        for table in tables:
            want = {(r[1], bool(r[3]) or bool(r[5]), norm.get(str(r[4]), str(r[4]).strip("'")) if r[4] is not None else None)
                    for r in lite.execute(f"PRAGMA table_info({table})")}
            got = set()
            for name, nullable, default in conn.execute(
                    "SELECT column_name, is_nullable, column_default FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = %s", (table,)):
                if default is not None:
                    default = default.split("::")[0].strip("'")
                got.add((name, nullable == "NO", default))
            assert got == want, table
            lite_indexes = {(tuple(sorted(c[2] for c in lite.execute(f"PRAGMA index_info({i[1]})"))), bool(i[2]),
                             bool(i[4])) for i in lite.execute(f"PRAGMA index_list({table})") if i[3] != "pk"}
            pg_indexes = {(tuple(sorted(r[0])), r[1], r[2]) for r in conn.execute(
                "SELECT array_agg(a.attname::text), i.indisunique, i.indpred IS NOT NULL FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indrelid JOIN pg_attribute a ON a.attrelid = c.oid"
                " AND a.attnum = ANY(i.indkey) WHERE c.relname = %s AND c.relnamespace = current_schema()::regnamespace"
                " AND NOT i.indisprimary GROUP BY i.indexrelid, i.indisunique, i.indpred IS NOT NULL", (table,))}
            assert pg_indexes == lite_indexes, table
            lite_fk = {(r[3], r[2], r[6]) for r in lite.execute(f"PRAGMA foreign_key_list({table})")}
            pg_fk = {(r[0], r[1], r[2]) for r in conn.execute(
                "SELECT kcu.column_name, ccu.table_name, rc.delete_rule FROM information_schema.referential_constraints rc"
                " JOIN information_schema.key_column_usage kcu ON kcu.constraint_name = rc.constraint_name"
                " JOIN information_schema.constraint_column_usage ccu ON ccu.constraint_name = rc.constraint_name"
                " WHERE kcu.table_name = %s", (table,))}
            assert pg_fk == lite_fk, table


async def test_postgres_refuses_a_database_holding_other_tables_and_an_unreachable_server(pg_database):
    from appliance.storage import open_store
    from tests.stores import database_config

    with pg_database.connect() as conn:
        conn.execute("CREATE TABLE nodes (id bigint)")  # Headscale's database, say
        conn.execute(f"ALTER TABLE nodes OWNER TO {pg_database.user}")
    with pytest.raises(StoreError, match="holds tables that are not trioscale's \\(nodes\\)"):
        open_store(database_config("postgres", None, postgres_config(pg_database)))
    with pytest.raises(StoreError, match="cannot connect: .*password authentication failed"):
        open_store(database_config("postgres", None, postgres_config(pg_database, password="wrong")))
    with pytest.raises(StoreError, match="cannot connect"):
        open_store(database_config("postgres", None, postgres_config(pg_database, port=1)))


async def test_postgres_over_the_unix_socket(pg_database):
    """host: the socket's directory (the role is trusted there: no password)."""
    from appliance.storage import open_store
    from tests.stores import database_config

    store = open_store(database_config("postgres", None, postgres_config(pg_database, socket=True)))
    try:
        assert await store.try_become_active("a", "k")
        await store.create_user("over-the-socket", "", "", NOW)
        assert [u.name for u in (await store.load_all())[0]] == ["over-the-socket"]
    finally:
        store.close()


async def _take(store: Store, name: str, key: str):
    """Become active, trying as a standby does until the lock is free (a session that ended
    releases it a moment later)."""
    with trio.fail_after(10):
        while (lease := await store.try_become_active(name, key)) is None:
            await trio.sleep(0.2)
    return lease


@pytest.mark.parametrize("store_engine", ["postgres"])
async def test_postgres_one_active_the_others_wait_and_cannot_write(open_store_again):
    a, b = open_store_again(), open_store_again()
    lease = await a.try_become_active("a", "key-1")
    assert lease is not None and lease.name == "a"
    assert await b.try_become_active("b", "key-1") is None
    with pytest.raises(LeaseLost, match="not the active one"):
        await b.create_user("from-b", "", "", NOW)
    await a.create_user("from-a", "", "", NOW)
    assert [u.name for u in (await b.load_all())[0]] == ["from-a"]  # a standby reads
    status = await b.cluster_status()
    assert (status.active, status.epoch) == ("a", lease.epoch)
    # A server whose Noise key is not the tailnet's never becomes active.
    a.close()
    with pytest.raises(StoreError, match="Noise key .* is not the tailnet's"):
        await _take(b, "b", "key-2")
    taken = await _take(b, "b", "key-1")
    assert taken.epoch == lease.epoch + 1
    assert (await b.cluster_status()).active == "b"


@pytest.mark.parametrize("store_engine", ["postgres"])
async def test_postgres_a_killed_active_loses_the_lease_at_once(open_store_again):
    """Its session ends (as when its process dies): the lock is free for a standby, and the old
    store learns it on its next write, which is refused."""
    a, b = open_store_again(), open_store_again()
    await a.try_become_active("a", "k")
    with open_store_again.database.connect() as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = 1"
                     " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
    await _take(b, "b", "k")
    with pytest.raises(LeaseLost):
        await a.create_user("late", "", "", NOW)
    with pytest.raises(LeaseLost):
        await a.create_user("later", "", "", NOW)
    assert (await b.load_all())[0] == []


@pytest.mark.parametrize("store_engine", ["postgres"])
async def test_postgres_a_stalled_active_is_fenced_and_no_write_of_it_lands(open_store_again):
    """The split brain a frozen process could cause: the active stops renewing (as under
    SIGSTOP), PostgreSQL ends its session after the lease timeout, a standby takes over and
    writes; when the old one runs again, none of its writes lands and it learns it lost."""
    a = open_store_again(lease_timeout=2.0)
    b = open_store_again(lease_timeout=2.0)
    await a.try_become_active("a", "k")
    await a.create_user("before", "", "", NOW)
    async with trio.open_nursery() as nursery:
        await nursery.start(a.keep_active)
        await trio.sleep(3)  # renewing: a keeps the lease past its timeout
        assert await b.try_become_active("b", "k") is None
        nursery.cancel_scope.cancel()  # a freezes: nothing renews its lease any more
    await _take(b, "b", "k")
    await b.create_user("after-takeover", "", "", NOW)
    with pytest.raises(LeaseLost):
        await a.create_user("split-brain", "", "", NOW)
    with pytest.raises(LeaseLost):
        await a.keep_active()
    assert [u.name for u in (await b.load_all())[0]] == ["before", "after-takeover"]
