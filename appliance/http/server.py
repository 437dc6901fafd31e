"""A small HTTP/1.1 server (h11) for trio streams: plain routes and upgrade hand-offs.

Every connection is one task; a fault ends that connection only, with one log line naming the
peer and the reason (rate-limited per reason, so a flood cannot fill the disk). Used by the
public front door and the admin socket.

Each phase has a deadline for the whole phase, not per read, so a peer that trickles one byte
at a time still runs out of time: the request head, the body, the gap between requests.
"""

from __future__ import annotations

import contextvars
import itertools
import pwd
import socket
import struct
from contextlib import aclosing
from dataclasses import dataclass
from http import HTTPStatus
import logging
from typing import AsyncIterator, Awaitable, Callable

import h11
import trio

from derp.errors import DerpError
from derp.transport import peer_address

from ..logthrottle import LogThrottle
from ..noise.errors import NoiseError
from .limits import BodyBudget, source_of_stream

log = logging.getLogger(__name__)
throttled = LogThrottle(log)

HEAD_TIMEOUT = 10.0  # a client gets this long to send a whole request head
BODY_TIMEOUT = 30.0  # and this long for the whole body (1 MiB at 35 KiB/s)
KEEPALIVE_IDLE = 30.0  # between requests on a kept-alive connection
MAX_HEAD = 16 * 1024  # request line and headers; a larger head is refused
# The admin socket's limit: room for the largest policy (MAX_POLICY_BYTES) as a JSON string.
# The public front door takes less (FrontDoor.max_body).
MAX_BODY = 4 << 20
# A streamed answer's client must take each chunk within this long (a stalled reader of an
# event stream or an export is let go, not waited for).
STREAM_WRITE_TIMEOUT = 30.0

_ids = itertools.count(1)

# The peer's address (no port; "local" on the admin socket) for the connection this task
# serves: routes that count or limit per source (API-key attempts) read it.
peer_host: contextvars.ContextVar[str] = contextvars.ContextVar("peer_host", default="local")
# On a unix socket (the admin socket): the peer process's user as (uid, name), from the kernel
# (SO_PEERCRED), so the audit log says which local account ran the CLI.
peer_user: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("peer_user", default=None)


def unix_peer_user(stream: trio.abc.Stream) -> tuple[str, str] | None:
    sock = getattr(stream, "socket", None)
    if sock is None or sock.family != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except OSError:
        return None
    try:
        return str(uid), pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid), ""

Answer = tuple[int, list[tuple[str, str]], bytes]


@dataclass
class Streamed:
    """An answer whose body is made while it is sent (server-sent events, an export): sent
    chunked, and the connection closed after it. ``body`` is closed if the client leaves."""

    status: int
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]


PlainRoute = Callable[[h11.Request, bytes], Awaitable[Answer | Streamed | None]]
# Takes over the connection after the request head: (stream, request, bytes read past the head).
UpgradeRoute = Callable[[trio.abc.Stream, h11.Request, bytes], Awaitable[None]]


def peer_name(stream: trio.abc.Stream) -> str:
    """``ip:port`` of the peer for log lines; "local" for the admin socket."""
    addr = peer_address(stream)
    return f"{addr[0]}:{addr[1]}" if addr else "local"


def header(req: h11.Request, name: bytes) -> str | None:
    for k, v in req.headers:
        if k == name:
            return v.decode("latin-1")
    return None


def text(status: int, body: str) -> Answer:
    return status, [("content-type", "text/plain; charset=utf-8")], body.encode()


class HTTPServer:
    max_body = MAX_BODY

    def __init__(self, label: str = "http", body_budget: BodyBudget | None = None) -> None:
        self.label = label
        self.body_budget = body_budget  # shared by every connection; None: only max_body
        self.plain_routes: list[PlainRoute] = []  # tried in order; the first answer wins
        self.upgrade_routes: dict[str, UpgradeRoute] = {}  # path → takes the stream

    async def handle(self, stream: trio.abc.Stream) -> None:
        """Serve one accepted connection; closes it. Never raises (but Cancelled)."""
        peer = peer_name(stream)
        name = f"{self.label}-{next(_ids)}[{peer}]"
        addr = peer_address(stream)
        peer_host.set(addr[0] if addr else "local")
        peer_user.set(unix_peer_user(stream))
        # except*: an upgraded connection (Noise + HTTP/2) runs in a nursery, so its faults
        # arrive wrapped in an exception group; a bare exception is matched the same way.
        try:
            await self._serve(stream, name, source_of_stream(stream))
        except* (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as g:
            log.debug("%s: connection ended: %r", name, g.exceptions[0])
        except* h11.ProtocolError as g:
            throttled.warning("malformed-http", "%s: malformed HTTP: %s", name, g.exceptions[0])
        except* NoiseError as g:
            throttled.warning("noise-error", "%s: Noise protocol error: %s", name, g.exceptions[0])
        except* DerpError as g:  # WebSocket framing errors (the codec is shared with DERP)
            throttled.warning("websocket-error", "%s: WebSocket protocol error: %s", name, g.exceptions[0])
        except* OSError as g:  # TLS failures and resets surface as OSError subclasses
            log.debug("%s: connection error: %r", name, g.exceptions[0])
        except* Exception as g:
            log.error("%s: connection failed", name, exc_info=g)
        finally:
            with trio.move_on_after(1, shield=True):
                await stream.aclose()

    async def upgrade(self, stream: trio.abc.Stream, conn: h11.Connection, req: h11.Request, path: str,
                      name: str, source: str) -> bool:
        """Hook for subclasses: take over the connection for ``req``; True if taken."""
        return False

    async def answer(self, req: h11.Request, path: str, body: bytes, source: str) -> Answer | Streamed:
        """The answer to a plain request; ``source`` is the peer's rate-limiting source."""
        for route in self.plain_routes:
            got = await route(req, body)
            if got is not None:
                return got
        return text(404, "not found\n")

    async def read_event(self, stream: trio.abc.Stream, conn: h11.Connection):
        while True:
            ev = conn.next_event()
            if ev is not h11.NEED_DATA:
                return ev
            conn.receive_data(await stream.receive_some(65536))

    async def _serve(self, stream: trio.abc.Stream, name: str, source: str) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        first = True
        while True:
            try:
                with trio.fail_after(HEAD_TIMEOUT if first else KEEPALIVE_IDLE):
                    ev = await self.read_event(stream, conn)
            except h11.RemoteProtocolError as e:
                throttled.warning("malformed-http", "%s: malformed HTTP: %s", name, e)
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    status = e.error_status_hint  # 400, 431 for a huge head, 501 for a coding
                    await self.send_simple(stream, conn, *text(status, HTTPStatus(status).phrase.lower() + "\n"))
                return
            first = False
            if isinstance(ev, h11.ConnectionClosed):
                return
            if not isinstance(ev, h11.Request):
                return
            if header(ev, b"transfer-encoding") is not None and header(ev, b"content-length") is not None:
                # RFC 9112 6.3: a request with both may be a smuggling attempt through a proxy
                # that reads the other one; refuse it and close, since its end is unknowable.
                throttled.warning("cl-and-te", "%s: request with both Content-Length and "
                                  "Transfer-Encoding refused", name)
                await self.send_simple(stream, conn, 400, [],
                                       b"Content-Length and Transfer-Encoding together are not allowed\n")
                return
            path = ev.target.decode("latin-1").split("?", 1)[0]
            if header(ev, b"upgrade") is not None and path in self.upgrade_routes:
                with trio.fail_after(HEAD_TIMEOUT):
                    end = await self.read_event(stream, conn)
                if not isinstance(end, h11.EndOfMessage):
                    await self.send_simple(stream, conn, *text(400, "upgrade requests have no body\n"))
                    return
                await self.upgrade_routes[path](stream, ev, conn.trailing_data[0])
                return
            if await self.upgrade(stream, conn, ev, path, name, source):
                return
            declared = header(ev, b"content-length")
            if declared is not None and declared.isdigit():
                if int(declared) > self.max_body:
                    await self.send_simple(stream, conn, *text(413, "request too large\n"))
                    return
                if self.body_budget is not None and not self.body_budget.fits(int(declared)):
                    # Refused before reading a byte of it: a flood of large bodies then costs
                    # the kernel, not our CPU.
                    await self.send_simple(stream, conn, *text(503, "server busy, retry later\n"))
                    return
            body = bytearray()
            try:
                with trio.move_on_after(BODY_TIMEOUT) as body_deadline:
                    while True:
                        part = await self.read_event(stream, conn)
                        if isinstance(part, h11.Data):
                            if len(body) + len(part.data) > self.max_body:
                                await self.send_simple(stream, conn, *text(413, "request too large\n"))
                                return
                            if self.body_budget is not None and not self.body_budget.take(len(part.data)):
                                await self.send_simple(stream, conn, *text(503, "server busy, retry later\n"))
                                return
                            body += part.data
                        elif isinstance(part, h11.EndOfMessage):
                            break
                        else:
                            return
            finally:
                if self.body_budget is not None:
                    self.body_budget.give(len(body))
            if body_deadline.cancelled_caught:
                throttled.warning("slow-body", "%s: request body not complete after %ds, closing",
                                  name, BODY_TIMEOUT)
                with trio.move_on_after(1):
                    await self.send_simple(stream, conn, *text(408, "request body too slow\n"))
                return
            got = await self.answer(ev, path, bytes(body), source)
            if isinstance(got, Streamed):
                await self.send_streamed(stream, conn, got, head=ev.method == b"HEAD")
                return
            await self.send_simple(stream, conn, *got, head=ev.method == b"HEAD")
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def send_streamed(self, stream: trio.abc.Stream, conn: h11.Connection, answer: Streamed, *,
                            head: bool = False) -> None:
        """Send ``answer``'s head, then each chunk as it is made; ends the connection."""
        hdrs = [*answer.headers, ("connection", "close")]
        async with aclosing(answer.body) as chunks:  # type: ignore[type-var]
            with trio.fail_after(STREAM_WRITE_TIMEOUT):
                await stream.send_all(conn.send(h11.Response(status_code=answer.status, headers=hdrs)))
            if head:
                return
            async for chunk in chunks:
                if chunk:
                    with trio.fail_after(STREAM_WRITE_TIMEOUT):
                        await stream.send_all(conn.send(h11.Data(data=chunk)))
            with trio.fail_after(STREAM_WRITE_TIMEOUT):
                await stream.send_all(conn.send(h11.EndOfMessage()))

    async def send_simple(
        self, stream: trio.abc.Stream, conn: h11.Connection, status: int,
        headers: list[tuple[str, str]], body: bytes, *, head: bool = False,
    ) -> None:
        """Send one whole answer. ``head``: the request was a HEAD, so the body's length is
        announced but the body is not sent (h11 refuses a body after a HEAD)."""
        hdrs = list(headers)
        if conn.their_state not in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED):
            # The request is not read to its end: the next bytes would be taken for a new
            # request, so this answer must end the connection.
            hdrs.append(("connection", "close"))
        if not any(k.lower() == "content-type" for k, _ in hdrs):
            hdrs.append(("content-type", "text/plain; charset=utf-8"))
        hdrs.append(("content-length", str(len(body))))
        data = conn.send(h11.Response(status_code=status, headers=hdrs))
        if body and not head:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)
