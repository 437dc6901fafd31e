"""derp.tls.TLSStream: handshakes, byte-exact transfers, the relay's batch and direct sends,
ordering of ciphertext, EOF and failure handling, interop with trio.SSLStream."""

from __future__ import annotations

import os
import socket
import ssl

import pytest
import trio
import trustme

from derp import frames as fr
from derp.client import connect
from derp.httpd import handle_tls_connection
from derp.server import DerpServer
from derp.tls import TLSStream, relay_context

from .helpers import recv_type


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def contexts(ca):
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("relay.test").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return relay_context(server), client


def socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def tls_pair(contexts) -> tuple[TLSStream, TLSStream]:
    server_ctx, client_ctx = contexts
    a, b = socket_pair()
    out: dict = {}
    async with trio.open_nursery() as n:
        async def srv():
            out["s"] = await TLSStream.accept(a, server_ctx)
        n.start_soon(srv)
        out["c"] = await TLSStream.connect(b, client_ctx, server_hostname="relay.test")
    return out["s"], out["c"]


async def read_exactly(stream: trio.abc.Stream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        d = await stream.receive_some(1 << 16)
        assert d, "EOF after %d of %d bytes" % (len(buf), n)
        buf += d
    return bytes(buf)


async def test_bytes_cross_both_ways_intact(contexts):
    s, c = await tls_pair(contexts)
    assert s.ssl_object.version() == "TLSv1.3"
    blob = os.urandom(3 << 20)  # many records, many socket buffers' worth
    got = {}
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            n.start_soon(c.send_all, blob)
            n.start_soon(s.write, [blob[:100], blob[100:70000], b"", blob[70000:]], None)

            async def take(name, stream):
                got[name] = await read_exactly(stream, len(blob))
            n.start_soon(take, "s", s)
            n.start_soon(take, "c", c)
    assert got["s"] == blob and got["c"] == blob
    assert not s.pending and not c.pending


async def test_receive_some_keeps_what_the_caller_did_not_ask_for(contexts):
    s, c = await tls_pair(contexts)
    await c.send_all(b"0123456789")
    with trio.fail_after(5):
        assert await s.receive_some(4) == b"0123"
        assert await s.receive_some(100) == b"456789"


async def test_send_nowait_sends_at_once_when_idle_and_refuses_while_a_send_runs(contexts):
    s, c = await tls_pair(contexts)
    await s.send_all(b"")  # flushes the session tickets held back after the handshake
    assert s.send_nowait(b"direct")
    assert not s.pending
    with trio.fail_after(5):
        assert await c.receive_some() == b"direct"
    # Fill the socket so that a send blocks; meanwhile send_nowait must stay out of the way.
    big = os.urandom(8 << 20)
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            n.start_soon(s.send_all, big)
            await trio.testing.wait_all_tasks_blocked()
            assert not s.send_nowait(b"must not interleave")
            got = await read_exactly(c, len(big))
    assert got == big


async def test_a_direct_send_cut_short_goes_out_first_with_the_next_send(contexts):
    s, c = await tls_pair(contexts)
    await s.send_all(b"")
    # Fill the kernel buffers without reading, so that the direct send is cut short.
    filler = b"f" * (1 << 16)
    sock = s.transport_stream.socket
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, 4096)
    total = 0
    while not s.pending:
        assert s.send_nowait(filler)
        total += len(filler)
    tail = b"after the cut"
    with trio.fail_after(20):
        async with trio.open_nursery() as n:
            n.start_soon(s.write, [tail], None)
            got = await read_exactly(c, total + len(tail))
    assert got == filler * (total // len(filler)) + tail


async def test_close_notify_reads_as_eof_and_so_does_a_ragged_close(contexts):
    s, c = await tls_pair(contexts)
    await c.send_all(b"bye")
    await c.aclose()
    with trio.fail_after(5):
        assert await s.receive_chunks() == [b"bye"]
        assert await s.receive_chunks() == []
        assert await s.receive_some() == b""
    s2, c2 = await tls_pair(contexts)
    c2.transport_stream.socket.shutdown(socket.SHUT_WR)  # FIN without close_notify
    with trio.fail_after(5):
        assert await s2.receive_some() == b""


async def test_a_failed_handshake_is_broken_resource_and_closes_the_socket(contexts):
    server_ctx, _ = contexts
    a, b = socket_pair()
    await b.send_all(b"GET / HTTP/1.1\r\n\r\n" + b"x" * 300)
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
        await TLSStream.accept(a, server_ctx)
    assert a.socket.fileno() == -1
    # Wrong name: the client refuses the certificate.
    a, b = socket_pair()
    async with trio.open_nursery() as n:
        n.start_soon(_accept_quietly, a, server_ctx)
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
            await TLSStream.connect(b, contexts[1], server_hostname="other.test")


async def _accept_quietly(sock, ctx):
    try:
        await TLSStream.accept(sock, ctx)
    except trio.BrokenResourceError:
        pass


async def test_accept_with_the_client_hello_already_read(contexts):
    """The appliance reads the ClientHello to route a connection; the rest must still work."""
    server_ctx, client_ctx = contexts
    a, b = socket_pair()
    out = {}
    async with trio.open_nursery() as n:
        async def srv():
            prefix = await a.receive_some(5)  # part of the first record, as a peek would take
            out["s"] = await TLSStream.accept(a, server_ctx, prefix=prefix)
        n.start_soon(srv)
        c = trio.SSLStream(b, client_ctx, server_hostname="relay.test")
        await c.do_handshake()  # interop: trio's client against ours
    await c.send_all(b"ping")
    with trio.fail_after(5):
        assert await out["s"].receive_some() == b"ping"
        await out["s"].send_all(b"pong")
        assert await c.receive_some() == b"pong"


async def test_relay_over_tls_delivers_in_order_with_batches_and_direct_sends(contexts):
    """A relay session on a TLSStream: a lone packet goes out by direct send, a burst by
    batched writes; every packet arrives intact and in order."""
    server_ctx, client_ctx = contexts
    server = DerpServer(fr.generate_private_key())
    clients = []
    async with trio.open_nursery() as n:
        for _ in range(2):
            a, b = socket_pair()

            n.start_soon(handle_tls_connection, server, server_ctx, a)
            tls = await TLSStream.connect(b, client_ctx, server_hostname="relay.test")
            clients.append(await connect(tls, fr.generate_private_key()))
        src, dst = clients
        with trio.fail_after(10):
            await src.send_packet(dst.public_key, b"lone")
            assert await recv_type(dst, fr.RecvPacket) == fr.RecvPacket(src.public_key, b"lone")
            writes = server.metrics()["writes"]
            burst = b"".join(fr.encode_send_packet(dst.public_key, b"%05d" % i + b"p" * 1195)
                             for i in range(2000))
            n.start_soon(src.send_raw, burst)
            seen = []
            while not seen or seen[-1] != 1999:
                ev = await recv_type(dst, fr.RecvPacket)
                assert ev.src == src.public_key and ev.packet[5:] == b"p" * 1195
                seen.append(int(ev.packet[:5]))
        # A full queue drops its oldest packet (counted); the rest arrive in order.
        assert seen == sorted(set(seen))
        m = server.metrics()
        assert len(seen) + m["drops"].get("client_queue_full", 0) == 2000
        assert m["writes"] > writes
        n.cancel_scope.cancel()
