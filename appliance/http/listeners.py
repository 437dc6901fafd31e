"""A listener that takes every connection already waiting in the kernel's queue at once.

trio's SocketListener accepts one connection per scheduling round. When hundreds of
connections arrive together (a flood, or every node reconnecting after a restart), a new
client's connection then waits in the kernel's queue behind all of them, one round each, and
rounds are long while those connections do their work: seconds before its first byte is read.
Taking the whole queue in one round puts every waiting connection in line together; the caps
of limits.ConnectionGate then apply to all of them at once.
"""

from __future__ import annotations

import collections
import os
import socket

import trio

# Connections taken from the kernel's queue in one round (a bound on the work of that round).
ACCEPT_BATCH = 256


class BatchListener(trio.abc.Listener[trio.SocketStream]):
    """Wraps a ``trio.SocketListener``; ``aclose`` closes it."""

    def __init__(self, inner: trio.SocketListener) -> None:
        self.inner = inner
        self.socket = inner.socket
        # A second descriptor of the same listening socket, for accepting without a round
        # trip through the scheduler; the accepted sockets are the same either way.
        self._raw = socket.socket(fileno=os.dup(inner.socket.fileno()))
        self._raw.setblocking(False)
        self._ready: collections.deque[trio.SocketStream] = collections.deque()

    async def accept(self) -> trio.SocketStream:
        while not self._ready:
            self._ready.append(await self.inner.accept())
            for _ in range(ACCEPT_BATCH - 1):
                try:
                    conn, _ = self._raw.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break  # EMFILE and the like: the next inner.accept() sleeps on it
                self._ready.append(trio.SocketStream(trio.socket.from_stdlib_socket(conn)))
        # No checkpoint here: the whole batch goes to the caller in one round.
        return self._ready.popleft()

    async def aclose(self) -> None:
        while self._ready:
            await trio.aclose_forcefully(self._ready.popleft())
        self._raw.close()
        await self.inner.aclose()
