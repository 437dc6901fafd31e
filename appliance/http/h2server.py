"""An HTTP/2 server (h2 library) over any trio Stream: here, the Noise stream.

One reader task owns the connection's input; each complete request runs as a handler task in
the connection's nursery. All writes go through ``_flush`` under one lock. Response bodies wait
for the peer's flow-control window, so a client that stops reading stalls only its own stream.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

log = logging.getLogger(__name__)

# A register or map request is a few KiB of JSON; a larger body is an attack or a bug.
MAX_REQUEST_BODY = 1 << 20
MAX_CONCURRENT_STREAMS = 64
# With no open stream, a connection that says nothing for this long is closed.
IDLE_TIMEOUT = 300.0
READ_SIZE = 65536
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass
class Request:
    stream_id: int
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)

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
        self._conn._do(lambda c: c.send_headers(self.stream_id, hdrs, end_stream=end))
        self.headers_sent = True
        await self._conn._flush()

    async def send(self, data: bytes, end: bool = False) -> None:
        await self._conn._send_data(self.stream_id, data, end)

    async def simple(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        await self.start(status, [("content-type", content_type), ("content-length", str(len(body)))], end=not body)
        if body:
            await self.send(body, end=True)


Handler = Callable[[Request, Response, "H2Server"], Awaitable[None]]


class H2Server:
    def __init__(self, stream: trio.abc.Stream, handler: Handler, name: str, context: object = None) -> None:
        self.stream = stream
        self.handler = handler
        self.name = name
        self.context = context  # per-connection data for handlers (e.g. the machine key)
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self._h2 = h2.connection.H2Connection(cfg)
        self._lock = trio.Lock()
        self._requests: dict[int, Request] = {}
        self._scopes: dict[int, trio.CancelScope] = {}
        self._window: dict[int, trio.Event] = {}
        self._closed = False

    def _do(self, fn: Callable[[h2.connection.H2Connection], object]) -> None:
        try:
            fn(self._h2)
        except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError) as e:
            raise StreamGone(str(e)) from None
        except h2.exceptions.ProtocolError as e:
            if self._closed:
                raise StreamGone(str(e)) from None
            raise

    async def _flush(self) -> None:
        async with self._lock:
            data = self._h2.data_to_send()
            if data:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                    self._closed = True
                    raise StreamGone("connection closed") from e

    async def _send_data(self, stream_id: int, data: bytes, end: bool) -> None:
        view = memoryview(data)
        while True:
            if self._closed:
                raise StreamGone("connection closed")
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
            self._do(lambda c: c.send_data(stream_id, bytes(chunk), end_stream=last))
            await self._flush()
            if len(view) == 0:
                return

    def _wake_windows(self, stream_id: int) -> None:
        ids = list(self._window) if stream_id == 0 else [stream_id]
        for i in ids:
            ev = self._window.pop(i, None)
            if ev:
                ev.set()

    async def serve(self) -> None:
        """Run until the client goes away. Closes nothing: the caller owns ``stream``."""
        self._h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
            },
        )
        self._h2.initiate_connection()
        await self._flush()
        try:
            async with trio.open_nursery() as nursery:
                await self._read_loop(nursery)
                nursery.cancel_scope.cancel()
        finally:
            self._closed = True
            self._wake_windows(0)

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        while True:
            timeout = IDLE_TIMEOUT if not self._scopes else float("inf")
            with trio.move_on_after(timeout) as idle:
                data = await self.stream.receive_some(READ_SIZE)
            if idle.cancelled_caught:
                log.info("%s: idle for %ds, closing", self.name, IDLE_TIMEOUT)
                self._h2.close_connection()
                await self._flush()
                return
            if not data:
                cut = self._truncation()
                if cut:
                    log.warning("%s: connection closed with truncated HTTP/2 (%s)", self.name, cut)
                return
            try:
                events = self._h2.receive_data(data)
            except h2.exceptions.ProtocolError as e:
                log.warning("%s: HTTP/2 protocol error: %s", self.name, e)
                try:
                    await self._flush()  # h2 queued a GOAWAY
                except StreamGone:
                    pass
                return
            for ev in events:
                self._on_event(ev, nursery)
            await self._flush()

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

    def _on_event(self, ev: h2.events.Event, nursery: trio.Nursery) -> None:
        if isinstance(ev, h2.events.RequestReceived):
            hdrs = list(ev.headers)
            pseudo = dict((k, v) for k, v in hdrs if k.startswith(":"))
            self._requests[ev.stream_id] = Request(
                ev.stream_id, pseudo.get(":method", ""), pseudo.get(":path", ""),
                [(k, v) for k, v in hdrs if not k.startswith(":")],
            )
            if ev.stream_ended:
                self._dispatch(ev.stream_id, nursery)
        elif isinstance(ev, h2.events.DataReceived):
            self._h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            req = self._requests.get(ev.stream_id)
            if req is None:
                return
            req.body += ev.data
            if len(req.body) > MAX_REQUEST_BODY:
                log.warning("%s: request body over %d bytes on stream %d", self.name, MAX_REQUEST_BODY, ev.stream_id)
                del self._requests[ev.stream_id]
                self._h2.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                return
            if ev.stream_ended:
                self._dispatch(ev.stream_id, nursery)
        elif isinstance(ev, h2.events.StreamEnded):
            self._dispatch(ev.stream_id, nursery)
        elif isinstance(ev, h2.events.StreamReset):
            self._requests.pop(ev.stream_id, None)
            scope = self._scopes.get(ev.stream_id)
            if scope:
                scope.cancel()
            self._wake_windows(ev.stream_id)
        elif isinstance(ev, h2.events.WindowUpdated):
            self._wake_windows(ev.stream_id)
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self._wake_windows(0)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self._closed = True
            for scope in self._scopes.values():
                scope.cancel()

    def _dispatch(self, stream_id: int, nursery: trio.Nursery) -> None:
        req = self._requests.pop(stream_id, None)
        if req is None:
            return
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
            if not resp.headers_sent and not self._closed:
                try:
                    await resp.simple(500, b"internal error\n")
                except StreamGone:
                    pass
        finally:
            self._scopes.pop(req.stream_id, None)
            self._window.pop(req.stream_id, None)
            if scope.cancelled_caught and not self._closed:
                # the client reset the stream; nothing more to say on it
                pass
