"""A trio Stream that carries plaintext over a Noise transport (thin driver of transport.py)."""

from __future__ import annotations

import trio

from .transport import NoiseTransport

RECEIVE_SIZE = 65536


class NoiseStream(trio.abc.Stream):
    """Owns ``raw``: closing this closes it. Raises NoiseError from receive_some when the peer
    sends something that is not a valid record; the caller ends the connection then."""

    def __init__(self, raw: trio.abc.Stream, transport: NoiseTransport, leftover: bytes = b"") -> None:
        self.raw = raw
        self._t = transport
        self._pending = bytearray()
        self._leftover = leftover
        self._send_lock = trio.Lock()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        async with self._send_lock:
            # Encrypt under the lock: record nonces must go on the wire in the order made.
            await self.raw.send_all(self._t.encrypt(bytes(data)))

    async def wait_send_all_might_not_block(self) -> None:
        await self.raw.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while not self._pending:
            if self._leftover:
                data, self._leftover = self._leftover, b""
            else:
                data = await self.raw.receive_some(RECEIVE_SIZE)
                if not data:
                    return b""
            self._pending += self._t.receive_data(data)
        n = len(self._pending) if max_bytes is None else min(max_bytes, len(self._pending))
        out = bytes(self._pending[:n])
        del self._pending[:n]
        return out

    async def aclose(self) -> None:
        await self.raw.aclose()
