"""Two DerpServer instances meshed into one region."""

import trio

from derp import frames as fr
from derp.httpd import serve_http
from derp.server import DerpServer

from .helpers import dial, recv_type, wait_until

MESH_KEY = "ab" * 32


async def _bind(nursery, server):
    listeners = await nursery.start(serve_http, server, "127.0.0.1", 0)
    return listeners[0].socket.getsockname()[1]


async def _pair(nursery):
    # Bind both first so each can be given the other's URL.
    la = await trio.open_tcp_listeners(0, host="127.0.0.1")
    lb = await trio.open_tcp_listeners(0, host="127.0.0.1")
    pa, pb = la[0].socket.getsockname()[1], lb[0].socket.getsockname()[1]
    urls = ["http://127.0.0.1:%d" % pa, "http://127.0.0.1:%d" % pb]
    # Each server also lists itself (as a shared region config would); it must skip itself.
    a = DerpServer(fr.generate_private_key(), mesh_key=MESH_KEY, mesh_with=urls)
    b = DerpServer(fr.generate_private_key(), mesh_key=MESH_KEY, mesh_with=urls)
    from functools import partial

    from derp.httpd import handle_connection
    nursery.start_soon(trio.serve_listeners, partial(handle_connection, a), la)
    nursery.start_soon(trio.serve_listeners, partial(handle_connection, b), lb)
    await nursery.start(a.run)
    await nursery.start(b.run)
    await wait_until(lambda: a.metrics()["mesh_links_connected"] == 1
                     and b.metrics()["mesh_links_connected"] == 1)
    return a, b, pa, pb


async def test_meshed_servers_relay_between_clients(nursery):
    a, b, pa, pb = await _pair(nursery)
    ca = await dial(pa)
    cb = await dial(pb)
    await wait_until(lambda: a.metrics()["remote_keys"] == 1 and b.metrics()["remote_keys"] == 1)
    await ca.send_packet(cb.public_key, b"a to b")
    assert await recv_type(cb, fr.RecvPacket) == fr.RecvPacket(ca.public_key, b"a to b")
    await cb.send_packet(ca.public_key, b"b to a")
    assert await recv_type(ca, fr.RecvPacket) == fr.RecvPacket(cb.public_key, b"b to a")
    assert a.metrics()["packets_forwarded_out"] == 1
    assert a.metrics()["packets_forwarded_in"] == 1
    # Remote client leaves: the local sender hears PeerGone through the mesh.
    await cb.aclose()
    assert await recv_type(ca, fr.PeerGone) == fr.PeerGone(cb.public_key, 0)
    await wait_until(lambda: a.metrics()["remote_keys"] == 0)


async def test_wrong_mesh_key_refused(nursery):
    a, b, pa, pb = await _pair(nursery)
    import pytest

    from derp.errors import ConnectionClosed
    with pytest.raises((ConnectionClosed, trio.BrokenResourceError)):
        await dial(pa, mesh_key="cd" * 32)
    assert a.metrics()["refused_total"] == 1


async def test_mesh_watcher_sees_presence_and_can_close_peer(nursery):
    server = DerpServer(fr.generate_private_key(), mesh_key=MESH_KEY)
    port = await _bind(nursery, server)
    c1 = await dial(port)
    w = await dial(port, mesh_key=MESH_KEY)
    await w.send(fr.WatchConns())
    ev = await recv_type(w, fr.PeerPresent)
    assert ev.key == c1.public_key and ev.port > 0 and ev.flags == 1
    assert ev.ip == b"\x00" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1])
    c2 = await dial(port)
    assert (await recv_type(w, fr.PeerPresent)).key == c2.public_key
    await w.send(fr.ClosePeer(c2.public_key))
    assert await recv_type(w, fr.PeerGone) == fr.PeerGone(c2.public_key, 0)
    # ForwardPacket from a mesh peer is delivered with the original source.
    src = bytes(range(32))
    await w.send(fr.ForwardPacket(src, c1.public_key, b"fwd"))
    assert await recv_type(c1, fr.RecvPacket) == fr.RecvPacket(src, b"fwd")
