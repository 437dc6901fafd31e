"""`trioscale export` and `import trioscale`: the document, its round trip, and bad documents."""

from __future__ import annotations

import ipaddress
import json
from datetime import datetime, timezone

import pytest
import trio
import yaml

from appliance.cli import main
from appliance.migrate import snapshot as exportdoc
from appliance.migrate.errors import ImportRefused
from appliance.storage import Store, open_store
from appliance.storage.webhooks import insert_webhook
from appliance.tailnet.model import Tailnet
from tests.stores import database_config, pg_database, postgres_config, store_engine  # noqa: F401

from . import hsfixture as hs
from .test_headscale_import import exported, headscale_config, tailnet_for, trioscale_config


async def _cli(*argv: str) -> int:
    return await trio.to_thread.run_sync(main, list(argv))


async def test_export_import_export_gives_the_same_document(tmp_path):
    db = hs.make_sqlite(tmp_path / "hs.sqlite", "0.30", tailnet_for("0.30"))
    a, b = trioscale_config(tmp_path / "a"), trioscale_config(tmp_path / "b")
    assert await _cli("-c", str(a), "import", "headscale", "--from", str(headscale_config(tmp_path / "hs", db))) == 0
    # A DNS setting changed through the API at run time travels with the export.
    store = Store(tmp_path / "a" / "data" / "db.sqlite")
    await store.put_setting("dns.nameservers.global", ["9.9.9.9"], datetime(2026, 1, 1, tzinfo=timezone.utc))
    # And a webhook added through the API, with its secret (deliveries are signed with it).
    await store.run_sync(lambda c: insert_webhook(c, "https://hooks.example.com/x", "k" * 24, ("*",),
                                                  datetime(2026, 1, 2, tzinfo=timezone.utc)))
    store.close()
    assert await _cli("-c", str(a), "export", str(tmp_path / "one.json")) == 0
    assert (tmp_path / "one.json").stat().st_mode & 0o777 == 0o600
    assert await _cli("-c", str(b), "import", "trioscale", str(tmp_path / "one.json")) == 0
    assert await _cli("-c", str(b), "export", str(tmp_path / "two.json")) == 0
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()
    assert await exported(tmp_path / "a" / "data" / "db.sqlite") == await exported(tmp_path / "b" / "data" / "db.sqlite")
    doc = json.loads((tmp_path / "one.json").read_text())
    assert doc["format"] == "trioscale-export" and doc["noise_private_key"] == "privkey:" + "5a" * 32
    assert [n["id"] for n in doc["nodes"]] == [1, 2, 7, 8]
    assert [(st["name"], st["value"]) for st in doc["settings"]] == [("dns.nameservers.global", ["9.9.9.9"])]
    assert [(w["url"], w["secret"], w["events"]) for w in doc["webhooks"]] == [
        ("https://hooks.example.com/x", "k" * 24, ["*"])]
    assert (tmp_path / "b" / "data" / "noise_private.key").read_text().strip() == doc["noise_private_key"]
    # An import never merges: the server already holds a tailnet now.
    assert await _cli("-c", str(b), "import", "trioscale", str(tmp_path / "one.json")) == 1


def _doc() -> dict:
    return {
        "format": "trioscale-export", "version": 3, "noise_private_key": "privkey:" + "11" * 32,
        "derp_private_key": None, "api_keys": [], "policies": [], "settings": [],
        "webhooks": [{"id": 2, "url": "https://hooks.example.com/t", "secret": "s" * 20,
                      "events": ["node.created"], "created_at": "2025-01-01T00:00:00Z"}],
        "users": [{
            "id": 1, "name": "alice", "display_name": "Alice", "email": "alice@example.com", "provider": "oidc",
            "provider_id": "https://idp.example.com/0042", "profile_pic_url": "", "created_at": "2025-01-01T00:00:00Z",
            "role": "admin", "groups": ["eng", "Domain Admins"],
        }],
        "pre_auth_keys": [{
            "id": 4, "prefix": "abcdefabcdef", "hash": "0" * 64, "user_id": 1, "reusable": True, "ephemeral": False,
            "used": False, "tags": [], "created_at": "2025-01-01T00:00:00Z", "expiration": None, "pre_approved": True,
        }],
        "nodes": [{
            "id": 3, "machine_key": "mkey:" + "22" * 32, "node_key": "nodekey:" + "33" * 32, "disco_key": "",
            "ipv4": "100.64.0.3", "ipv6": None, "hostname": "h", "given_name": "h", "user_id": None,
            "auth_key_id": None, "tags": ["tag:a"], "hostinfo": {}, "endpoints": [], "expiry": None,
            "last_seen": "2025-01-01T00:00:00Z", "created_at": "2025-01-01T00:00:00Z", "approved_routes": [],
            "ephemeral": False, "register_method": "authkey", "authorized": False,
        }],
    }


def test_a_good_document_parses():
    e = exportdoc.loads(json.dumps(_doc()))
    assert e.snapshot.nodes[0].id == 3 and e.noise_private_key == bytes.fromhex("11" * 32)
    assert e.snapshot.users[0].role == "admin" and e.snapshot.users[0].groups == ("eng", "Domain Admins")
    assert e.snapshot.preauth_keys[0].pre_approved and not e.snapshot.nodes[0].authorized
    assert json.loads(exportdoc.dumps(e)) == _doc()


def test_a_version_1_document_reads_with_the_defaults_of_what_it_lacks():
    d = _doc()
    d["version"] = 1
    d["webhooks"] = []
    for section, fields in exportdoc.ADDED_IN_2.items():
        for item in d[section]:
            for f in fields:
                del item[f]
    s = exportdoc.loads(json.dumps(d)).snapshot
    assert (s.users[0].role, s.users[0].groups) == ("member", ())
    assert not s.preauth_keys[0].pre_approved and s.nodes[0].authorized
    d["version"] = 2
    with pytest.raises(ImportRefused, match="'role' is missing"):
        exportdoc.loads(json.dumps(d))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format="something"), "not a trioscale export"),
    (lambda d: d.update(version=4), "export version 4"),
    (lambda d: d.update(version=2), "an export of version 2 has none"),
    (lambda d: d["webhooks"][0].update(url="ftp://x"), r"webhooks\[0\].url"),
    (lambda d: d["webhooks"][0].update(secret="short"), r"webhooks\[0\].secret"),
    (lambda d: d["webhooks"][0].update(events=["node.exploded"]), r"webhooks\[0\].events"),
    (lambda d: d.update(version=True), "export version True"),
    (lambda d: d["users"][0].update(role="root"), r"users\[0\].role: expected one of owner"),
    (lambda d: d["users"][0].update(groups=["ok", "bad\u001b[31m"]), r"users\[0\].groups: .* is not a group name"),
    (lambda d: d["users"][0].update(groups=[f"g{i}" for i in range(257)]), r"users\[0\].groups: more than 256"),
    (lambda d: d["nodes"][0].update(authorized="yes"), r"nodes\[0\].authorized: expected true or false"),
    (lambda d: d["pre_auth_keys"][0].pop("pre_approved"), "'pre_approved' is missing"),
    (lambda d: d.update(noise_private_key="privkey:abc"), "noise_private_key"),
    (lambda d: d["nodes"][0].update(node_key="nodekey:zz"), r"nodes\[0\]"),
    (lambda d: d["nodes"][0].update(ipv4="100.64.0.999"), r"nodes\[0\].ipv4"),
    (lambda d: d["nodes"][0].update(created_at="yesterday"), r"nodes\[0\].created_at"),
    (lambda d: d["nodes"][0].pop("hostname"), "'hostname' is missing"),
    (lambda d: d["nodes"][0].update(colour="red"), "unknown fields colour"),
    (lambda d: d["nodes"][0].update(id="3"), r"nodes\[0\].id: expected an integer"),
    (lambda d: d["nodes"][0].update(approved_routes=["10.0.0.0/33"]), "approved_routes"),
])
def test_bad_documents_are_refused_naming_the_value(change, message):
    d = _doc()
    change(d)
    with pytest.raises(ImportRefused, match=message):
        exportdoc.loads(json.dumps(d))
    with pytest.raises(ImportRefused, match="not a JSON document"):
        exportdoc.loads("{nope")


async def test_sign_in_state_travels_with_the_export(tmp_path, store_engine, request):
    """Roles, provider groups, device approval and pre-approved keys survive export → import
    → export, and a Headscale user imported with its provider identity signs in again as
    itself (one owner throughout: the first user's, as the store names none after the import).
    The second server is on each engine: the import and the export go through PostgreSQL too."""
    db = hs.make_sqlite(tmp_path / "hs.sqlite", "0.30", tailnet_for("0.30"))
    a, b = trioscale_config(tmp_path / "a"), trioscale_config(tmp_path / "b")
    b_store = lambda: Store(tmp_path / "b" / "data" / "db.sqlite")  # noqa: E731
    if store_engine == "postgres":
        pg = request.getfixturevalue("pg_database")
        b.write_text(yaml.safe_dump({**yaml.safe_load(b.read_text()), "database": pg.config(socket=True)}))
        b_store = lambda: open_store(database_config("postgres", None, postgres_config(pg, socket=True)))  # noqa: E731
    assert await _cli("-c", str(a), "import", "headscale", "--from", str(headscale_config(tmp_path / "hs", db))) == 0
    store = Store(tmp_path / "a" / "data" / "db.sqlite")
    t = Tailnet(store, v4=ipaddress.ip_network("100.64.0.0/10"), v6=None, approval_required=True)
    await t.load()
    alice, bob = (t.find_user(n) for n in ("alice@example.com", "bob"))
    assert t.roles()[alice.id] == "owner" and {u.role for u in t.users.values()} == {"member"}
    again = await t.sign_in_user(provider="oidc", provider_id="https://idp.example.org/bob", name_hint="robert",
                                 display_name="Bob B", email="bob@example.org", picture="", groups=("eng", "Ops Team"))
    assert again.id == bob.id and again.name == "bob" and again.groups == ("eng", "Ops Team")
    await t.set_role(bob.id, "network-admin")
    key, _ = await t.create_preauth_key("bob", pre_approved=True)
    waiting = next(n for n in t.nodes.values() if n.user_id == alice.id)
    await t.update_node(waiting.id, authorized=False)
    store.close()
    assert await _cli("-c", str(a), "export", str(tmp_path / "one.json")) == 0
    assert await _cli("-c", str(b), "import", "trioscale", str(tmp_path / "one.json")) == 0
    assert await _cli("-c", str(b), "export", str(tmp_path / "two.json")) == 0
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()
    store = b_store()
    try:
        s = await store.export_snapshot()
    finally:
        store.close()
    users = {u.id: u for u in s.users}
    assert (users[bob.id].role, users[bob.id].groups) == ("network-admin", ("eng", "Ops Team"))
    assert next(k for k in s.preauth_keys if k.id == key.id).pre_approved
    assert not next(n for n in s.nodes if n.id == waiting.id).authorized
    assert sum(n.authorized for n in s.nodes) == len(s.nodes) - 1
