"""The change bus and the mapper's deltas: what a connected client is told after each change."""

import ipaddress
from datetime import timedelta

import pytest

from appliance.control.hostinfo import Hostinfo
from appliance.control.mapper import Mapper, SessionView
from appliance.tailnet.changes import FULL, Pending, patch_fields
from appliance.tailnet.model import Tailnet
from tests.stores import new_store, open_store_again, pg_database, store_engine  # noqa: F401


def test_pending_merges_patches_and_full_wins():
    p = Pending()
    p.mark_peer(1, patch_fields({"Online"}))
    p.mark_peer(1, patch_fields({"Endpoints"}))
    assert p.peers[1] == {"Online", "Endpoints"}
    q = Pending()  # every session holds the same shared set for the same change
    q.mark_peer(1, patch_fields({"Endpoints"}))
    q.mark_peer(1, patch_fields({"Online"}))
    assert q.peers[1] is p.peers[1]
    p.mark_peer(1, FULL)
    p.mark_peer(1, patch_fields({"Online"}))
    assert p.peers[1] is FULL
    p.mark_removed(1)
    assert 1 not in p.peers and p.removed == {1}
    p.mark_peer(1, FULL)  # re-added after removal
    assert p.removed == set()
    taken = p.take()
    assert taken.peers == {1: FULL} and p.empty()


@pytest.fixture
async def tailnet(new_store):
    """On each engine (tests/stores.py)."""
    t = Tailnet(new_store, v4=ipaddress.ip_network("100.64.0.0/10"), v6=ipaddress.ip_network("fd7a:115c:a1e0::/48"))
    await t.load()
    return t


async def register(t: Tailnet, name: str, n: int):
    u = next(iter(t.users.values()), None) or await t.create_user("alice", email="alice@example.com")
    rec, text = await t.create_preauth_key(u.id, reusable=True)
    return await t.register_with_key(
        t.check_preauth_key(text), machine_key=f"mkey:{n:064x}", node_key=f"nodekey:{n:064x}",
        old_node_key=None, hostinfo=Hostinfo(hostname=name),
    )


def mapper(t):
    return Mapper(t, base_domain="ts.test", dns_config=lambda: None, derp_map=lambda: {"Regions": {}})


async def test_join_patch_and_delete_are_deltas_not_full_maps(tailnet):
    m = mapper(tailnet)
    a = await register(tailnet, "a", 1)
    b = await register(tailnet, "b", 2)
    handle = tailnet.bus.open(a.id)
    view = SessionView(a.id)
    first = m.full(view)
    assert [p["Name"] for p in first["Peers"]] == ["b.ts.test."]
    assert first["Node"]["Addresses"] == ["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]

    c = await register(tailnet, "c", 3)
    delta = m.delta(view, handle.pending.take())
    assert "Peers" not in delta and [p["ID"] for p in delta["PeersChanged"]] == [c.id]

    tailnet.stream_opened(b.id)
    tailnet.client_reported(b.id, endpoints=("192.0.2.1:41641",), patch={"Endpoints": ["192.0.2.1:41641"]})
    delta = m.delta(view, handle.pending.take())
    assert delta == {"PeersChangedPatch": [{"NodeID": b.id, "Online": True, "Endpoints": ["192.0.2.1:41641"]}]}

    await tailnet.delete_node(c.id)
    assert m.delta(view, handle.pending.take()) == {"PeersRemoved": [c.id]}


async def test_expired_peer_is_removed_and_renamed_peer_resent(tailnet):
    m = mapper(tailnet)
    a = await register(tailnet, "a", 1)
    b = await register(tailnet, "b", 2)
    handle = tailnet.bus.open(a.id)
    view = SessionView(a.id)
    m.full(view)
    await tailnet.rename_node(b.id, "bravo")
    delta = m.delta(view, handle.pending.take())
    assert delta["PeersChanged"][0]["Name"] == "bravo.ts.test."
    await tailnet.expire_node(b.id)
    assert m.delta(view, handle.pending.take()) == {"PeersRemoved": [b.id]}


async def test_names_and_addresses_stay_unique_and_survive_reload(tailnet, tmp_path):
    a = await register(tailnet, "Web Server", 1)
    b = await register(tailnet, "web-server", 2)
    assert (a.given_name, b.given_name) == ("web-server", "web-server-1")
    assert a.ipv4 != b.ipv4 and a.ipv6 != b.ipv6
    again = Tailnet(tailnet.store, v4=tailnet.pool4.network, v6=tailnet.pool6.network)
    await again.load()
    c = await register(again, "c", 3)
    assert c.ipv4 not in (a.ipv4, b.ipv4)


async def test_relogin_of_the_same_machine_keeps_the_node(tailnet):
    a = await register(tailnet, "a", 1)
    await tailnet.logout(a, tailnet.clock() - timedelta(days=1))
    assert tailnet.is_expired(tailnet.nodes[a.id])
    u = next(iter(tailnet.users.values()))
    _, text = await tailnet.create_preauth_key(u.id)
    again = await tailnet.register_with_key(
        tailnet.check_preauth_key(text), machine_key=a.machine_key, node_key=f"nodekey:{99:064x}",
        old_node_key=None, hostinfo=Hostinfo(hostname="a"),
    )
    assert (again.id, again.ipv4, again.given_name) == (a.id, a.ipv4, a.given_name)
    assert not tailnet.is_expired(again)


async def test_a_single_use_key_answers_its_own_retry_and_no_one_else(tailnet):
    """A crash between the commit and the reply: the machine retries with the same node key and
    key; that is the same node, not a second use. Any other machine is refused."""
    from appliance.errors import AuthFailed

    u = await tailnet.create_user("alice")
    _, text = await tailnet.create_preauth_key(u.id)
    keys = dict(machine_key=f"mkey:{1:064x}", node_key=f"nodekey:{1:064x}", old_node_key=None, hostinfo=None)
    first = await tailnet.register_with_key(tailnet.check_preauth_key(text), **keys)
    retry_key = tailnet.check_preauth_key(text, node=tailnet.node_by_key(keys["node_key"]))
    again = await tailnet.register_with_key(retry_key, **keys)
    assert again.id == first.id and len(tailnet.nodes) == 1
    with pytest.raises(AuthFailed, match="already been used"):
        tailnet.check_preauth_key(text)
    with pytest.raises(AuthFailed, match="already been used"):  # another machine's node
        other = await register(tailnet, "other", 2)
        tailnet.check_preauth_key(text, node=other)


async def test_raw_peer_text_decodes_to_the_same_netmap(tailnet):
    from appliance.control.mapframes import MapFrameReader, encode_frame

    m = mapper(tailnet)
    a = await register(tailnet, "a", 1)
    for i in range(2, 6):
        await register(tailnet, f"n{i}", i)
    tailnet.stream_opened(3)
    plain = m.full(SessionView(a.id))
    raw = m.full(SessionView(a.id), raw_peers=True)
    decoded = MapFrameReader(True).receive_data(encode_frame(raw, True))[0]
    plain.pop("ControlTime"), decoded.pop("ControlTime")
    assert decoded == plain
    assert [p["Online"] for p in decoded["Peers"]] == [False, True, False, False]
