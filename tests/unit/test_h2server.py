"""Driver tests of the HTTP/2 server (appliance.http.h2server) over an in-memory stream, with
h2's client as the peer: resets racing replies end only their stream, and every bound on what
an unauthenticated peer can make the server hold (rapid reset, half-open streams, buffered
bodies, the first request) holds."""

from __future__ import annotations

import logging

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
import trio
import trio.testing

from appliance.http import h2server
from appliance.http.h2server import H2Server

HEADERS = [(":method", "POST"), (":path", "/x"), (":scheme", "http"), (":authority", "a")]


async def streaming_handler(req, resp, conn):
    """A reply long enough to be cut by a reset: many DATA frames, like a map stream."""
    await resp.start(200, [("content-type", "application/octet-stream")])
    for _ in range(12):
        await resp.send(b"x" * 5000)
        await trio.sleep(0)
    await resp.send(req.body or b"end", end=True)


class Client:
    """h2's client over one end of a memory stream pair."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        self.bodies: dict[int, bytearray] = {}
        self.ended: set[int] = set()
        self.reset: set[int] = set()
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.closed = False

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            await self.stream.send_all(data)

    def request(self, body: bytes | None = b"", end: bool = True) -> int:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, HEADERS, end_stream=end and not body)
        if body:
            self.h2.send_data(sid, body, end_stream=end)
        return sid

    async def pump(self, timeout: float = 0.05) -> bool:
        """Read what the server sent within ``timeout``; False when nothing came."""
        data = None
        with trio.move_on_after(timeout):
            data = await self.stream.receive_some(65536)
        if data is None:
            return False
        if not data:
            self.closed = True
            return False
        for ev in self.h2.receive_data(data):
            if isinstance(ev, h2.events.DataReceived):
                self.bodies.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self.ended.add(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                self.reset.add(ev.stream_id)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.terminated = ev
        # Outside the timeout: a cancelled send would lose the window updates (the very bug
        # the server's single writer prevents).
        await self.flush()
        return True

    async def drain(self) -> None:
        while await self.pump(0.01) and not self.closed:
            pass


@pytest.fixture
async def conn(nursery):
    a, b = trio.testing.memory_stream_pair()
    server = H2Server(b, streaming_handler, "h2-test")
    done = trio.Event()

    async def run():
        try:
            await server.serve()
        finally:
            done.set()

    nursery.start_soon(run)
    client = Client(a)
    await client.flush()
    yield server, client, done


async def test_reset_racing_replies_ends_only_those_streams(conn, caplog):
    server, client, done = conn
    caplog.set_level(logging.INFO)
    # Bursts of requests, each reset at a different point of its reply: before the headers,
    # between DATA frames, while waiting for the window (issue 10's reset race).
    for round_ in range(15):
        ids = [client.request() for _ in range(8)]
        await client.flush()
        for _ in range(round_ % 4):
            await client.pump(0.01)
        for sid in ids:
            client.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        await client.flush()
    await client.drain()
    # The connection is intact: a fresh request gets its whole answer.
    sid = client.request(b"still here")
    await client.flush()
    with trio.fail_after(5):
        while sid not in client.ended:
            await client.pump()
    assert bytes(client.bodies[sid]).endswith(b"still here")
    assert client.terminated is None and not done.is_set()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "Traceback" not in caplog.text


async def test_rapid_reset_gets_goaway_and_bounded_handlers(conn, caplog):
    server, client, done = conn
    peak = 0
    for _ in range(60):
        for _ in range(10):
            sid = client.request()
            client.h2.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        await client.flush()
        peak = max(peak, len(server._scopes))
        await client.pump(0.001)
        if client.terminated or client.closed:
            break
    with trio.fail_after(5):
        while client.terminated is None and not client.closed:
            await client.pump()
    assert client.terminated is not None
    assert client.terminated.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert peak <= h2server.MAX_HANDLERS
    with trio.fail_after(5):
        await done.wait()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_half_open_streams_are_reset_after_the_request_deadline(conn, autojump_clock):
    server, client, done = conn
    first = client.request(b"complete")  # a served request: only the half-open ones are at fault
    await client.flush()
    while first not in client.ended:
        await client.pump()
    ids = [client.request(b"partial", end=False) for _ in range(h2server.MAX_CONCURRENT_STREAMS - 1)]
    await client.flush()
    await client.pump()
    assert len(server._requests) == len(ids)
    await trio.sleep(h2server.REQUEST_TIMEOUT + 1)
    await client.drain()
    assert set(ids) <= client.reset
    assert server._requests == {} and server._pending_body == 0
    assert not done.is_set()


async def test_buffered_request_bodies_are_bounded_per_connection(conn):
    server, client, done = conn
    ids = [client.request(None, end=False) for _ in range(h2server.MAX_CONCURRENT_STREAMS - 1)]
    sent = 0
    # Streams that never end their bodies, each under MAX_REQUEST_BODY, together far more
    # than MAX_PENDING_BODY: sent as fast as flow control lets them.
    while sent < 2 * h2server.MAX_PENDING_BODY and not client.closed:
        for sid in ids:
            if sid in client.reset:
                continue
            n = min(16000, client.h2.local_flow_control_window(sid))
            if n > 0:
                client.h2.send_data(sid, b"y" * n)
                sent += n
        await client.flush()
        await client.drain()
        assert server._pending_body <= h2server.MAX_PENDING_BODY
        if len(client.reset) == len(ids):
            break
    assert client.reset  # streams over the budget were refused
    assert not done.is_set()


async def test_first_request_deadline_closes_a_silent_connection(conn, autojump_clock):
    server, client, done = conn
    await trio.sleep(h2server.FIRST_REQUEST_TIMEOUT + 1)
    with trio.fail_after(5):
        await done.wait()
    await client.drain()
    assert client.terminated is not None or client.closed


async def test_client_that_stops_reading_is_dropped_after_the_write_timeout(nursery, autojump_clock):
    server = H2Server(trio.testing.lockstep_stream_pair()[1], streaming_handler, "h2-stall")
    done = trio.Event()

    async def run():
        await server.serve()
        done.set()

    nursery.start_soon(run)
    # Nobody ever reads the lockstep stream: the first write (the settings) stalls.
    with trio.fail_after(h2server.WRITE_TIMEOUT + 5):
        await done.wait()
