"""Changes the server makes by itself, and by clients, in the audit log and as events, on a real
SQLite store: ephemeral clean-up, key expiring and expired (housekeeping), a client's
registration and logout, online and offline; before and after in the API's shapes."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta, timezone

import trio

from appliance.audit.actors import Actor, acting
from appliance.audit.journal import install_journal
from appliance.control.hostinfo import Hostinfo
from appliance.storage import Store
from appliance.storage.audit import AuditFilter
from appliance.tailnet.housekeeping import run_housekeeping
from appliance.tailnet.model import Tailnet


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


async def setup(tmp_path, clock):
    store = Store(tmp_path / "db.sqlite")
    t = Tailnet(store, v4=ipaddress.ip_network("100.64.0.0/10"), v6=None, clock=clock,
                node_expiry=timedelta(hours=20))
    await t.load()
    journal = install_journal(t)
    return store, t, journal


async def register(t: Tailnet, name: str, n: int, *, ephemeral: bool = False):
    u = next(iter(t.users.values()), None) or await t.create_user("alice", email="alice@example.com")
    rec, text = await t.create_preauth_key(u.id, reusable=True, ephemeral=ephemeral)
    key = t.check_preauth_key(text)
    with acting(Actor("preauthkey", str(key.id), "192.0.2.7", key.prefix)):
        return await t.register_with_key(key, machine_key=f"mkey:{n:064x}", node_key=f"nodekey:{n:064x}",
                                         old_node_key=None, hostinfo=Hostinfo(hostname=name))


async def entries(journal, **kw):
    return await journal.audit.query(AuditFilter(**kw))


def kinds(journal) -> list[str]:
    return [e.type for e in journal.hub.ring]


async def until(cond) -> None:
    with trio.fail_after(10):  # housekeeping looks once a second
        while not cond():
            await trio.sleep(0.05)


async def test_housekeeping_changes_are_the_servers(tmp_path):
    clock = Clock()
    store, t, journal = await setup(tmp_path, clock)
    eph = await register(t, "scratch", 1, ephemeral=True)
    keep = await register(t, "laptop", 2)
    (created,) = await entries(journal, node_id=keep.id)
    assert (created.operation, created.actor_kind, created.actor_name, created.source) == (
        "registerNode", "preauthkey", created.actor_name, "192.0.2.7")
    assert created.before is None and created.after["givenName"] == "laptop" and created.after["user"]["name"] == "alice"

    t.stream_opened(keep.id)
    t.stream_closed(keep.id)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_housekeeping, t, timedelta(minutes=2))
        # The keys expire within a day: each announced once.
        await until(lambda: kinds(journal).count("node.key_expiring") == 2)
        clock.now += timedelta(minutes=3)  # the ephemeral node is gone once offline that long
        await until(lambda: eph.id not in t.nodes)
        clock.now += timedelta(hours=20)  # and the other's key expired
        await until(lambda: "node.key_expired" in kinds(journal))
        await trio.sleep(1.5)  # nothing more is announced on the next look
        nursery.cancel_scope.cancel()

    assert eph.id not in t.nodes
    (gone,) = await entries(journal, operation="deleteNode")
    assert (gone.actor_kind, gone.actor_id, gone.node_id) == ("server", "ephemeral-cleanup", eph.id)
    assert gone.before["givenName"] == "scratch" and gone.after is None
    (expired,) = await entries(journal, operation="keyExpired")
    assert (expired.actor_kind, expired.actor_id, expired.node_id) == ("server", "key-expiry", keep.id)
    assert (expired.before["expired"], expired.after["expired"]) == (False, True)

    types = [(e.type, e.node_id) for e in journal.hub.ring if e.type != "changed"]
    assert types == [
        ("user.created", None), ("node.created", eph.id), ("node.created", keep.id), ("node.online", keep.id),
        ("node.offline", keep.id), ("node.key_expiring", eph.id), ("node.key_expiring", keep.id),
        ("node.deleted", eph.id), ("node.key_expired", keep.id),
    ]
    expiring = next(e for e in journal.hub.ring if e.type == "node.key_expiring" and e.node_id == keep.id)
    assert expiring.data["node"]["givenName"] == "laptop" and expiring.data["expiry"].endswith("Z")
    store.close()


async def test_a_client_logging_out_and_routes_approved(tmp_path):
    clock = Clock()
    store, t, journal = await setup(tmp_path, clock)
    n = await register(t, "router", 3)
    with acting(Actor("node", str(n.id), "192.0.2.8", n.given_name)):
        await t.logout(n, clock.now)
    (out,) = await entries(journal, operation="logoutNode")
    assert (out.actor_kind, out.actor_name, out.source) == ("node", "router", "192.0.2.8")
    assert out.before["expiry"] != out.after["expiry"]
    with acting(Actor("server", "auto-approver", source="")):
        await t.set_approved_routes(n.id, ["10.0.0.0/24"])
    (approved,) = await entries(journal, operation="setApprovedRoutes")
    assert approved.actor_id == "auto-approver" and approved.after["approvedRoutes"] == ["10.0.0.0/24"]
    event = next(e for e in journal.hub.ring if e.type == "route.approved")
    assert event.data["routes"] == ["10.0.0.0/24"] and event.data["actor"]["id"] == "auto-approver"
    # A change nobody can see (the client's Hostinfo only) is not an entry.
    await t.update_node(n.id, hostinfo=Hostinfo(hostname="router", os="linux"))
    assert len(await entries(journal, node_id=n.id)) == 3
    store.close()
