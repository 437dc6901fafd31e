"""Driver tests of the public HTTP/1.1 edge (appliance.http.server, frontdoor, limits) on
in-memory streams and loopback sockets: phase deadlines, request smuggling, connection caps and
per-source rates."""

from __future__ import annotations

import types

import h11
import pytest
import trio
import trio.testing

from appliance.http import server as http_server
from appliance.http.frontdoor import FrontDoor
from appliance.http.limits import BodyBudget, ConnectionGate, RegisterGate, SourceRates, source_of
from appliance.http.server import HTTPServer, text
from appliance.keys import generate_private_key
from appliance.ratelimit import TokenBuckets


async def echo_route(req: h11.Request, body: bytes):
    return text(200, f"got {len(body)}\n")


@pytest.fixture
def http(nursery):
    srv = HTTPServer("test")
    srv.plain_routes.append(echo_route)
    done = trio.Event()

    def connect() -> trio.abc.Stream:
        a, b = trio.testing.memory_stream_pair()

        async def run():
            await srv.handle(b)
            done.set()

        nursery.start_soon(run)
        return a

    return connect, done


async def read_all(stream: trio.abc.Stream) -> bytes:
    out = bytearray()
    with trio.fail_after(120):
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return bytes(out)
            out += data


async def test_slow_body_is_cut_at_the_whole_body_deadline(http, autojump_clock, caplog):
    connect, done = http
    client = connect()
    await client.send_all(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
    start = trio.current_time()
    # One byte every 5 s: each read is quick, the body never completes.
    async with trio.open_nursery() as n:
        async def trickle():
            try:
                while True:
                    await trio.sleep(5)
                    await client.send_all(b"z")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        n.start_soon(trickle)
        reply = await read_all(client)
        n.cancel_scope.cancel()
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in reply.lower()
    assert trio.current_time() - start <= http_server.BODY_TIMEOUT + 1
    await done.wait()
    assert "request body not complete" in caplog.text


async def test_head_gets_the_answers_head_and_the_connection_goes_on(http):
    connect, done = http
    client = connect()
    await client.send_all(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    got = await read_all(client)
    head, _, rest = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 6" in head
    assert rest.startswith(b"HTTP/1.1 200") and rest.endswith(b"\r\n\r\ngot 0\n")  # no body after the HEAD


async def test_slow_head_is_cut_at_the_head_deadline(http, autojump_clock):
    connect, done = http
    client = connect()
    start = trio.current_time()
    sent = 0
    try:
        for ch in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"a" * 100:
            await client.send_all(bytes([ch]))  # one byte a second: each read is quick
            sent += 1
            await trio.sleep(1)
    except trio.BrokenResourceError:
        pass
    await done.wait()
    assert trio.current_time() - start <= http_server.HEAD_TIMEOUT + 2
    assert sent < 20


@pytest.mark.parametrize("te,status", [(b"chunked", b"400"), (b"gzip, chunked", b"501")])
async def test_content_length_with_transfer_encoding_is_refused_and_closed(http, te, status, caplog):
    connect, done = http
    client = connect()
    # The classic smuggling shape: a body that is a whole second request to the next hop.
    smuggled = b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"
    await client.send_all(
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: " + te + b"\r\n\r\n"
        + b"0\r\n\r\n" + smuggled
    )
    reply = await read_all(client)
    assert reply.startswith(b"HTTP/1.1 " + status + b" ")  # 501: h11 knows no other coding
    assert reply.count(b"HTTP/1.1") == 1  # the smuggled request got no answer
    assert b"connection: close" in reply.lower()
    await done.wait()
    # h11 refuses a coding other than chunked by itself; both are one warning line.
    assert "Content-Length and Transfer-Encoding" in caplog.text or "malformed HTTP" in caplog.text


async def test_oversized_body_is_413_and_closed(http):
    connect, done = http
    client = connect()
    n = http_server.MAX_BODY + 1
    await client.send_all(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % n)
    try:
        await client.send_all(b"a" * n)
    except trio.BrokenResourceError:
        pass
    reply = await read_all(client)
    assert reply.startswith(b"HTTP/1.1 413 ")
    await done.wait()


async def test_incomplete_bodies_share_one_budget(nursery):
    srv = HTTPServer("budget", BodyBudget(130_000))
    srv.plain_routes.append(echo_route)
    clients = []
    for _ in range(3):
        a, b = trio.testing.memory_stream_pair()
        nursery.start_soon(srv.handle, b)
        await a.send_all(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 60000\r\n\r\n" + b"q" * 45000)
        clients.append(a)
        await trio.testing.wait_all_tasks_blocked()
    assert srv.body_budget.used == 90_000
    # The third body did not fit: 503 and closed; the first two are still being received.
    assert (await read_all(clients[2])).startswith(b"HTTP/1.1 503 ")
    for a in clients[:2]:
        await a.send_all(b"q" * 15000)
        got = await read_all_or_reply(a)
        assert got.startswith(b"HTTP/1.1 200 "), got
    assert srv.body_budget.used == 0


async def read_all_or_reply(stream: trio.abc.Stream) -> bytes:
    with trio.fail_after(5):
        return await stream.receive_some(65536)


async def test_edge_log_lines_are_rate_limited_per_reason(http, caplog):
    connect, _ = http
    for _ in range(40):
        client = connect()
        await client.send_all(b"NOT HTTP AT ALL\r\n\r\n")
        await read_all(client)
    lines = [r for r in caplog.records if "malformed HTTP" in r.getMessage()]
    assert 1 <= len(lines) <= 6  # a burst of 5, then one per interval


def test_sources_are_ipv4_addresses_and_ipv6_64s():
    assert source_of("192.0.2.7") == "192.0.2.7"
    assert source_of("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_of("2001:db8:1:2:3:4:5:6") == source_of("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")
    assert source_of("local") == "local"


def test_gate_caps_per_source_and_total(caplog):
    import ipaddress

    gate = ConnectionGate(5, 2, exempt=[ipaddress.ip_network("10.0.0.0/8")])
    assert gate.try_enter("192.0.2.1") and gate.try_enter("192.0.2.1")
    assert not gate.try_enter("192.0.2.1")  # per source
    assert gate.try_enter("192.0.2.2")
    assert gate.try_enter("10.1.2.3") and gate.try_enter("10.1.2.3")  # a trusted proxy: total only
    assert not gate.try_enter("192.0.2.3")  # total
    assert gate.refused == 2
    gate.leave("192.0.2.1")
    assert gate.try_enter("192.0.2.1")
    for s in ("192.0.2.1", "192.0.2.1", "192.0.2.2", "10.1.2.3", "10.1.2.3"):
        gate.leave(s)
    assert gate.open == 0 and gate._per_source == {}
    assert "limits.max_connections_per_source" in caplog.text


async def test_gate_closes_connections_over_the_cap_before_reading(nursery):
    gate = ConnectionGate(100, 3)
    entered = []
    release = trio.Event()

    async def handler(stream):
        entered.append(stream)
        await release.wait()
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, gate.wrap(handler), listeners)
    clients = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(5)]
    with trio.fail_after(5):
        while gate.refused < 2:
            await trio.sleep(0.01)
        for c in clients[3:]:
            assert await c.receive_some(10) == b""  # closed at once
    assert len(entered) == 3 and gate.open == 3
    release.set()
    with trio.fail_after(5):
        while gate.open:
            await trio.sleep(0.01)
    for c in clients:
        await c.aclose()


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


async def test_key_and_noise_handshakes_are_rate_limited_per_source(nursery, caplog):
    front = FrontDoor(generate_private_key(), types.SimpleNamespace())
    clock = Clock()
    front.rates = SourceRates(clock=clock)
    req = h11.Request(method="GET", target="/key", headers=[("host", "a")])
    burst = int(front.rates.key.burst)
    codes = [(await front.answer(req, "/key", b"", "192.0.2.1"))[0] for _ in range(burst + 1)]
    assert codes[:burst] == [200] * burst and codes[-1] == 429
    assert (await front.answer(req, "/key", b"", "192.0.2.2"))[0] == 200  # another source
    clock.t += 1
    assert (await front.answer(req, "/key", b"", "192.0.2.1"))[0] == 200  # refilled

    # The Noise upgrade: over the rate, a 429 before any cryptography.
    for _ in range(int(front.rates.noise_handshake.burst)):
        assert front.rates.noise_handshake.allow("192.0.2.9")
    a, b = trio.testing.memory_stream_pair()
    conn = h11.Connection(h11.SERVER)
    ts = h11.Request(method="POST", target="/ts2021", headers=[("host", "a"), ("upgrade", "tailscale-control-protocol")])
    conn.receive_data(b"POST /ts2021 HTTP/1.1\r\nhost: a\r\nupgrade: tailscale-control-protocol\r\n"
                      b"content-length: 0\r\n\r\n")
    conn.next_event()
    assert await front.upgrade(b, conn, ts, "/ts2021", "t", "192.0.2.9")
    reply = await a.receive_some(1000)
    assert reply.startswith(b"HTTP/1.1 429 ") and b"retry-after: 1" in reply.lower()


def test_register_gate_counts_only_failures_and_refuses_when_spent(caplog):
    clock = Clock()
    gate = RegisterGate(TokenBuckets(1.0, 3, clock=clock))
    remote = "198.51.100.4:40000"
    for _ in range(3):
        assert not gate.blocked(remote)
        gate.failed(remote)
    assert gate.blocked(remote)
    assert gate.blocked("198.51.100.4:40001")  # the port does not matter
    assert not gate.blocked("198.51.100.5:1")
    clock.t += 1
    assert not gate.blocked(remote)
    assert "too many registrations without a valid key" in caplog.text


async def test_batch_listener_takes_the_whole_queue_in_one_round():
    from appliance.http.listeners import BatchListener

    (inner,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = BatchListener(inner)
    port = inner.socket.getsockname()[1]
    clients = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(50)]
    got = [await listener.accept()]
    # The other 49 were waiting in the kernel's queue: handed out without a scheduling round
    # each (a new client behind a burst would otherwise wait one round per connection).
    with trio.testing.assert_no_checkpoints():
        for _ in range(49):
            got.append(await listener.accept())
    for i, (c, s) in enumerate(zip(clients, got)):
        await c.send_all(b"%d" % i)
    assert sorted([int(await s.receive_some(10)) for s in got]) == list(range(50))
    for s in got + clients:
        await s.aclose()
    await listener.aclose()


async def test_new_stream_flood_on_one_connection_gets_goaway(nursery):
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events

    from appliance.http import h2server

    async def handler(req, resp, conn):
        await resp.simple(404, b"no\n")

    a, b = trio.testing.memory_stream_pair()
    server = h2server.H2Server(b, handler, "flood")
    nursery.start_soon(server.serve)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    terminated = None
    for _ in range(int(h2server.STREAM_RATE[1]) + 50):
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "a")],
                       end_stream=True)
        await a.send_all(c.data_to_send())
        with trio.move_on_after(0.01):
            for ev in c.receive_data(await a.receive_some(65536)):
                if isinstance(ev, h2.events.ConnectionTerminated):
                    terminated = ev
        if terminated:
            break
    assert terminated is not None and terminated.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
