"""Minimal sans-IO RFC 6455 framing for DERP over WebSocket (derp.md §1.3).

DERP over WebSocket is a byte stream carried in binary messages, and frames may span messages,
so this codec does not reassemble messages: it hands out the payload bytes of every binary (and
continuation) frame in order. Text frames are a protocol error; pings are answered; a close
frame ends the stream.

Frame layout (RFC 6455 §5.2)::

    FIN|RSV(3)|opcode(4) | MASK|len(7) | [len16 | len64] | [mask key (4)] | payload
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Final, Union

from .errors import FrameTooLarge, ProtocolError

WS_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
# A DERP frame is at most ~64 KiB + headers; browsers send each write as one message. 1 MiB
# per WebSocket frame leaves room and stops a peer from making us buffer gigabytes.
MAX_WS_FRAME: Final = 1 << 20
# RFC 6455 §5.5: control frames carry at most 125 bytes.
MAX_CONTROL: Final = 125


def accept_key(sec_websocket_key: bytes) -> bytes:
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(sec_websocket_key.strip() + WS_GUID).digest())


@dataclass(frozen=True, slots=True)
class Data:
    """Payload bytes of a binary or continuation frame (part of the DERP byte stream)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PingReceived:
    payload: bytes


@dataclass(frozen=True, slots=True)
class PongReceived:
    payload: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    code: int
    reason: str


WsEvent = Union[Data, PingReceived, PongReceived, CloseReceived]

_NEED = None


def _mask(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    # XOR through big ints: one C-level operation instead of a Python loop per byte.
    n = len(data)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


class WebSocketCodec:
    """One side of a WebSocket connection after the HTTP handshake.

    ``client=False`` (the server side) requires masked frames from the peer and sends unmasked
    ones; ``client=True`` does the opposite. Feed ``receive_data``, drain ``next_event`` until
    it returns None; build outgoing bytes with ``send_*``.
    """

    def __init__(self, *, client: bool = False, max_frame: int = MAX_WS_FRAME) -> None:
        self._client = client
        self._max = max_frame
        self._buf = bytearray()
        self._closed = False
        self._in_fragmented: int | None = None  # opcode of the message being continued

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def next_event(self) -> WsEvent | None:
        """The next event, or None when more bytes are needed. Raises ProtocolError."""
        buf = self._buf
        if len(buf) < 2:
            return _NEED
        b0, b1 = buf[0], buf[1]
        fin = bool(b0 & 0x80)
        if b0 & 0x70:
            raise ProtocolError("RSV bits set without an extension")
        op = b0 & 0x0F
        masked = bool(b1 & 0x80)
        if masked == self._client:
            # Client-to-server frames must be masked, server-to-client must not (§5.1).
            raise ProtocolError("wrong masking")
        length = b1 & 0x7F
        off = 2
        if length == 126:
            if len(buf) < 4:
                return _NEED
            length = struct.unpack_from(">H", buf, 2)[0]
            off = 4
        elif length == 127:
            if len(buf) < 10:
                return _NEED
            length = struct.unpack_from(">Q", buf, 2)[0]
            off = 10
        if op >= 0x8:
            if length > MAX_CONTROL or not fin:
                raise ProtocolError("bad control frame")
        elif length > self._max:
            raise FrameTooLarge("websocket frame of %d bytes" % length)
        key = b""
        if masked:
            if len(buf) < off + 4:
                return _NEED
            key = bytes(buf[off : off + 4])
            off += 4
        if len(buf) < off + length:
            return _NEED
        payload = bytes(buf[off : off + length])
        del buf[: off + length]
        if masked:
            payload = _mask(payload, key)
        if op == OP_BINARY or op == OP_CONT:
            if op == OP_CONT and self._in_fragmented is None:
                raise ProtocolError("continuation without a message")
            if op == OP_BINARY and self._in_fragmented is not None:
                raise ProtocolError("new message inside a fragmented one")
            self._in_fragmented = None if fin else OP_BINARY
            return Data(payload)
        if op == OP_TEXT:
            raise ProtocolError("DERP over WebSocket uses binary messages")
        if op == OP_PING:
            return PingReceived(payload)
        if op == OP_PONG:
            return PongReceived(payload)
        if op == OP_CLOSE:
            code = struct.unpack_from(">H", payload)[0] if len(payload) >= 2 else 1005
            return CloseReceived(code, payload[2:].decode("utf-8", "replace"))
        raise ProtocolError("unknown opcode 0x%x" % op)

    def _frame(self, op: int, payload: bytes) -> bytes:
        n = len(payload)
        mbit = 0x80 if self._client else 0
        if n < 126:
            head = bytes((0x80 | op, mbit | n))
        elif n < 1 << 16:
            head = struct.pack(">BBH", 0x80 | op, mbit | 126, n)
        else:
            head = struct.pack(">BBQ", 0x80 | op, mbit | 127, n)
        if self._client:
            key = os.urandom(4)
            return head + key + _mask(payload, key)
        return head + payload

    def send_binary(self, data: bytes) -> bytes:
        """One binary message carrying ``data``."""
        return self._frame(OP_BINARY, data)

    def send_pong(self, payload: bytes) -> bytes:
        return self._frame(OP_PONG, payload[:MAX_CONTROL])

    def send_ping(self, payload: bytes = b"") -> bytes:
        return self._frame(OP_PING, payload[:MAX_CONTROL])

    def send_close(self, code: int = 1000, reason: str = "") -> bytes:
        return self._frame(OP_CLOSE, struct.pack(">H", code) + reason.encode()[:123])
