"""Issue 10, items 2-4 in a real server (appliance.serve, in-process) with simulated clients
(bench.controlclient over Noise + HTTP/2): IDs never reused and nothing of a deleted node served
again; offline announced at once while the store is slow; soft state flushed in batches; a
failing task restarted; one node's broken data or failing delta confined to that node."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import time

import pytest
import trio

from appliance.control.mapper import Mapper
from appliance.tailnet.haprobe import HAProber
from bench.controlclient import SimClient
from tests.unit.test_control_loopback import WAIT, Server, joined, start_server, wait_peers

ROUTE = "10.9.0.0/24"
ALLOW_ALL = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'


@pytest.fixture
async def server(nursery, tmp_path):
    s = await start_server(nursery, tmp_path, policy={"mode": "database"})
    yield s
    s.running.cancel_scope.cancel()


def router(server: Server, name: str) -> SimClient:
    c = server.client(name, record=True)
    base = c.hostinfo

    def hostinfo() -> dict:
        return {**base(), "RoutableIPs": [ROUTE]}

    c.hostinfo = hostinfo  # type: ignore[method-assign]
    return c


async def join(server: Server, nursery: trio.Nursery, c: SimClient) -> SimClient:
    with trio.fail_after(WAIT):
        await c.connect(nursery)
        await c.register(server.auth_key)
        await c.open_map(endpoints=[f"192.0.2.1:{41000 + len(c.hostname)}"])
    return c


def db_rows(server: Server, sql: str, *args) -> list[tuple]:
    conn = sqlite3.connect(server.running.config.database.sqlite_path)
    try:
        return [tuple(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


# --- identity and caches --------------------------------------------------------------------


async def test_a_deleted_nodes_id_stays_retired_and_nothing_of_it_is_served_again(server, nursery):
    t = server.running.tailnet
    await server.running.policy.set(ALLOW_ALL)
    a = await joined(server, nursery, "alpha", record=True)
    b = await joined(server, nursery, "bravo")
    await wait_peers(a, {b.node_id})
    old = dict(a.map.peers[b.node_id])
    assert old["StableID"] == str(b.node_id) and old["Name"] == "bravo.ts.test."
    mapper: Mapper = server.running.control.mapper
    with trio.fail_after(WAIT):
        while b.node_id not in server.running.policy._known:
            await trio.sleep(0.01)

    await t.delete_node(b.node_id)
    await wait_peers(a, set())
    # Everything kept per node is gone with it.
    for cache in (t.nodes, t.version, t.capver, t.online, mapper._cache, mapper._text_cache):
        assert b.node_id not in cache
    assert t.node_by_key(b.node_key) is None
    with trio.fail_after(WAIT):
        while b.node_id in server.running.policy._known:
            await trio.sleep(0.01)

    # A new machine gets a new ID, never the deleted one (AUTOINCREMENT), so a client's saved
    # exit node (a StableID) can never come to mean another machine.
    c = await joined(server, nursery, "charlie")
    assert c.node_id > b.node_id
    await wait_peers(a, {c.node_id})
    new = a.map.peers[c.node_id]
    assert new["ID"] == c.node_id and new["StableID"] == str(c.node_id) != old["StableID"]
    assert new["Name"] == "charlie.ts.test." and new["Key"] == c.node_key != old["Key"]
    assert all(p["StableID"] != old["StableID"] for p in a.map.peers.values())
    # ...and nowhere in any message alpha got after the delete
    after = a.map.messages[[i for i, m in enumerate(a.map.messages) if m.get("PeersRemoved")][-1]:]
    assert "bravo" not in repr(after) and b.node_key not in repr(after)
    # The store agrees, across a reload.
    assert db_rows(server, "SELECT seq FROM sqlite_sequence WHERE name = 'nodes'") == [(c.node_id,)]


# --- durability: soft state -----------------------------------------------------------------


async def test_offline_is_announced_at_once_while_the_store_is_slow(server, nursery):
    """Issue 10: an offline announcement waited behind a serialized fsync under a 5 s cap, so
    under a mass disconnect peers kept dead nodes online and HA routes did not fail over."""
    t, store = server.running.tailnet, server.running.tailnet.store
    r1 = await join(server, nursery, router(server, "router1"))
    r2 = await join(server, nursery, router(server, "router2"))
    await t.set_approved_routes(r1.node_id, [ROUTE])
    await t.set_approved_routes(r2.node_id, [ROUTE])
    observer = await joined(server, nursery, "observer")
    others = [await joined(server, nursery, f"leaver{i}") for i in range(8)]
    everyone = {r1.node_id, r2.node_id, *(c.node_id for c in others)}
    await wait_peers(observer, everyone)

    def primary(node_id: int) -> list:
        return (observer.map.peers[node_id] or {}).get("PrimaryRoutes") or []

    with trio.fail_after(WAIT):
        await observer.wait_until(lambda: primary(r1.node_id) == [ROUTE])

    # The store is busy with a slow transaction (a stuck disk) for the whole disconnect.
    slow_done = trio.Event()

    async def slow_store() -> None:
        await store.run_sync(lambda conn: time.sleep(6))
        slow_done.set()

    nursery.start_soon(slow_store)
    await trio.sleep(0.2)
    t0 = trio.current_time()
    for c in (r1, *others):
        await c.aclose()
    with trio.fail_after(2):
        await observer.wait_until(lambda: all(
            observer.map.peers[c.node_id].get("Online") is False for c in (r1, *others)))
        await observer.wait_until(lambda: primary(r2.node_id) == [ROUTE] and not primary(r1.node_id))
    assert not slow_done.is_set() and trio.current_time() - t0 < 2
    assert observer.map.peers[r1.node_id].get("LastSeen")
    # The last-seen times reach the store once it is free again, in one batch.
    with trio.fail_after(WAIT):
        await slow_done.wait()
        while not db_rows(server, "SELECT last_seen FROM nodes WHERE id = ?", r1.node_id)[0][0]:
            await trio.sleep(0.1)
    assert all(db_rows(server, "SELECT last_seen FROM nodes WHERE id = ?", c.node_id)[0][0] for c in others)


async def test_reported_state_is_flushed_in_batches_and_at_shutdown(nursery, tmp_path):
    s = await start_server(nursery, tmp_path)
    a = await joined(s, nursery, "alpha")
    await a.lite_update(["198.51.100.1:41641"])
    assert s.running.tailnet.nodes[a.node_id].endpoints == ("198.51.100.1:41641",)
    with trio.fail_after(WAIT):
        while db_rows(s, "SELECT endpoints FROM nodes WHERE id = ?", a.node_id) != [('["198.51.100.1:41641"]',)]:
            await trio.sleep(0.1)
    # What is still in memory when the server stops is written on the way out.
    await a.lite_update(["198.51.100.2:41641"])
    s.running.cancel_scope.cancel()
    await trio.sleep(0.5)
    assert db_rows(s, "SELECT endpoints FROM nodes WHERE id = ?", a.node_id) == [('["198.51.100.2:41641"]',)]


# --- supervision and per-node failures ------------------------------------------------------


async def test_a_failing_background_task_is_restarted_and_the_server_lives(nursery, tmp_path, monkeypatch, caplog):
    real_run = HAProber.run
    runs = {"n": 0}

    async def flaky_run(self, *, task_status=trio.TASK_STATUS_IGNORED):
        runs["n"] += 1
        if runs["n"] <= 2:
            task_status.started()
            await trio.sleep(0.05)
            raise RuntimeError("injected fault in the prober")
        await real_run(self, task_status=task_status)

    monkeypatch.setattr(HAProber, "run", flaky_run)
    s = await start_server(nursery, tmp_path, node={"routes": {"ha": {"probe_interval": "2s", "probe_timeout": "1s"}}})
    r1 = await join(s, nursery, router(s, "router1"))
    r2 = await join(s, nursery, router(s, "router2"))
    await s.running.tailnet.set_approved_routes(r1.node_id, [ROUTE])
    await s.running.tailnet.set_approved_routes(r2.node_id, [ROUTE])
    state = s.running.supervisor.tasks["HA route prober"]
    with trio.fail_after(WAIT):
        while state.restarts < 2 or not state.running:
            await trio.sleep(0.05)
    failures = [r.getMessage() for r in caplog.records if r.name == "appliance.supervise" and r.levelno == logging.ERROR]
    assert len(failures) == 2 and all("HA route prober" in m and "injected fault" in m for m in failures)
    # It works after its restart: HA members are probed.
    with trio.fail_after(WAIT):
        await r1.wait_until(lambda: any("PingRequest" in m for m in r1.map.messages))
    c = await joined(s, nursery, "late")  # and the server serves on
    assert c.node_id


async def test_one_nodes_broken_data_leaves_the_policy_working_for_the_rest(server, nursery, caplog):
    t, policy = server.running.tailnet, server.running.policy
    await policy.set(ALLOW_ALL)
    a = await joined(server, nursery, "alpha")
    b = await joined(server, nursery, "bravo")
    c = await joined(server, nursery, "charlie")
    await wait_peers(a, {b.node_id, c.node_id})
    rec = t.nodes[b.node_id]
    # Data no version of the server should have stored: the policy cannot compile with it.
    t.nodes[b.node_id] = dataclasses.replace(rec, ipv4="not-an-address")
    t.changed(b.node_id, policy=True)
    await t.rename_node(c.node_id, "carol")  # another node's change must still go through
    with trio.fail_after(WAIT):
        await a.wait_until(lambda: (a.map.peers[c.node_id] or {}).get("Name") == "carol.ts.test.")
        await wait_peers(a, {c.node_id})  # b is left out of the policy: no one sees it
    assert policy.engine.result(c.node_id)
    with pytest.raises(KeyError):
        policy.engine.result(b.node_id)
    assert server.running.supervisor.tasks["policy recompiler"].restarts == 0
    assert any(f"node {b.node_id}" in r.getMessage() and "left out" in r.getMessage()
               for r in caplog.records if r.levelno == logging.ERROR)
    # Repaired data is taken in again.
    t.nodes[b.node_id] = rec
    t.changed(b.node_id, policy=True)
    await wait_peers(a, {b.node_id, c.node_id})


async def test_a_failing_delta_is_confined_to_its_session(server, nursery, monkeypatch):
    a = await joined(server, nursery, "alpha")
    b = await joined(server, nursery, "bravo", record=True)
    c = await joined(server, nursery, "charlie")
    await wait_peers(b, {a.node_id, c.node_id})
    await wait_peers(a, {b.node_id, c.node_id})
    real_delta, real_full = Mapper.delta, Mapper.full
    broken = {"full": False}

    def delta(self, view, pending):
        if view.node_id == b.node_id:
            raise RuntimeError("injected: this session's delta cannot be built")
        return real_delta(self, view, pending)

    def full(self, view, **kw):
        if view.node_id == b.node_id and broken["full"]:
            raise RuntimeError("injected: nor its netmap")
        return real_full(self, view, **kw)

    monkeypatch.setattr(Mapper, "delta", delta)
    monkeypatch.setattr(Mapper, "full", full)
    lists = b.map.full_peer_lists
    await c.lite_update(["198.51.100.9:41641"])
    with trio.fail_after(WAIT):
        await a.wait_until(lambda: "198.51.100.9:41641" in (a.map.peers[c.node_id] or {}).get("Endpoints", ()))
        # b gets a whole netmap instead of the delta, with the change in it
        await b.wait_until(lambda: b.map.full_peer_lists > lists)
    assert "198.51.100.9:41641" in b.map.peers[c.node_id]["Endpoints"]

    broken["full"] = True
    await c.lite_update(["198.51.100.10:41641"])
    with trio.fail_after(WAIT):
        await b.map_stream.ended.wait()  # b's stream ends cleanly; its client would reconnect
        await a.wait_until(lambda: "198.51.100.10:41641" in (a.map.peers[c.node_id] or {}).get("Endpoints", ()))
    assert b.map_stream.status == 200
