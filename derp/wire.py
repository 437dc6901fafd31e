"""How a relay connection's writer puts frames on the wire, per kind of stream.

A wire has three members the relay uses:

* ``await send_parts(parts)``: write the buffers in order (and anything ``pending`` first);
* ``send_nowait(frame) -> bool``: write one frame now, synchronously, from another task, only
  called while the connection's writer is parked with nothing queued. False: nothing was done
  (queue it). True: the frame is the wire's; if ``pending`` is then non-empty, the writer must
  be woken to finish it;
* ``pending``: bytes already committed to the wire that must go out before anything else.

Plain TCP writes the queued frames with one ``sendmsg`` (no join); :class:`~derp.tls.TLSStream`
is itself a wire (it encrypts a batch into full records); any other stream (WebSocket, a
:class:`trio.SSLStream` made by someone else) gets one joined ``send_all`` per batch.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from typing import Protocol

import trio

from .tls import IOV_MAX, TLSStream


class Wire(Protocol):
    pending: deque

    def send_nowait(self, frame: bytes | bytearray) -> bool: ...

    async def send_parts(self, parts: list) -> None: ...

    def close(self) -> None: ...


class PlainWire:
    """A plain TCP connection: buffers go to the kernel as they are."""

    __slots__ = ("sock", "direct", "pending")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.sock = stream.socket
        # The same connection as a stdlib socket (own fd), for synchronous sends.
        self.direct = socket.socket(fileno=os.dup(self.sock.fileno()))
        self.direct.setblocking(False)
        self.pending: deque[memoryview] = deque()

    def send_nowait(self, frame: bytes | bytearray) -> bool:
        if self.pending:
            return False
        try:
            n = self.direct.send(frame)
        except OSError:  # would block, or broken: the writer deals with it
            return False
        if n < len(frame):
            if not n:
                return False
            self.pending.append(memoryview(frame)[n:])  # the rest must go out before anything
        return True

    async def send_parts(self, parts: list) -> None:
        if self.pending:
            parts = [*self.pending, *parts]
            self.pending.clear()
        await sendmsg_all(self.sock, parts)

    def close(self) -> None:
        self.direct.close()


class StreamWire:
    """Any other stream: one joined write per batch, no synchronous sends."""

    __slots__ = ("stream", "pending")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.pending: deque = deque()

    def send_nowait(self, frame: bytes | bytearray) -> bool:
        return False

    async def send_parts(self, parts: list) -> None:
        await self.stream.send_all(parts[0] if len(parts) == 1 else b"".join(parts))

    def close(self) -> None:
        pass


class _TLSWire:
    """A TLSStream is a wire already; the stream's own aclose releases what it holds."""

    __slots__ = ("stream", "pending", "send_nowait", "send_parts")

    def __init__(self, stream: TLSStream) -> None:
        self.stream = stream
        self.pending = stream.pending
        self.send_nowait = stream.send_nowait
        self.send_parts = stream.send_parts

    def close(self) -> None:
        pass


def wire_for(stream: trio.abc.Stream) -> Wire:
    """The best wire for ``stream``; call its ``close()`` when the writer is done."""
    if type(stream) is trio.SocketStream:
        return PlainWire(stream)
    if type(stream) is TLSStream:
        return _TLSWire(stream)
    return StreamWire(stream)


async def sendmsg_all(sock: trio.socket.SocketType, parts: list) -> None:
    """Write every buffer of ``parts`` in order, resuming after short writes."""
    while parts:
        sent = await sock.sendmsg(parts[:IOV_MAX])
        i = 0
        while i < len(parts) and sent >= len(parts[i]):
            sent -= len(parts[i])
            i += 1
        if i == len(parts):
            return
        parts = parts[i:]
        if sent:
            parts[0] = memoryview(parts[0])[sent:]
