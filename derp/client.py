"""A small Trio DERP client: the mesh dialer of the server, and the peer in tests and benchmarks.

It speaks the same codec as the server (frames.py). It is not a full Tailscale client: no
reconnect logic, no token bucket; callers own the retries.
"""

from __future__ import annotations

import base64
import os
import ssl
from typing import Any
from urllib.parse import urlsplit

import trio

from . import frames as fr
from .errors import ConnectionClosed, HandshakeError, ProtocolError
from .tls import TLSStream
from .transport import RECV_SIZE, WebSocketStream, read_frame
from .websocket import accept_key

# An HTTP response head longer than this is not a DERP server talking.
MAX_RESPONSE_HEAD = 16 << 10


class DerpClient:
    """An established DERP session over ``stream`` (which it owns and closes on aclose).

    One task may call :meth:`receive` at a time; sends are serialised by a lock, so several
    tasks may send.
    """

    def __init__(
        self, stream: trio.abc.Stream, decoder: fr.FrameDecoder, private_key: bytes,
        server_public: bytes, server_info: dict[str, Any],
    ) -> None:
        self.stream = stream
        self._decoder = decoder
        self.private_key = private_key
        self.public_key = fr.public_key(private_key)
        self.server_public = server_public
        self.server_info = server_info
        self._lock = trio.Lock()

    async def send_raw(self, data: bytes) -> None:
        """Write already-encoded frame bytes (several frames may be joined)."""
        async with self._lock:
            await self.stream.send_all(data)

    async def send(self, msg: fr.Frame) -> None:
        await self.send_raw(fr.encode(msg))

    async def send_packet(self, dst: bytes, packet: bytes) -> None:
        await self.send_raw(fr.encode_send_packet(dst, packet))

    def receive_nowait(self) -> fr.Frame | None:
        """A frame already buffered, or None (never touches the socket)."""
        ev = self._decoder.next_event()
        return None if ev is fr.NEED_DATA else ev  # type: ignore[return-value]

    async def receive(self) -> fr.Frame:
        """The next frame from the server. Raises ConnectionClosed on EOF, ProtocolError."""
        while True:
            ev = self._decoder.next_event()
            if ev is not fr.NEED_DATA:
                return ev  # type: ignore[return-value]
            data = await self.stream.receive_some(RECV_SIZE)
            self._decoder.receive_data(data)
            if not data:
                self._decoder.next_event()
                raise ConnectionClosed("server closed the connection")

    async def aclose(self) -> None:
        try:
            await self.stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def __aenter__(self) -> "DerpClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        with trio.move_on_after(1, shield=True):
            await self.aclose()


def _request(host: str, *, websocket: bool, fast_start: bool) -> tuple[bytes, bytes | None]:
    lines = [b"GET /derp HTTP/1.1", b"Host: " + host.encode(), b"User-Agent: trioscale-derp"]
    wskey = None
    if websocket:
        wskey = base64.b64encode(os.urandom(16))
        lines += [b"Connection: Upgrade", b"Upgrade: websocket", b"Sec-WebSocket-Version: 13",
                  b"Sec-WebSocket-Protocol: derp", b"Sec-WebSocket-Key: " + wskey]
    else:
        lines += [b"Connection: Upgrade", b"Upgrade: DERP"]
        if fast_start:
            lines.append(b"Derp-Fast-Start: 1")
    return b"\r\n".join(lines) + b"\r\n\r\n", wskey


async def _read_head(stream: trio.abc.Stream) -> tuple[int, dict[bytes, bytes], bytes]:
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_RESPONSE_HEAD:
            raise ProtocolError("response head too long")
        data = await stream.receive_some(RECV_SIZE)
        if not data:
            raise ConnectionClosed("EOF before the HTTP response")
        buf += data
    head, rest = bytes(buf).split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ProtocolError("bad status line %r" % lines[0][:80])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        hdrs[k.strip().lower()] = v.strip()
    return int(parts[1]), hdrs, rest


async def connect(
    stream: trio.abc.Stream,
    private_key: bytes,
    *,
    host: str = "localhost",
    mesh_key: str | None = None,
    can_ack_pings: bool = True,
    websocket: bool = False,
    fast_start_server_key: bytes | None = None,
    info_extra: dict[str, Any] | None = None,
) -> DerpClient:
    """Upgrade ``stream`` to DERP and complete the handshake; returns the session.

    ``fast_start_server_key``: send ``Derp-Fast-Start: 1`` and the ClientInfo at once (only
    possible when the server key is known in advance). On any failure the stream is closed
    and the error (ProtocolError, HandshakeError, ConnectionClosed, trio errors) propagates.
    The caller sets the deadline.
    """
    try:
        req, wskey = _request(host, websocket=websocket,
                              fast_start=fast_start_server_key is not None)
        info: dict[str, Any] = {"version": fr.PROTOCOL_VERSION}
        if can_ack_pings:
            info["CanAckPings"] = True
        if mesh_key:
            info["meshKey"] = mesh_key
        if info_extra:
            info.update(info_extra)
        decoder = fr.client_decoder()
        if fast_start_server_key is not None:
            ci = fr.seal_client_info(private_key, fast_start_server_key, info)
            await stream.send_all(req + fr.encode(ci))
        else:
            await stream.send_all(req)
            status, hdrs, rest = await _read_head(stream)
            if status != 101:
                raise HandshakeError("server answered %d, not 101" % status)
            if websocket:
                if hdrs.get(b"sec-websocket-accept") != accept_key(wskey or b""):
                    raise HandshakeError("bad Sec-WebSocket-Accept")
                stream = WebSocketStream(stream, client=True, leftover=rest)
            elif rest:
                decoder.receive_data(rest)
        sk = await read_frame(stream, decoder)
        if not isinstance(sk, fr.ServerKey):
            raise HandshakeError("expected ServerKey, got %s" % type(sk).__name__)
        if fast_start_server_key is None:
            ci = fr.seal_client_info(private_key, sk.key, info)
            await stream.send_all(fr.encode(ci))
        elif sk.key != fast_start_server_key:
            raise HandshakeError("server key differs from the fast-start key")
        si = await read_frame(stream, decoder)
        if not isinstance(si, fr.ServerInfo):
            raise HandshakeError("expected ServerInfo, got %s" % type(si).__name__)
        server_info = fr.open_server_info(private_key, sk.key, si)
    except BaseException:
        with trio.move_on_after(1, shield=True):
            try:
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        raise
    return DerpClient(stream, decoder, private_key, sk.key, server_info)


async def connect_url(
    url: str,
    private_key: bytes,
    *,
    ssl_context: ssl.SSLContext | None = None,
    **kwargs: Any,
) -> DerpClient:
    """Dial ``http://host[:port]``, ``https://host[:port]`` or ``unix:/path`` (plain HTTP over
    a unix socket: the workers of one relay) and :func:`connect` over it.

    For https, ``ssl_context`` defaults to the system trust store. Other keyword arguments go to
    :func:`connect`. The caller sets the deadline.
    """
    u = urlsplit(url)
    if u.scheme == "unix" and u.path:
        kwargs.setdefault("host", "localhost")
        return await connect(await trio.open_unix_socket(u.path), private_key, **kwargs)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError("DERP URL must be http(s)://host[:port] or unix:/path, got %r" % url)
    port = u.port or (443 if u.scheme == "https" else 80)
    stream: trio.abc.Stream = await trio.open_tcp_stream(u.hostname, port)
    if u.scheme == "https":
        # The relay's own TLS: a mesh link writes batches of many clients' packets.
        ctx = ssl_context or ssl.create_default_context()
        stream = await TLSStream.connect(stream, ctx, server_hostname=u.hostname)
    kwargs.setdefault("host", u.hostname)
    return await connect(stream, private_key, **kwargs)
