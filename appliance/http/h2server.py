"""An HTTP/2 server (h2 library) over any trio Stream: here, the Noise stream.

One reader task owns the connection's input and one writer task its output; each complete
request runs as a handler task in the connection's nursery. Handlers never write to the
transport themselves: they queue frames in h2 and wait for the writer to send them. A handler
can be cancelled at any moment (its stream was reset), and a write cut off half-way would
corrupt the HPACK state and the framing of every other stream on the connection; with one
writer, a reset ends that stream only. Response bodies wait for the peer's flow-control
window, so a client that stops reading stalls only its own stream.

Bounds on what a peer can make us hold (each a named constant below): concurrent streams,
handler tasks, buffered request bytes per stream and per connection, the time to complete the
first request and each request, the rate of stream resets (HTTP/2 "rapid reset",
CVE-2023-44487), and the time one write may stall.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from ..logthrottle import LogThrottle
from ..ratelimit import TokenBuckets
from .limits import BodyBudget

log = logging.getLogger(__name__)
throttled = LogThrottle(log)

# A register or map request is a few KiB of JSON; a larger body is an attack or a bug.
MAX_REQUEST_BODY = 1 << 20
# All requests of one connection that are not complete yet, together: without it, 64 streams
# of almost 1 MiB each would hold 64 MiB for one anonymous peer.
MAX_PENDING_BODY = 2 << 20
# A client keeps a map poll and a few short requests open at once. Each stream's headers cost
# about 0.15 ms of CPU in h2, so a connection's first burst is bounded by this too.
MAX_CONCURRENT_STREAMS = 32
MAX_HEADER_LIST_SIZE = 65536
# Handlers still running (a reset stream's handler may take a moment to wind down): more than
# this and new streams are refused, so resets cannot pile up tasks.
MAX_HANDLERS = 2 * MAX_CONCURRENT_STREAMS
# A new connection must complete its first request within this; a client dials control only
# when it has a request to make.
FIRST_REQUEST_TIMEOUT = 30.0
# A request whose headers arrived must be complete (body and all) within this.
REQUEST_TIMEOUT = 30.0
# With no open stream, a connection that says nothing for this long is closed.
IDLE_TIMEOUT = 300.0
# One write that the peer does not take for this long ends the connection (it stopped reading).
WRITE_TIMEOUT = 60.0
# Stream resets a client may send: a burst, then this many per second. Clients cancel the odd
# request; a flood of resets is the rapid-reset attack and gets a GOAWAY.
RESET_RATE = (10.0, 200)
# New streams per connection, likewise: a client sends a few requests a minute, and a peer that
# opens hundreds a second only costs us CPU.
STREAM_RATE = (20.0, 200)
READ_SIZE = 65536
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass
class Request:
    stream_id: int
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)
    deadline: float = math.inf  # trio time by which the request must be complete

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class StreamGone(Exception):
    """The client reset the stream or closed the connection while we were writing."""


class Response:
    """Handed to a handler to answer one request."""

    def __init__(self, conn: "H2Server", stream_id: int) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.headers_sent = False

    async def start(self, status: int, headers: list[tuple[str, str]] = (), end: bool = False) -> None:
        hdrs = [(":status", str(status)), *headers]
        self._conn._do(self.stream_id, lambda c: c.send_headers(self.stream_id, hdrs, end_stream=end))
        self.headers_sent = True
        await self._conn._flush()

    async def send(self, data: bytes, end: bool = False) -> None:
        await self._conn._send_data(self.stream_id, data, end)

    async def simple(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
                     headers: list[tuple[str, str]] = ()) -> None:
        hdrs = [("content-type", content_type), ("content-length", str(len(body))), *headers]
        await self.start(status, hdrs, end=not body)
        if body:
            await self.send(body, end=True)


Handler = Callable[[Request, Response, "H2Server"], Awaitable[None]]


class H2Server:
    def __init__(self, stream: trio.abc.Stream, handler: Handler, name: str, context: object = None,
                 *, body_budget: BodyBudget | None = None, cpu: trio.CapacityLimiter | None = None) -> None:
        self.stream = stream
        self.body_budget = body_budget  # shared with the other connections of the listener
        # Parsing a chunk of frames is a few ms of CPU in h2; sharing a limiter between
        # connections keeps a burst of them from delaying everything else (see limits.HEAVY_STEPS).
        self.cpu = cpu or trio.CapacityLimiter(1)
        self.handler = handler
        self.name = name
        self.context = context  # per-connection data for handlers (e.g. the machine key)
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self._h2 = h2.connection.H2Connection(cfg)
        self._requests: dict[int, Request] = {}  # headers in, body not complete
        self._pending_body = 0  # bytes buffered in self._requests
        self._scopes: dict[int, trio.CancelScope] = {}  # running handlers
        self._gone: set[int] = set()  # streams with a running handler that the client reset
        self._window: dict[int, trio.Event] = {}
        self._resets = TokenBuckets(*RESET_RATE, max_keys=1, clock=trio.current_time)
        self._streams = TokenBuckets(*STREAM_RATE, max_keys=1, clock=trio.current_time)
        self._served_one = False
        self._ending = False  # no new frames: the reader stopped (GOAWAY, EOF, error)
        self._closed = False  # the transport is gone
        # The writer's bookkeeping: a flush asks for generation N and waits until it is sent.
        self._asked = 0
        self._sent = 0
        self._wake_writer = trio.Event()
        self._wrote = trio.Event()
        self._nursery: trio.Nursery | None = None

    # --- writing (handlers and the reader queue frames; the writer task sends them) ---------

    def _do(self, stream_id: int, fn: Callable[[h2.connection.H2Connection], object]) -> None:
        """Queue frames for ``stream_id`` in h2; StreamGone when that stream cannot take them."""
        if self._closed or self._ending or stream_id in self._gone:
            raise StreamGone("stream reset" if stream_id in self._gone else "connection closed")
        try:
            fn(self._h2)
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError,
                h2.exceptions.StreamIDTooLowError) as e:
            raise StreamGone(str(e)) from None

    async def _flush(self) -> None:
        """Hand what h2 has queued to the writer and wait until it is on the wire. Safe to
        cancel: the bytes stay with the writer, which sends them whole."""
        self._asked += 1
        want = self._asked
        self._wake_writer.set()
        while self._sent < want:
            if self._closed:
                raise StreamGone("connection closed")
            await self._wrote.wait()

    async def _writer(self) -> None:
        try:
            while True:
                await self._wake_writer.wait()
                self._wake_writer = trio.Event()
                upto = self._asked
                data = self._h2.data_to_send()
                if data:
                    with trio.fail_after(WRITE_TIMEOUT):
                        await self.stream.send_all(data)
                self._sent = upto
                self._wrote.set()
                self._wrote = trio.Event()
        except trio.TooSlowError:
            throttled.warning("h2-write-stalled", "%s: peer took nothing for %ds, closing", self.name,
                              WRITE_TIMEOUT)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            log.debug("%s: write failed: %r", self.name, e)
        finally:
            # The transport is gone: wake every waiter and end the connection.
            self._closed = True
            self._wrote.set()
            self._wake_windows(0)
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()

    async def _send_data(self, stream_id: int, data: bytes, end: bool) -> None:
        view = memoryview(data)
        while True:
            if self._closed or self._ending or stream_id in self._gone:
                raise StreamGone("connection closed" if stream_id not in self._gone else "stream reset")
            try:
                window = self._h2.local_flow_control_window(stream_id)
            except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError) as e:
                raise StreamGone(str(e)) from None
            n = min(len(view), window, self._h2.max_outbound_frame_size)
            if n == 0 and len(view) > 0:
                ev = self._window.setdefault(stream_id, trio.Event())
                await ev.wait()
                continue
            chunk, view = view[:n], view[n:]
            last = end and len(view) == 0
            self._do(stream_id, lambda c: c.send_data(stream_id, bytes(chunk), end_stream=last))
            await self._flush()
            if len(view) == 0:
                return

    def _wake_windows(self, stream_id: int) -> None:
        ids = list(self._window) if stream_id == 0 else [stream_id]
        for i in ids:
            ev = self._window.pop(i, None)
            if ev is not None:  # (a trio.Event has no truth value: `if ev` raises)
                ev.set()

    # --- the connection ------------------------------------------------------------------

    async def serve(self) -> None:
        """Run until the client goes away. Closes nothing: the caller owns ``stream``."""
        self._h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
            },
        )
        self._h2.initiate_connection()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._writer)
                await self._flush()
                await self._read_loop(nursery)
                self._ending = True
                for scope in self._scopes.values():
                    scope.cancel()
                with trio.move_on_after(1):
                    await self._flush()  # a GOAWAY, if one is queued
                nursery.cancel_scope.cancel()
        except* StreamGone:
            pass
        finally:
            for sid in list(self._requests):
                self._forget_request(sid)
            self._closed = True
            self._wake_windows(0)

    def _read_deadline(self, started: float) -> tuple[float, str]:
        """When the reader must give up waiting for input, and why."""
        if self._requests:
            return min(r.deadline for r in self._requests.values()), "request not complete"
        if not self._served_one:
            return started + FIRST_REQUEST_TIMEOUT, "no request"
        if not self._scopes:
            return trio.current_time() + IDLE_TIMEOUT, "idle"
        return math.inf, ""

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        started = trio.current_time()
        while True:
            deadline, why = self._read_deadline(started)
            with trio.move_on_at(deadline) as timer:
                data = await self.stream.receive_some(READ_SIZE)
            if timer.cancelled_caught:
                self._on_deadline(why)
                if why == "request not complete":
                    await self._flush()  # the resets
                    continue
                return
            if not data:
                cut = self._truncation()
                if cut:
                    throttled.warning("h2-truncated", "%s: connection closed with truncated HTTP/2 (%s)",
                                      self.name, cut)
                return
            async with self.cpu:
                try:
                    events = self._h2.receive_data(data)
                except h2.exceptions.ProtocolError as e:
                    throttled.warning("h2-protocol", "%s: HTTP/2 protocol error: %s", self.name, e)
                    return  # h2 queued a GOAWAY; serve() flushes it
                for ev in events:
                    if not self._on_event(ev, nursery):
                        return
            await self._flush()

    def _on_deadline(self, why: str) -> None:
        if why == "request not complete":
            now = trio.current_time()
            for sid in [s for s, r in self._requests.items() if r.deadline <= now]:
                throttled.warning("h2-slow-request", "%s: request on stream %d not complete after %ds, "
                                  "resetting it", self.name, sid, REQUEST_TIMEOUT)
                self._forget_request(sid)
                self._reset(sid, h2.errors.ErrorCodes.CANCEL)
            return
        if why == "no request":
            throttled.warning("h2-no-request", "%s: no request within %ds, closing", self.name,
                              FIRST_REQUEST_TIMEOUT)
        else:
            log.info("%s: idle for %ds, closing", self.name, IDLE_TIMEOUT)
        self._h2.close_connection()

    def _truncation(self) -> str | None:
        """At end of input: what was left half-received, if anything (a clean close leaves
        nothing). Reads h2's frame buffer, which has no public accessor for it."""
        buf = getattr(self._h2, "incoming_buffer", None)
        preface_left = getattr(buf, "_preamble_len", 0)
        if 0 < preface_left < len(H2_PREFACE):
            return "inside the connection preface"
        if len(getattr(buf, "_data", b"")) or getattr(buf, "_headers_buffer", None):
            return "inside a frame"
        if self._requests:
            return "request on stream %d incomplete" % min(self._requests)
        return None

    def _reset(self, stream_id: int, code: h2.errors.ErrorCodes) -> None:
        try:
            self._h2.reset_stream(stream_id, code)
        except h2.exceptions.ProtocolError:
            pass  # already closed: nothing to reset

    def _forget_request(self, stream_id: int) -> None:
        req = self._requests.pop(stream_id, None)
        if req is not None:
            self._pending_body -= len(req.body)
            if self.body_budget is not None:
                self.body_budget.give(len(req.body))

    def _on_event(self, ev: h2.events.Event, nursery: trio.Nursery) -> bool:
        """Act on one h2 event; False when the connection is over."""
        if isinstance(ev, h2.events.RequestReceived):
            if not self._streams.allow("streams"):
                throttled.warning("h2-stream-flood", "%s: too many new streams, closing the connection",
                                  self.name)
                self._h2.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                return False
            hdrs = list(ev.headers)
            pseudo = dict((k, v) for k, v in hdrs if k.startswith(":"))
            self._requests[ev.stream_id] = Request(
                ev.stream_id, pseudo.get(":method", ""), pseudo.get(":path", ""),
                [(k, v) for k, v in hdrs if not k.startswith(":")],
                deadline=trio.current_time() + REQUEST_TIMEOUT,
            )
            if ev.stream_ended:
                self._dispatch(ev.stream_id, nursery)
        elif isinstance(ev, h2.events.DataReceived):
            self._h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            req = self._requests.get(ev.stream_id)
            if req is None:
                return True
            n = len(ev.data)
            if len(req.body) + n > MAX_REQUEST_BODY or self._pending_body + n > MAX_PENDING_BODY:
                throttled.warning("h2-body-too-large", "%s: request body over %d bytes on stream %d "
                                  "(%d buffered on the connection)", self.name, MAX_REQUEST_BODY,
                                  ev.stream_id, self._pending_body + n)
                self._forget_request(ev.stream_id)
                self._reset(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                return True
            if self.body_budget is not None and not self.body_budget.take(n):  # it logs why
                self._forget_request(ev.stream_id)
                self._reset(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                return True
            req.body += ev.data
            self._pending_body += n
            if ev.stream_ended:
                self._dispatch(ev.stream_id, nursery)
        elif isinstance(ev, h2.events.StreamEnded):
            self._dispatch(ev.stream_id, nursery)
        elif isinstance(ev, h2.events.StreamReset):
            self._forget_request(ev.stream_id)
            scope = self._scopes.get(ev.stream_id)
            if scope:
                self._gone.add(ev.stream_id)
                scope.cancel()
            self._wake_windows(ev.stream_id)
            if ev.remote_reset and not self._resets.allow("resets"):
                throttled.warning("h2-rapid-reset", "%s: too many stream resets, closing the connection",
                                  self.name)
                self._h2.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                return False
        elif isinstance(ev, h2.events.WindowUpdated):
            self._wake_windows(ev.stream_id)
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self._wake_windows(0)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            return False
        return True

    def _dispatch(self, stream_id: int, nursery: trio.Nursery) -> None:
        req = self._requests.get(stream_id)
        if req is None:
            return
        self._forget_request(stream_id)
        if len(self._scopes) >= MAX_HANDLERS:
            throttled.warning("h2-too-many-handlers", "%s: %d requests still running, refusing stream %d",
                              self.name, len(self._scopes), stream_id)
            self._reset(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        self._served_one = True
        scope = trio.CancelScope()
        self._scopes[stream_id] = scope
        nursery.start_soon(self._run_handler, req, scope)

    async def _run_handler(self, req: Request, scope: trio.CancelScope) -> None:
        resp = Response(self, req.stream_id)
        try:
            with scope:
                await self.handler(req, resp, self)
        except StreamGone:
            pass
        except Exception:
            log.exception("%s: handler for %s %s failed", self.name, req.method, req.path)
            if not resp.headers_sent:
                try:
                    await resp.simple(500, b"internal error\n")
                except StreamGone:
                    pass
        finally:
            self._scopes.pop(req.stream_id, None)
            self._gone.discard(req.stream_id)
            self._window.pop(req.stream_id, None)
