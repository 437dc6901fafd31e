"""How a relay connection's writer puts frames on the wire, per kind of stream.

A wire has four members the relay uses:

* ``await write(parts, stall)``: write the buffers in order (and anything ``pending`` first);
  trio.TooSlowError if the socket takes nothing for ``stall`` seconds. No checkpoint when
  the kernel took it all at once (the writer parks next anyway);
* ``send_nowait(frame) -> bool``: write one frame now, synchronously, from another task, only
  called while the connection's writer is parked with nothing queued. False: nothing was done
  (queue it). True: the frame is the wire's; if ``pending`` is then non-empty, the writer must
  be woken to finish it;
* ``pending``: bytes already committed to the wire that must go out before anything else;
* ``blocked``: True while a send waits for the socket (the peer reads slowly), as opposed to
  a writer that merely waits for its turn to run.

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

from .tls import TLSStream, write_queue


class Wire(Protocol):
    pending: deque
    blocked: bool

    def send_nowait(self, frame: bytes | bytearray) -> bool: ...

    async def write(self, parts: list, stall: float) -> None: ...

    def close(self) -> None: ...


class PlainWire:
    """A plain TCP connection: buffers go to the kernel as they are."""

    __slots__ = ("direct", "pending", "blocked")

    def __init__(self, stream: trio.SocketStream) -> None:
        # The same connection as a stdlib socket (own fd), for synchronous sends.
        self.direct = socket.socket(fileno=os.dup(stream.socket.fileno()))
        self.direct.setblocking(False)
        self.pending: deque = deque()
        self.blocked = False

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

    async def write(self, parts: list, stall: float) -> None:
        self.pending.extend(parts)
        await write_queue(self.direct, self.pending, self, stall=stall, checkpoint=False)

    def close(self) -> None:
        self.direct.close()


class StreamWire:
    """Any other stream: one joined write per batch, no synchronous sends."""

    __slots__ = ("stream", "pending", "blocked")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.pending: deque = deque()
        self.blocked = False

    def send_nowait(self, frame: bytes | bytearray) -> bool:
        return False

    async def write(self, parts: list, stall: float) -> None:
        # Whether the stream waits for its peer or just for its turn is not known: call it
        # blocked, so that nobody waits on it.
        self.blocked = True
        try:
            with trio.fail_after(stall):
                await self.stream.send_all(parts[0] if len(parts) == 1 else b"".join(parts))
        finally:
            self.blocked = False

    def close(self) -> None:
        pass


class _TLSWire:
    """A TLSStream is a wire already; the stream's own aclose releases what it holds."""

    __slots__ = ("stream", "pending", "send_nowait", "write")

    def __init__(self, stream: TLSStream) -> None:
        self.stream = stream
        self.pending = stream.pending
        self.send_nowait = stream.send_nowait
        self.write = stream.write

    @property
    def blocked(self) -> bool:
        return self.stream.blocked

    def close(self) -> None:
        pass


def wire_for(stream: trio.abc.Stream) -> Wire:
    """The best wire for ``stream``; call its ``close()`` when the writer is done."""
    if type(stream) is trio.SocketStream:
        return PlainWire(stream)
    if type(stream) is TLSStream:
        return _TLSWire(stream)
    return StreamWire(stream)

