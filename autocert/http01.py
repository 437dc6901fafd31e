"""The port-80 server: HTTP-01 challenge answers, and a redirect to https for the rest."""

from __future__ import annotations

import logging
import re
from typing import Any

import h11
import trio

log = logging.getLogger(__name__)

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
# A request on port 80 is one short line of headers; anything slower is a stuck or hostile
# peer and must not hold a task.
REQUEST_TIMEOUT = 10.0
# Bounds the request head h11 will buffer (it protects against endless headers).
MAX_REQUEST_HEAD = 8192
# RFC 8555 8.3: tokens are base64url; refusing anything else keeps odd paths out of lookups.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
# Hostnames allowed in the Location we build from a Host header (no userinfo, no path).
_HOST_RE = re.compile(r"^[A-Za-z0-9.-]{1,253}$")


def response_for(source: Any, method: str, target: str, host_header: str | None,
                 https_port: int = 443) -> tuple[int, list[tuple[str, str]], bytes]:
    """Decide the answer to one request: (status, headers, body). Pure, so it is unit-tested.

    Challenge paths get the key authorization or 404; everything else a 301 to https.
    """
    path = target.split("?", 1)[0]
    if path.startswith(CHALLENGE_PREFIX):
        token = path[len(CHALLENGE_PREFIX):]
        body = source.http01_response(token) if _TOKEN_RE.match(token) else None
        if body is None or method not in ("GET", "HEAD"):
            return 404, [("Content-Type", "text/plain")], b"not found\n"
        return 200, [("Content-Type", "text/plain")], body if method == "GET" else b""
    host = getattr(source, "hostname", None)
    if host is None and host_header:
        candidate = host_header.rsplit(":", 1)[0] if not host_header.startswith("[") else ""
        host = candidate if _HOST_RE.match(candidate) else None
    if host is None:
        return 400, [("Content-Type", "text/plain")], b"use https\n"
    if not target.startswith("/"):
        target = "/"  # absolute-form or asterisk-form: do not echo it into Location
    authority = host if https_port == 443 else f"{host}:{https_port}"
    return 301, [("Location", f"https://{authority}{target}"),
                 ("Content-Type", "text/plain")], b"moved to https\n"


async def handle_http01_connection(source: Any, stream: trio.abc.Stream, *,
                                   https_port: int = 443) -> None:
    """Answer one request on stream, then close it. Never raises except Cancelled."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
    try:
        with trio.move_on_after(REQUEST_TIMEOUT):
            request = None
            while request is None:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(4096)
                    conn.receive_data(data)
                    if not data:
                        return
                elif isinstance(event, h11.Request):
                    request = event
                else:
                    return
            host = None
            for name, value in request.headers:
                if name == b"host":
                    host = value.decode("latin-1")
            status, headers, body = response_for(
                source, request.method.decode("ascii", "replace"),
                request.target.decode("latin-1"), host, https_port)
            # One request per connection: a port-80 client needs no more, and it keeps the
            # handler free of keep-alive state.
            headers = headers + [("Content-Length", str(len(body))), ("Connection", "close")]
            out = conn.send(h11.Response(status_code=status, headers=headers))
            if request.method != b"HEAD":
                out += conn.send(h11.Data(data=body))
            out += conn.send(h11.EndOfMessage())
            await stream.send_all(out)
    except h11.RemoteProtocolError as exc:
        log.debug("http01: bad request: %s", exc)
        try:
            with trio.move_on_after(1):
                await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                      b"Connection: close\r\n\r\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        log.debug("http01: connection error: %s", exc)
    finally:
        await trio.aclose_forcefully(stream)


async def serve_http01(manager: Any, host: str | None, port: int, *, https_port: int = 443,
                       task_status: trio.TaskStatus[list[trio.SocketListener]]
                       = trio.TASK_STATUS_IGNORED) -> None:
    """Serve port 80 (Headscale's ``tls_letsencrypt_listen``) until cancelled.

    Args:
        manager: anything with ``http01_response(token)`` (CertManager, StaticCertificate);
            its ``hostname``, when present, is where redirects point.
        host: address to bind, None or "" for all.
        port: TCP port; 0 picks a free one (see the listeners passed to task_status).
        https_port: port written into redirects when it is not 443.

    ``task_status.started()`` receives the bound listeners.
    """
    listeners = await trio.open_tcp_listeners(port, host=host or None)

    async def handler(stream: trio.SocketStream) -> None:
        await handle_http01_connection(manager, stream, https_port=https_port)

    await trio.serve_listeners(handler, listeners, task_status=task_status)
