"""The standalone server's own small HTTP/1.1 front door (h11), plain or TLS.

Routes ``/derp`` to :meth:`DerpServer.handle_upgrade`, the side endpoints to
:meth:`DerpServer.handle_plain_http`, ``/`` to a landing page, anything else to 404. The
appliance has its own front door and does not use this module.
"""

from __future__ import annotations

import logging
import ssl
from functools import partial
from urllib.parse import urlsplit

import h11
import trio

from .server import DerpServer
from .tls import TLSStream, relay_context
from .transport import RECV_SIZE

log = logging.getLogger(__name__)

# Deadline for the client to send a complete request head (slowloris stops here), and for the
# TLS handshake before it.
HEAD_TIMEOUT = 10.0
# Plain requests served on one keep-alive connection before we close it.
MAX_REQUESTS_PER_CONN = 100
# h11 buffers the request head; 16 KiB is plenty for any DERP client.
MAX_HEAD = 16 << 10
LANDING = (
    b"<html><body><h1>DERP</h1><p>This is a Tailscale DERP relay (trioscale).</p>"
    b"</body></html>\n"
)


async def handle_connection(server: DerpServer, stream: trio.abc.Stream) -> None:
    """Serve one accepted connection. Owns ``stream`` and closes it before returning."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    handed_off = False
    try:
        for _ in range(MAX_REQUESTS_PER_CONN):
            with trio.fail_after(HEAD_TIMEOUT):
                req = await _next_request(conn, stream)
            if req is None:
                return
            method = req.method.decode("ascii", "replace")
            target = req.target.decode("ascii", "replace")
            headers = [(k, v) for k, v in req.headers]
            if urlsplit(target).path == "/derp":
                # The upgrade proposal pauses h11; bytes past the head are the client's (a
                # fast-start ClientInfo). A non-upgrade request gets its 426 from handle_upgrade.
                leftover, _ = conn.trailing_data
                handed_off = True
                await server.handle_upgrade(stream, method, target, headers, bytes(leftover))
                return
            answer = server.handle_plain_http(method, target, headers)
            if answer is None:
                if urlsplit(target).path == "/":
                    answer = (200, [(b"Content-Type", b"text/html; charset=utf-8")], LANDING)
                else:
                    answer = (404, [(b"Content-Type", b"text/plain")], b"not found\n")
            status, hdrs, body = answer
            await _respond(conn, stream, method, status, hdrs, body)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return
    except h11.RemoteProtocolError as exc:
        log.debug("http: bad request: %s", exc)
        try:
            with trio.fail_after(2):
                await _respond(conn, stream, "GET", exc.error_status_hint, [], b"bad request\n")
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError,
                trio.TooSlowError, OSError):
            pass
    except trio.TooSlowError:
        log.debug("http: request head timeout")
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        log.debug("http: connection lost: %r", exc)
    except Exception:
        # Our fault, but one connection's: log it and keep serving the others.
        log.exception("http: unexpected error")
    finally:
        if not handed_off:
            with trio.move_on_after(1, shield=True):
                try:
                    await stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass


async def _next_request(conn: h11.Connection, stream: trio.abc.Stream) -> h11.Request | None:
    req = None
    while True:
        ev = conn.next_event()
        if ev is h11.NEED_DATA:
            data = await stream.receive_some(RECV_SIZE)
            conn.receive_data(data)
            continue
        if isinstance(ev, h11.Request):
            req = ev
            continue
        if isinstance(ev, h11.Data):
            continue  # we take no request bodies; drain them
        if isinstance(ev, h11.EndOfMessage) or ev is h11.PAUSED:
            return req
        if isinstance(ev, h11.ConnectionClosed):
            return None


async def _respond(
    conn: h11.Connection, stream: trio.abc.Stream, method: str, status: int,
    headers: list[tuple[bytes, bytes]], body: bytes,
) -> None:
    hdrs = list(headers)
    hdrs.append((b"Content-Length", b"%d" % len(body)))
    hdrs.append((b"Server", b"trioscale-derp"))
    out = conn.send(h11.Response(status_code=status, headers=hdrs)) or b""
    if body and method.upper() != "HEAD":
        out += conn.send(h11.Data(data=body)) or b""
    out += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(out)


async def serve_http(
    server: DerpServer,
    host: str | None,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on TCP ``host``:``port`` (TLS when ``ssl_context``) and serve until cancelled.

    ``task_status.started(listeners)`` once bound (port 0 picks a free port; read it from
    ``listeners[0].socket.getsockname()``). Connections run in a nursery owned here.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    handler = partial(handle_connection, server)
    if ssl_context is not None:
        handler = partial(handle_tls_connection, server, relay_context(ssl_context))
    for l in listeners:
        log.info("derp: listening on %s%s", l.socket.getsockname(),
                 " (TLS)" if ssl_context else " (plain HTTP)")
    task_status.started(listeners)
    await trio.serve_listeners(handler, listeners)


async def handle_tls_connection(server: DerpServer, context: ssl.SSLContext,
                                tcp: trio.SocketStream, prefix: bytes = b"") -> None:
    """Serve one accepted TCP connection over TLS (:class:`~derp.tls.TLSStream`, the relay's
    batched TLS). ``prefix``: bytes already read from ``tcp``. Owns and closes ``tcp``."""
    try:
        with trio.fail_after(HEAD_TIMEOUT):
            stream = await TLSStream.accept(tcp, context, prefix=prefix)
    except (trio.BrokenResourceError, trio.TooSlowError) as exc:
        log.debug("http: TLS handshake failed: %r", exc)
        with trio.move_on_after(1, shield=True):
            await trio.aclose_forcefully(tcp)
        return
    await handle_connection(server, stream)
