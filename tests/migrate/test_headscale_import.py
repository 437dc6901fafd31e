"""`trioscale import headscale` against every Headscale schema from 0.22 to 0.30: databases built
from each version's real schema (hsfixture) and Headscale's own test databases. Everything the
schema holds is checked field by field in the trioscale database the import writes."""

from __future__ import annotations

import ipaddress
import os
import re
import sqlite3
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest
import trio
import yaml

from appliance.control.codec import to_json
from appliance.errors import AuthFailed
from appliance.migrate import importer
from appliance.migrate.errors import ImportRefused
from appliance.migrate.headscale import read_headscale
from appliance.migrate.source import SQLiteSource
from appliance.storage import Store
from appliance.tailnet import secrets as keysecrets
from appliance.tailnet.model import Tailnet

from . import hsfixture as hs

FUTURE = datetime(2099, 1, 1, tzinfo=timezone.utc)
PAST = datetime(2020, 1, 1, tzinfo=timezone.utc)
SEEN = datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=timezone.utc)
POLICY = """{
  // HuJSON, as Headscale reads it
  "tagOwners": {"tag:server": ["alice@example.com"], "tag:web": ["alice@example.com"]},
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
}"""


def tailnet_for(version: str) -> hs.HSTailnet:
    new_keys = version >= "0.28"
    legacy = lambda n: f"{n:02d}" + "a1b2c3d4e5f6" * 3 + "a1b2c3d4e5"  # noqa: E731 - 48 hex, as before 0.28
    key = (lambda n: f"hskey-auth-{n:012x}-" + "ab" * 32) if new_keys else legacy
    api = "hskey-api-0123456789ab-" + "cd" * 32 if new_keys else "AbCdEf_-12.s3cr3t-secret-secret-secret-secret-xyz"
    v024 = version >= "0.24"
    users = [
        hs.HSUser(1, "alice@example.com" if v024 else "alice", display_name="Alice" if v024 else "",
                  email="alice@example.com" if v024 else ""),
        hs.HSUser(2, "bob", display_name="Bob B" if v024 else "", email="bob@example.org" if v024 else "",
                  provider="oidc" if v024 else "", provider_identifier="https://idp.example.org/bob" if v024 else None),
        hs.HSUser(4, "carol", deleted=True),
    ]
    keys = [
        hs.HSKey(1, key(1), 1, reusable=True, expiration=FUTURE),
        hs.HSKey(2, key(2), 1, used=True, expiration=FUTURE),
        hs.HSKey(3, key(3), None if version >= "0.29" else 1, reusable=True, tags=("tag:server",), expiration=FUTURE),
        hs.HSKey(5, key(5), 2, reusable=True, ephemeral=True, expiration=PAST),
    ]
    nodes = [
        hs.HSNode(1, "11" * 32, "12" * 32, "13" * 32, "100.64.0.1", "fd7a:115c:a1e0::1", "Alice's Laptop", "alices-laptop",
                  1, auth_key_id=1, hostinfo={"Hostname": "Alice's Laptop", "OS": "linux", "IPNVersion": "1.96.4"},
                  endpoints=("192.0.2.10:41641", "[2001:db8::10]:41641"), expiry=FUTURE, last_seen=SEEN,
                  register_method="authkey"),
        hs.HSNode(2, "21" * 32, "22" * 32, "23" * 32, "100.64.0.2", "fd7a:115c:a1e0::2", "router", "router", 2,
                  hostinfo={"Hostname": "router"}, advertised_routes=("0.0.0.0/0", "10.1.0.0/24", "::/0"),
                  approved_routes=("10.1.0.0/24",), register_method="oidc" if v024 else "cli"),
        hs.HSNode(7, "71" * 32, "72" * 32, "73" * 32, "100.64.0.7", None, "db", "db-server",
                  None if version >= "0.29" else 1, tags=("tag:server",), auth_key_id=3,
                  hostinfo={"Hostname": "db"}, last_seen=SEEN),
        hs.HSNode(8, "81" * 32, "82" * 32, "83" * 32, "100.64.0.8", "fd7a:115c:a1e0::8", "ephem", "ephem", 2,
                  auth_key_id=5, hostinfo={"Hostname": "ephem"}),
        hs.HSNode(9, "91" * 32, "92" * 32, "93" * 32, "100.64.0.9", "fd7a:115c:a1e0::9", "gone", "gone", 1,
                  deleted=True),
    ]
    return hs.HSTailnet(users=users, keys=keys, api_keys=[hs.HSApiKey(3, api, expiration=FUTURE, last_seen=SEEN)],
                        nodes=nodes, policy=POLICY if version >= "0.23" else None)


def headscale_config(directory: Path, db: Path, *, policy_mode: str = "database", **extra) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "noise_private.key").write_text("privkey:" + "5a" * 32 + "\n")
    doc = {
        "server_url": "https://hs.example.net", "listen_addr": "127.0.0.1:8080",
        "noise": {"private_key_path": "noise_private.key"},
        "prefixes": {"v4": "100.64.0.0/10", "v6": "fd7a:115c:a1e0::/48", "allocation": "sequential"},
        "database": {"type": "sqlite", "sqlite": {"path": str(db)}},
        "dns": {"magic_dns": True, "base_domain": "tail.example.net", "nameservers": {"global": ["9.9.9.9"]}},
        "derp": {"server": {"enabled": False}, "urls": []},
        "policy": {"mode": policy_mode},
        "unix_socket": "/var/run/headscale/headscale.sock",
        "some_future_key": True,
        **extra,
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def trioscale_config(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(directory / "data"), "log": {"level": "warn"}}))
    return path


async def exported(db: Path):
    store = Store(db)
    try:
        return await store.export_snapshot()
    finally:
        store.close()


def check_imported(t: hs.HSTailnet, s, version: str) -> None:
    """Every user, key, node, route and tag of ``t`` in snapshot ``s``, field by field."""

    live_users = [u for u in t.users if not u.deleted]
    assert [u.id for u in s.users] == [u.id for u in live_users]
    for want, got in zip(live_users, s.users):
        assert (got.name, got.display_name, got.email) == (want.name, want.display_name, want.email)
        assert (got.provider, got.provider_id) == (want.provider, want.provider_identifier or "")
        assert got.created_at == want.created_at

    assert [k.id for k in s.preauth_keys] == [k.id for k in t.keys]
    for want, got in zip(t.keys, s.preauth_keys):
        assert (got.user_id, got.reusable, got.ephemeral, got.used) == (want.user_id, want.reusable, want.ephemeral, want.used)
        assert got.tags == want.tags and got.expiration == want.expiration and got.created_at == want.created_at
        assert want.text not in (got.prefix, got.hash)  # never the key in plain text

    (api,) = s.api_keys
    assert (api.id, api.prefix, api.expiration, api.last_seen) == (3, t.api_keys[0].prefix, FUTURE, SEEN)
    assert keysecrets.lookup_prefix("api", t.api_keys[0].text) == api.prefix
    assert keysecrets.matches(t.api_keys[0].text, api.hash)
    assert not keysecrets.matches(t.api_keys[0].text[:-1] + "0", api.hash)

    live_nodes = [n for n in t.nodes if not n.deleted]
    assert [n.id for n in s.nodes] == [n.id for n in live_nodes]  # IDs kept, gaps and all
    for want, got in zip(live_nodes, s.nodes):
        assert got.machine_key == "mkey:" + want.machine_key
        assert got.node_key == "nodekey:" + want.node_key
        assert got.disco_key == "discokey:" + want.disco_key
        assert (got.ipv4, got.ipv6) == (want.ipv4, want.ipv6)
        assert (got.hostname, got.given_name) == (want.hostname, want.given_name)
        assert got.user_id == want.user_id and got.auth_key_id == want.auth_key_id
        assert got.tags == want.tags
        assert got.endpoints == want.endpoints
        assert (got.expiry, got.last_seen, got.created_at) == (want.expiry, want.last_seen, want.created_at)
        assert got.approved_routes == want.approved_routes
        assert sorted(got.hostinfo.routable_ips) == sorted(want.advertised_routes)
        assert {k: v for k, v in to_json(got.hostinfo).items() if k != "RoutableIPs"} == want.hostinfo
        assert got.register_method == want.register_method
        assert got.ephemeral == (want.auth_key_id == 5)
    assert s.policies[-1].data == POLICY if version >= "0.23" else not s.policies


VERSIONS = ["0.22", "0.23", "0.24", "0.25", "0.26", "0.30"]


@pytest.mark.parametrize("version", VERSIONS)
async def test_every_version_imports_field_by_field(tmp_path, version):
    t = tailnet_for(version)
    db = hs.make_sqlite(tmp_path / "headscale.sqlite", version, t)
    hs_config = headscale_config(tmp_path / "hs", db)
    ts_config = trioscale_config(tmp_path / "ts")
    plan = await trio.to_thread.run_sync(lambda: importer.plan_headscale(hs_config, config=str(ts_config)))
    assert plan.report.source.startswith(f"Headscale {version if version != '0.22' else '0.22 or older'}")
    await trio.to_thread.run_sync(importer.execute, plan)
    s = await exported(tmp_path / "ts" / "data" / "db.sqlite")
    check_imported(t, s, version)
    report = "\n".join(plan.report.lines())
    assert "1 users deleted in Headscale" in report and "1 nodes deleted in Headscale" in report

    # Headscale's Noise key is trioscale's now; the config keeps Headscale's shared settings.
    data = tmp_path / "ts" / "data"
    assert (data / "noise_private.key").read_text().strip() == "privkey:" + "5a" * 32
    assert (data / "noise_private.key").stat().st_mode & 0o777 == 0o600
    cfg = yaml.safe_load(ts_config.read_text())
    assert cfg["server_url"] == "https://hs.example.net" and cfg["data_dir"] == str(data)
    assert cfg["dns"]["base_domain"] == "tail.example.net" and cfg["policy"]["mode"] == "database"
    assert "unix_socket" not in cfg and "database" not in cfg and "noise" not in cfg
    assert "some_future_key: trioscale does not know this key" in report

    # The keys clients and scripts hold keep working against the imported hashes.
    store = Store(data / "db.sqlite")
    try:
        tn = Tailnet(store, v4=ipaddress.ip_network("100.64.0.0/10"), v6=None)
        await tn.load()
        assert tn.check_preauth_key(t.keys[0].text).id == 1
        assert tn.check_preauth_key(t.keys[2].text).tags == ("tag:server",)
        with pytest.raises(AuthFailed, match="already been used"):
            tn.check_preauth_key(t.keys[1].text)
        with pytest.raises(AuthFailed, match="expired"):
            tn.check_preauth_key(t.keys[3].text)
        with pytest.raises(AuthFailed, match="not known"):
            tn.check_preauth_key(t.keys[0].text[:-1] + ("0" if t.keys[0].text[-1] != "0" else "1"))
    finally:
        store.close()


async def test_dry_run_writes_nothing(tmp_path):
    db = hs.make_sqlite(tmp_path / "headscale.sqlite", "0.26", tailnet_for("0.26"))
    ts_config = trioscale_config(tmp_path / "ts")
    before = ts_config.read_text()
    from appliance.cli import main

    rc = await trio.to_thread.run_sync(main, ["-c", str(ts_config), "import", "headscale", "--from",
                                              str(headscale_config(tmp_path / "hs", db)), "--dry-run"])
    assert rc == 0
    assert ts_config.read_text() == before and not (tmp_path / "ts" / "data").exists()


async def test_a_second_import_is_refused_and_changes_nothing(tmp_path):
    db = hs.make_sqlite(tmp_path / "headscale.sqlite", "0.26", tailnet_for("0.26"))
    hs_config, ts_config = headscale_config(tmp_path / "hs", db), trioscale_config(tmp_path / "ts")
    await trio.to_thread.run_sync(importer.execute, importer.plan_headscale(hs_config, config=str(ts_config)))
    first = await exported(tmp_path / "ts" / "data" / "db.sqlite")
    with pytest.raises(ImportRefused, match="not empty"):
        await trio.to_thread.run_sync(importer.execute, importer.plan_headscale(hs_config, config=str(ts_config)))
    assert await exported(tmp_path / "ts" / "data" / "db.sqlite") == first


def test_newer_or_unknown_schemas_are_refused_naming_the_version(tmp_path):
    db = hs.make_sqlite(tmp_path / "a.sqlite", "0.30", tailnet_for("0.30"))
    conn = sqlite3.connect(db)
    conn.execute("UPDATE database_versions SET version = 'v0.31.2'")
    conn.commit()
    with pytest.raises(ImportRefused, match=r"Headscale v0\.31\.2, newer"):
        _read(db)
    conn.execute("UPDATE database_versions SET version = 'v0.30.0'")
    conn.execute("INSERT INTO migrations VALUES ('202701011200-something-new')")
    conn.commit()
    with pytest.raises(ImportRefused, match="202701011200-something-new.*newer than Headscale 0.30"):
        _read(db)
    old = sqlite3.connect(tmp_path / "old.sqlite")
    old.executescript("CREATE TABLE namespaces (id integer, name text); CREATE TABLE machines (id integer);")
    old.close()
    with pytest.raises(ImportRefused, match="older than 0.22"):
        _read(tmp_path / "old.sqlite")
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 50)
    with pytest.raises(ImportRefused):
        _read(tmp_path / "junk.sqlite")


def test_a_policy_trioscale_would_refuse_stops_the_import(tmp_path):
    t = replace(tailnet_for("0.26"), policy='{"acls": [{"action": "accept", "src": ["group:nosuchgroup"], "dst": ["*:*"]}]}')
    db = hs.make_sqlite(tmp_path / "headscale.sqlite", "0.26", t)
    with pytest.raises(ImportRefused, match="would refuse this policy"):
        importer.plan_headscale(headscale_config(tmp_path / "hs", db), config=str(trioscale_config(tmp_path / "ts")))


def test_request_tags_of_027_are_granted_by_tag_owners(tmp_path):
    """Headscale before 0.28 gave a node the tags it asked for when tagOwners allowed them;
    its own migration test database holds such nodes (and the policy deciding)."""
    db = hs.load_dump(tmp_path / "rt.sqlite", "request_tags_migration_test.sql")
    plan = importer.plan_headscale(headscale_config(tmp_path / "hs", db), config=str(trioscale_config(tmp_path / "ts")))
    tags = {n.given_name: n.tags for n in plan.snapshot.nodes}
    raw = {r[0]: r[1] for r in sqlite3.connect(db).execute("SELECT given_name, forced_tags FROM nodes")}
    assert tags["node1"] == ("tag:server",)  # asked, owned by user1
    assert tags["node2"] == ()  # asked for a tag nobody owns
    assert tags["node3"] == ("tag:client", "tag:existing")  # kept its forced tag, got the asked one
    assert raw["node2"] == "[]"
    assert "tag:unauthorized it asked for (the policy's tagOwners do not allow them)" in "\n".join(plan.report.lines())


# --- Headscale's own databases --------------------------------------------------------------

REAL_DUMPS = {
    "0-22-3-to-0-23-0-routes-fail-foreign-key-2076_dump.sql": "0.22 or older",
    "0-22-3-to-0-23-0-routes-are-dropped-2063_dump.sql": "0.22 or older",
    "0-23-0-to-0-24-0-no-more-special-types_dump.sql": "0.23",
    "0-23-0-to-0-24-0-preauthkey-tags-table_dump.sql": "0.23",
    "from_nblock_db01__0.14.0__0.25.1.sql": "0.25",
    "failing-node-preauth-constraint_dump.sql": "0.25",
    "from_nblock_db02__0.22.1__0.26.1.sql": "0.26",
    "wrongly-migrated-schema-0.25.1_dump.sql": "0.26",
    "request_tags_migration_test.sql": "0.28",
    "null_tags_user_id_migration_test.sql": "0.28",
    "zero_time_expiry_migration_test.sql": "0.29",
    "recover_null_tags_user_id_migration_test.sql": "0.29",
}


def _read(db: Path):
    with SQLiteSource(db) as src:
        return read_headscale(src, now=FUTURE)


def _instant(text: str) -> datetime:
    """Go's time text ("2025-04-04 16:01:46.123456789+02:00") as an instant, to the microsecond."""
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text)).astimezone(timezone.utc)


def _hex(key: str | None) -> str:
    return (key or "").split(":")[-1].lower()


@pytest.mark.parametrize("dump", sorted(REAL_DUMPS))
async def test_headscale_test_databases(tmp_path, dump):
    db = hs.load_dump(tmp_path / "hs.sqlite", dump)
    imported = _read(db)
    assert imported.report.source.startswith(f"Headscale {REAL_DUMPS[dump]} ")
    store = Store(tmp_path / "ts.sqlite")
    try:
        await store.import_snapshot(imported.snapshot)
    finally:
        store.close()
    s = await exported(tmp_path / "ts.sqlite")
    report = "\n".join(imported.report.lines())
    raw = sqlite3.connect(db)
    raw.row_factory = sqlite3.Row
    tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    users = {u.id: u for u in s.users}
    for r in raw.execute("SELECT * FROM users WHERE deleted_at IS NULL"):
        assert users[r["id"]].name.startswith(r["name"])
        if "email" in r.keys():
            assert users[r["id"]].email == (r["email"] or "")
            assert users[r["id"]].provider_id == (r["provider_identifier"] or "")

    nodes = {n.id: n for n in s.nodes}
    for r in raw.execute(f"SELECT * FROM {'nodes' if 'nodes' in tables else 'machines'} WHERE deleted_at IS NULL"):
        if r["id"] not in nodes:
            assert f"node {r['id']} " in report  # left out, and said why
            continue
        n = nodes[r["id"]]
        assert (_hex(n.machine_key), _hex(n.node_key), _hex(n.disco_key)) == (
            _hex(r["machine_key"]), _hex(r["node_key"]), _hex(r["disco_key"]))
        addrs = {a for a in (n.ipv4, n.ipv6) if a}
        if "ip_addresses" in r.keys():
            assert addrs == {a for a in (r["ip_addresses"] or "").split(",") if a}
        else:
            assert addrs == {a for a in (r["ipv4"], r["ipv6"]) if a}
        assert n.hostname == (r["hostname"] or "")
        assert n.given_name == r["given_name"] or f"node {r['id']}: name" in report
        assert n.user_id == r["user_id"] or f"node {r['id']}: its user" in report or (
            r["user_id"] is None and n.user_id is None)
        expiry = r["expiry"]
        assert (n.expiry is None) == (expiry is None or expiry.startswith("0001-01-01"))
        if r["last_seen"]:
            assert n.last_seen == _instant(r["last_seen"])
    if "routes" in tables:
        col = "node_id" if "node_id" in [c[1] for c in raw.execute("PRAGMA table_info(routes)")] else "machine_id"
        for r in raw.execute(f"SELECT * FROM routes WHERE deleted_at IS NULL AND enabled = 1"):
            if r[col] in nodes:
                assert str(ipaddress.ip_network(r["prefix"])) in nodes[r[col]].approved_routes
    keys = {k.id: k for k in s.preauth_keys}
    for r in raw.execute("SELECT * FROM pre_auth_keys"):
        k = keys[r["id"]]
        truthy = lambda v: v in (1, "1", "t", "true")  # noqa: E731 - gorm wrote all of these
        assert (k.reusable, k.ephemeral, k.used) == (truthy(r["reusable"]), truthy(r["ephemeral"]), truthy(r["used"]))
        if r["key"]:
            assert k.hash == keysecrets.hash_secret(r["key"])
    assert len(s.api_keys) == raw.execute("SELECT count(*) FROM api_keys").fetchone()[0]


def test_the_switch_over_fixture_schema_translates_to_postgres():
    """The PostgreSQL schema hsfixture makes is gorm's (bigint, boolean, timestamptz, bytea)."""
    ddl = "\n".join(hs.postgres_schema("0.23"))
    assert '"nodes"' in ddl and "bigserial PRIMARY KEY" in ddl and "timestamptz" in ddl and "bytea" in ddl
    assert "`" not in ddl and "AUTOINCREMENT" not in ddl


def test_hsfixture_keeps_headscale_dumps_unchanged():
    assert os.path.getsize(hs.DUMPS / "from_nblock_db02__0.22.1__0.26.1.sql") == 64287


@pytest.mark.parametrize("version", ["0.23", "0.30"])
async def test_postgresql_backed_headscale(tmp_path, version):
    """The same tailnet in a real PostgreSQL, in the column types gorm gives it there."""
    from tests.pgserver import running_postgres

    t = tailnet_for(version)
    with running_postgres() as pg:
        await trio.to_thread.run_sync(hs.make_postgres, pg["dsn"], version, t)
        hs_config = headscale_config(tmp_path / "hs", tmp_path / "unused.sqlite", database={
            "type": "postgres", "postgres": {"host": pg["host"], "port": pg["port"], "name": pg["name"],
                                             "user": pg["user"], "pass": "", "ssl": False}})
        plan = await trio.to_thread.run_sync(
            lambda: importer.plan_headscale(hs_config, config=str(trioscale_config(tmp_path / "ts"))))
    assert plan.report.source.startswith(f"Headscale {version} (PostgreSQL database 'headscale' on 127.0.0.1:")
    await trio.to_thread.run_sync(importer.execute, plan)
    check_imported(t, await exported(tmp_path / "ts" / "data" / "db.sqlite"), version)
