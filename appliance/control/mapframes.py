"""The map stream's framing (sans-IO).

Each frame: uint32 **little-endian** length N, then N bytes: the MapResponse JSON, zstd
compressed when the client asked for ``Compress: "zstd"`` (1.96 always does, and then decodes
every frame, keepalives included).
"""

from __future__ import annotations

import json
import struct
from typing import Any, Callable

import zstandard

# Reference servers keep frames under 16 MiB and the client allocates what the header says:
# a reader of our own frames (tests, load generator) refuses more before reading the body.
MAX_FRAME = 16 << 20

_compressor = zstandard.ZstdCompressor(level=3)


class MapFrameError(ValueError):
    pass


class RawJSON:
    """A value already encoded as JSON text, spliced into a message as it is: a netmap's
    peers are the same text for every viewer, so they are encoded once, not per session."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _dumps(message: Any) -> str:
    if isinstance(message, dict) and any(isinstance(v, RawJSON) for v in message.values()):
        parts = (
            json.dumps(k) + ":" + (v.text if isinstance(v, RawJSON) else json.dumps(v, separators=(",", ":")))
            for k, v in message.items()
        )
        return "{" + ",".join(parts) + "}"
    return json.dumps(message, separators=(",", ":"))


def encode_frame(message: Any, compress: bool) -> bytes:
    """A length-prefixed frame; top-level RawJSON values go in as they are."""
    body = _dumps(message).encode()
    if compress:
        body = _compressor.compress(body)
    if len(body) > MAX_FRAME:
        raise MapFrameError(f"map frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return struct.pack("<I", len(body)) + body


class MapFrameReader:
    """Client side of the framing, for our tests and the load generator."""

    def __init__(self, compressed: bool, decode: Callable[[bytes], Any] = json.loads) -> None:
        self._buf = bytearray()
        self._compressed = compressed
        self._d = zstandard.ZstdDecompressor()
        self._decode = decode  # a load generator may skip parsing what it does not look at

    def receive_data(self, data: bytes) -> list[Any]:
        self._buf += data
        out = []
        while len(self._buf) >= 4:
            (n,) = struct.unpack_from("<I", self._buf)
            if n > MAX_FRAME:
                raise MapFrameError(f"map frame of {n} bytes exceeds {MAX_FRAME}")
            if len(self._buf) < 4 + n:
                break
            body = bytes(self._buf[4 : 4 + n])
            del self._buf[: 4 + n]
            if self._compressed:
                body = self._d.decompressobj().decompress(body)
            out.append(self._decode(body))
        return out
