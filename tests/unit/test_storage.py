import sqlite3
from datetime import datetime, timezone

import pytest

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
