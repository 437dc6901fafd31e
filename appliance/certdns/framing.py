"""DNS over TCP frames: each message is preceded by its length in two bytes (RFC 1035 4.2.2).
Pure: bytes in, messages out."""

from __future__ import annotations

MAX_MESSAGE = 65535


class FrameError(ValueError):
    """The peer's stream is not DNS over TCP."""


def frame(message: bytes) -> bytes:
    if len(message) > MAX_MESSAGE:
        raise FrameError(f"a DNS message of {len(message)} bytes does not fit a TCP frame")
    return len(message).to_bytes(2, "big") + message


class FrameReader:
    """Feed it what the stream gave; take whole messages out (several may arrive at once,
    or one in many pieces)."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self.max_message = max_message
        self._buf = bytearray()

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def next_message(self) -> bytes | None:
        if len(self._buf) < 2:
            return None
        n = int.from_bytes(self._buf[:2], "big")
        if n == 0 or n > self.max_message:
            raise FrameError(f"bad DNS message length {n}")
        if len(self._buf) < 2 + n:
            return None
        message = bytes(self._buf[2:2 + n])
        del self._buf[:2 + n]
        return message

    @property
    def pending(self) -> int:
        """Bytes held that are not yet a whole message."""
        return len(self._buf)
