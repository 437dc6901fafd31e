"""Small Trio stream helpers: DERP over WebSocket as a plain byte stream, connections handed
between processes, peer addresses."""

from __future__ import annotations

import trio

from . import frames as fr
from . import websocket as ws
from .errors import ConnectionClosed

RECV_SIZE = 64 << 10


class WebSocketStream(trio.abc.Stream):
    """A trio Stream whose bytes travel as WebSocket binary messages over ``inner``.

    DERP treats WebSocket as a byte stream, so ``receive_some`` returns the payload of the next
    data frame and ``send_all`` sends one binary message. Pings are answered from the reader;
    a close frame is echoed and reads as EOF. ``aclose`` closes ``inner`` (this object owns it).
    """

    def __init__(self, inner: trio.abc.Stream, *, client: bool, leftover: bytes = b"") -> None:
        self.inner = inner
        self._codec = ws.WebSocketCodec(client=client)
        if leftover:
            self._codec.receive_data(leftover)
        self._send_lock = trio.Lock()  # the reader's pong and the writer's data share inner
        self._eof = False

    async def _send(self, data: bytes) -> None:
        async with self._send_lock:
            await self.inner.send_all(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._send(self._codec.send_binary(bytes(data)))

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while not self._eof:
            ev = self._codec.next_event()
            if ev is None:
                data = await self.inner.receive_some(RECV_SIZE)
                if not data:
                    self._eof = True
                    break
                self._codec.receive_data(data)
                continue
            if isinstance(ev, ws.Data):
                if ev.data:
                    return ev.data
            elif isinstance(ev, ws.PingReceived):
                await self._send(self._codec.send_pong(ev.payload))
            elif isinstance(ev, ws.CloseReceived):
                self._eof = True
                try:
                    await self._send(self._codec.send_close(1000))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
        return b""

    async def aclose(self) -> None:
        await self.inner.aclose()


async def read_frame(stream: trio.abc.Stream, decoder: fr.FrameDecoder) -> fr.Frame:
    """The next whole frame of a handshake, reading as needed; ConnectionClosed at EOF (and the
    decoder's ProtocolError if EOF cut a frame short)."""
    while True:
        ev = decoder.next_event()
        if ev is not fr.NEED_DATA:
            return ev  # type: ignore[return-value]
        data = await stream.receive_some(RECV_SIZE)
        decoder.receive_data(data)
        if not data:
            decoder.next_event()  # raises if a frame was cut short
            raise ConnectionClosed("EOF during handshake")


class HandedStream(trio.abc.HalfCloseableStream):
    """A connection handed over by another process of the relay (a unix socket carrying it),
    with the address of the real peer, which the socket itself cannot tell."""

    def __init__(self, inner: trio.SocketStream, remote_address: tuple[str, int] | None) -> None:
        self.inner = inner
        self.remote_address = remote_address

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


def peer_address(stream: trio.abc.Stream) -> tuple[str, int] | None:
    """The (ip, port) of the remote end of a SocketStream, possibly under SSL/WebSocket, or of
    a HandedStream's real peer."""
    seen = 0
    while stream is not None and seen < 5:
        seen += 1
        handed = getattr(stream, "remote_address", None)
        if isinstance(handed, tuple):
            return handed
        sock = getattr(stream, "socket", None)
        if sock is not None:
            try:
                addr = sock.getpeername()
            except OSError:
                return None
            if isinstance(addr, tuple) and len(addr) >= 2:
                return str(addr[0]), int(addr[1])
            return None
        # SSLStream, WebSocketStream, autocert's ReplayStream (the ClientHello given back).
        stream = (getattr(stream, "transport_stream", None) or getattr(stream, "inner", None)
                  or getattr(stream, "transport", None))
    return None
