"""Sans-IO DERP frame codec: bytes in, events out; messages in, bytes out.

Nothing here awaits, sleeps or reads the clock. The Trio drivers (server.py, client.py) own the
sockets; this module only turns a byte stream into typed frame events and back.

Wire layout of every frame (derp.md §2)::

    type (1 byte) | length (uint32 big-endian) | payload (length bytes)

The decoder checks the announced length against a per-type limit as soon as the 5-byte header
is in, before buffering the body, so a peer cannot make us buffer more than the limit.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final, Union

import nacl.exceptions
import nacl.public
import nacl.utils

from .errors import FrameTooLarge, HandshakeError, ProtocolError

MAGIC: Final = b"DERP\xf0\x9f\x94\x91"  # "DERP🔑"
PROTOCOL_VERSION: Final = 2
KEY_LEN: Final = 32
NONCE_LEN: Final = 24
HEADER_LEN: Final = 5

# Largest WireGuard/disco packet a client may relay (64 KiB), as the reference server enforces.
MAX_PACKET_SIZE: Final = 64 << 10
# ClientInfo is read before the client is authenticated: cap it at the reference's 256 KiB so
# an anonymous peer cannot make us buffer the 1 MiB the JSON limit would otherwise allow.
MAX_CLIENT_INFO_LEN: Final = 256 << 10
# ServerInfo JSON ceiling from the protocol (1 MiB), which the client side enforces.
MAX_SERVER_INFO_LEN: Final = 1 << 20
# The client rejects a ServerKey frame longer than 1 KiB.
MAX_SERVER_KEY_LEN: Final = 1 << 10
# The server accepts pings up to 1000 bytes (it echoes the first 8); more is abuse.
MAX_PING_LEN: Final = 1000
# Health text is shown to the user; a few KiB is plenty, more would be memory abuse.
MAX_HEALTH_LEN: Final = 16 << 10
# Frames of types we do not know are skipped, but still buffered whole first: bound them too.
MAX_UNKNOWN_FRAME_LEN: Final = MAX_PACKET_SIZE + 2 * KEY_LEN
# The client refuses to write any frame over 10 MiB; nothing legitimate comes near it.
MAX_FRAME_LEN: Final = 10 << 20

PING_DATA_LEN: Final = 8


class FrameType(IntEnum):
    SERVER_KEY = 0x01
    CLIENT_INFO = 0x02
    SERVER_INFO = 0x03
    SEND_PACKET = 0x04
    RECV_PACKET = 0x05
    KEEP_ALIVE = 0x06
    NOTE_PREFERRED = 0x07
    PEER_GONE = 0x08
    PEER_PRESENT = 0x09
    FORWARD_PACKET = 0x0A
    WATCH_CONNS = 0x10
    CLOSE_PEER = 0x11
    PING = 0x12
    PONG = 0x13
    HEALTH = 0x14
    RESTARTING = 0x15


# Per-type ceiling on the announced payload length, checked from the header.
FRAME_LIMITS: Final[dict[int, int]] = {
    FrameType.SERVER_KEY: MAX_SERVER_KEY_LEN,
    FrameType.CLIENT_INFO: MAX_CLIENT_INFO_LEN,
    FrameType.SERVER_INFO: MAX_SERVER_INFO_LEN,
    FrameType.SEND_PACKET: KEY_LEN + MAX_PACKET_SIZE,
    FrameType.RECV_PACKET: KEY_LEN + MAX_PACKET_SIZE,
    FrameType.KEEP_ALIVE: 0,
    FrameType.NOTE_PREFERRED: 1,
    FrameType.PEER_GONE: KEY_LEN + 1,
    FrameType.PEER_PRESENT: KEY_LEN + 16 + 2 + 1,
    FrameType.FORWARD_PACKET: 2 * KEY_LEN + MAX_PACKET_SIZE,
    FrameType.WATCH_CONNS: 0,
    FrameType.CLOSE_PEER: KEY_LEN,
    FrameType.PING: MAX_PING_LEN,
    FrameType.PONG: MAX_PING_LEN,
    FrameType.HEALTH: MAX_HEALTH_LEN,
    FrameType.RESTARTING: 8,
}


class PeerGoneReason(IntEnum):
    DISCONNECTED = 0x00
    NOT_HERE = 0x01


class PeerPresentFlags(IntEnum):
    REGULAR = 0x01
    MESH_PEER = 0x02
    PROBER = 0x04
    NOT_IDEAL = 0x08


# ---------------------------------------------------------------------------------------------
# Events / messages. One frozen, slotted dataclass per frame type; the same classes are decoded
# from the wire and handed to encode().


@dataclass(frozen=True, slots=True)
class ServerKey:
    """0x01 ServerKey: magic (8) ‖ server public key (32) ‖ optional future bytes."""

    key: bytes


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """0x02 ClientInfo: client node public key (32) ‖ nonce (24) ‖ NaCl box of JSON."""

    key: bytes
    nonce: bytes
    sealed: bytes


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """0x03 ServerInfo: nonce (24) ‖ NaCl box of JSON."""

    nonce: bytes
    sealed: bytes


@dataclass(frozen=True, slots=True)
class SendPacket:
    """0x04 SendPacket: destination key (32) ‖ packet."""

    dst: bytes
    packet: bytes


@dataclass(frozen=True, slots=True)
class RecvPacket:
    """0x05 RecvPacket: source key (32) ‖ packet (protocol v2 layout)."""

    src: bytes
    packet: bytes


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """0x06 KeepAlive: empty."""


@dataclass(frozen=True, slots=True)
class NotePreferred:
    """0x07 NotePreferred: 1 byte, 0x01 = this is my home DERP."""

    preferred: bool


@dataclass(frozen=True, slots=True)
class PeerGone:
    """0x08 PeerGone: key (32) ‖ reason (1; older servers omit it, read as DISCONNECTED)."""

    key: bytes
    reason: int = PeerGoneReason.DISCONNECTED


@dataclass(frozen=True, slots=True)
class PeerPresent:
    """0x09 PeerPresent: key (32) ‖ IPv6 or v4-mapped IP (16) ‖ port (2 BE) ‖ flags (1).

    Older forms (32 bytes, or 50 bytes without flags) decode with empty ip, port 0, flags 0.
    """

    key: bytes
    ip: bytes = b""
    port: int = 0
    flags: int = 0


@dataclass(frozen=True, slots=True)
class ForwardPacket:
    """0x0a ForwardPacket (mesh): source key (32) ‖ destination key (32) ‖ packet."""

    src: bytes
    dst: bytes
    packet: bytes


@dataclass(frozen=True, slots=True)
class WatchConns:
    """0x10 WatchConns (mesh): empty."""


@dataclass(frozen=True, slots=True)
class ClosePeer:
    """0x11 ClosePeer (mesh): key (32)."""

    key: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """0x12 Ping: 8 bytes to echo (up to 1000 accepted; only the first 8 echoed)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """0x13 Pong: the 8 bytes of the Ping."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Health:
    """0x14 Health: UTF-8 text; empty means healthy."""

    problem: str


@dataclass(frozen=True, slots=True)
class Restarting:
    """0x15 Restarting: reconnectIn ms (uint32 BE) ‖ tryFor ms (uint32 BE)."""

    reconnect_in_ms: int
    try_for_ms: int


@dataclass(frozen=True, slots=True)
class UnknownFrame:
    """A frame of a type this codec does not know; callers skip it (derp.md §2)."""

    type: int
    payload: bytes


Frame = Union[
    ServerKey, ClientInfo, ServerInfo, SendPacket, RecvPacket, KeepAlive, NotePreferred,
    PeerGone, PeerPresent, ForwardPacket, WatchConns, ClosePeer, Ping, Pong, Health,
    Restarting, UnknownFrame,
]

_HDR = struct.Struct(">BI")
_U32X2 = struct.Struct(">II")


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


# ---------------------------------------------------------------------------------------------
# Encoding


def frame_header(ftype: int, length: int) -> bytes:
    """The 5-byte header for a frame of ``ftype`` carrying ``length`` payload bytes."""
    return _HDR.pack(ftype, length)


def encode_send_packet(dst: bytes, packet: bytes) -> bytes:
    """Fast path for the hot SendPacket frame (one join, no dataclass)."""
    return b"".join((_HDR.pack(0x04, KEY_LEN + len(packet)), dst, packet))


def encode_recv_packet(src: bytes, packet: bytes | memoryview) -> bytes:
    """Fast path for the hot RecvPacket frame."""
    return b"".join((_HDR.pack(0x05, KEY_LEN + len(packet)), src, packet))


def encode_forward_packet(src: bytes, dst: bytes, packet: bytes | memoryview) -> bytes:
    """Fast path for the mesh ForwardPacket frame."""
    return b"".join((_HDR.pack(0x0A, 2 * KEY_LEN + len(packet)), src, dst, packet))


def _key(k: bytes) -> bytes:
    if len(k) != KEY_LEN:
        raise ValueError("keys are 32 bytes")
    return k


def _frame(ftype: int, payload: bytes) -> bytes:
    return _HDR.pack(ftype, len(payload)) + payload


def encode(msg: Frame) -> bytes:
    """Serialise one message to frame bytes. Raises ValueError on out-of-range fields."""
    if isinstance(msg, SendPacket):
        if len(msg.packet) > MAX_PACKET_SIZE:
            raise ValueError("packet too large")
        return encode_send_packet(_key(msg.dst), msg.packet)
    if isinstance(msg, RecvPacket):
        if len(msg.packet) > MAX_PACKET_SIZE:
            raise ValueError("packet too large")
        return encode_recv_packet(_key(msg.src), msg.packet)
    if isinstance(msg, ForwardPacket):
        if len(msg.packet) > MAX_PACKET_SIZE:
            raise ValueError("packet too large")
        return encode_forward_packet(_key(msg.src), _key(msg.dst), msg.packet)
    if isinstance(msg, ServerKey):
        return _frame(FrameType.SERVER_KEY, MAGIC + _key(msg.key))
    if isinstance(msg, ClientInfo):
        if len(msg.nonce) != NONCE_LEN:
            raise ValueError("nonce is 24 bytes")
        return _frame(FrameType.CLIENT_INFO, _key(msg.key) + msg.nonce + msg.sealed)
    if isinstance(msg, ServerInfo):
        if len(msg.nonce) != NONCE_LEN:
            raise ValueError("nonce is 24 bytes")
        return _frame(FrameType.SERVER_INFO, msg.nonce + msg.sealed)
    if isinstance(msg, KeepAlive):
        return _frame(FrameType.KEEP_ALIVE, b"")
    if isinstance(msg, NotePreferred):
        return _frame(FrameType.NOTE_PREFERRED, b"\x01" if msg.preferred else b"\x00")
    if isinstance(msg, PeerGone):
        return _frame(FrameType.PEER_GONE, _key(msg.key) + bytes((msg.reason,)))
    if isinstance(msg, PeerPresent):
        if len(msg.ip) != 16:
            raise ValueError("PeerPresent ip is 16 bytes (v4 as ::ffff:a.b.c.d)")
        return _frame(
            FrameType.PEER_PRESENT,
            _key(msg.key) + msg.ip + struct.pack(">HB", msg.port, msg.flags),
        )
    if isinstance(msg, WatchConns):
        return _frame(FrameType.WATCH_CONNS, b"")
    if isinstance(msg, ClosePeer):
        return _frame(FrameType.CLOSE_PEER, _key(msg.key))
    if isinstance(msg, Ping):
        if len(msg.data) != PING_DATA_LEN:
            raise ValueError("ping data is 8 bytes")
        return _frame(FrameType.PING, msg.data)
    if isinstance(msg, Pong):
        if len(msg.data) != PING_DATA_LEN:
            raise ValueError("pong data is 8 bytes")
        return _frame(FrameType.PONG, msg.data)
    if isinstance(msg, Health):
        return _frame(FrameType.HEALTH, msg.problem.encode())
    if isinstance(msg, Restarting):
        return _frame(FrameType.RESTARTING, _U32X2.pack(msg.reconnect_in_ms, msg.try_for_ms))
    if isinstance(msg, UnknownFrame):
        return _frame(msg.type, msg.payload)
    raise TypeError("not a DERP message: %r" % (msg,))


# ---------------------------------------------------------------------------------------------
# Decoding


def parse_payload(ftype: int, p: bytes) -> Frame:
    """Turn one frame's type and payload into its message. Raises ProtocolError."""
    n = len(p)
    if ftype == 0x04:
        if n < KEY_LEN:
            raise ProtocolError("short SendPacket")
        return SendPacket(p[:KEY_LEN], p[KEY_LEN:])
    if ftype == 0x05:
        if n < KEY_LEN:
            raise ProtocolError("short RecvPacket")
        return RecvPacket(p[:KEY_LEN], p[KEY_LEN:])
    if ftype == 0x0A:
        if n < 2 * KEY_LEN:
            raise ProtocolError("short ForwardPacket")
        return ForwardPacket(p[:KEY_LEN], p[KEY_LEN : 2 * KEY_LEN], p[2 * KEY_LEN :])
    if ftype == 0x01:
        if n < len(MAGIC) + KEY_LEN or p[: len(MAGIC)] != MAGIC:
            raise HandshakeError("bad ServerKey frame")
        return ServerKey(p[len(MAGIC) : len(MAGIC) + KEY_LEN])
    if ftype == 0x02:
        if n < KEY_LEN + NONCE_LEN:
            raise HandshakeError("short ClientInfo")
        return ClientInfo(p[:KEY_LEN], p[KEY_LEN : KEY_LEN + NONCE_LEN], p[KEY_LEN + NONCE_LEN :])
    if ftype == 0x03:
        if n < NONCE_LEN:
            raise HandshakeError("short ServerInfo")
        return ServerInfo(p[:NONCE_LEN], p[NONCE_LEN:])
    if ftype == 0x06:
        return KeepAlive()
    if ftype == 0x07:
        if n != 1:
            raise ProtocolError("bad NotePreferred")
        return NotePreferred(p[0] != 0)
    if ftype == 0x08:
        if n == KEY_LEN:
            return PeerGone(p)
        if n == KEY_LEN + 1:
            return PeerGone(p[:KEY_LEN], p[KEY_LEN])
        raise ProtocolError("bad PeerGone")
    if ftype == 0x09:
        if n == KEY_LEN:
            return PeerPresent(p)
        if n == KEY_LEN + 18:
            return PeerPresent(p[:KEY_LEN], p[32:48], int.from_bytes(p[48:50], "big"))
        if n == KEY_LEN + 19:
            return PeerPresent(p[:KEY_LEN], p[32:48], int.from_bytes(p[48:50], "big"), p[50])
        raise ProtocolError("bad PeerPresent")
    if ftype == 0x10:
        return WatchConns()
    if ftype == 0x11:
        if n != KEY_LEN:
            raise ProtocolError("bad ClosePeer")
        return ClosePeer(p)
    if ftype == 0x12:
        if n < PING_DATA_LEN:
            raise ProtocolError("short Ping")
        return Ping(p[:PING_DATA_LEN])
    if ftype == 0x13:
        if n < PING_DATA_LEN:
            raise ProtocolError("short Pong")
        return Pong(p[:PING_DATA_LEN])
    if ftype == 0x14:
        return Health(p.decode("utf-8", "replace"))
    if ftype == 0x15:
        if n < 8:
            raise ProtocolError("short Restarting")
        a, b = _U32X2.unpack_from(p)
        return Restarting(a, b)
    return UnknownFrame(ftype, p)


class FrameDecoder:
    """Incremental decoder: ``receive_data(bytes)`` then ``next_event()`` until NEED_DATA.

    ``limits`` maps frame type to the largest accepted payload; types not in it fall back to
    ``MAX_UNKNOWN_FRAME_LEN``. A header announcing more raises :class:`FrameTooLarge` at once,
    before any of the body is buffered. Any :class:`ProtocolError` ends the connection; the
    decoder is unusable afterwards.
    """

    __slots__ = ("_buf", "_pos", "_limits", "_unknown_limit", "_eof")

    def __init__(
        self,
        limits: dict[int, int] | None = None,
        unknown_limit: int = MAX_UNKNOWN_FRAME_LEN,
    ) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._limits = FRAME_LIMITS if limits is None else limits
        self._unknown_limit = unknown_limit
        self._eof = False

    def receive_data(self, data: bytes) -> None:
        """Append bytes from the peer; ``b""`` means EOF."""
        if not data:
            self._eof = True
            return
        if self._pos and self._pos * 2 >= len(self._buf):
            # Compact lazily so that many frames in one chunk cost O(n), not O(n^2).
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as events."""
        return len(self._buf) - self._pos

    def next_raw(self) -> tuple[int, bytes] | None:
        """The next complete frame as ``(type, payload)``, or None if more bytes are needed.

        The relay's hot path uses this to skip building a message object per packet. Raises
        ProtocolError on an oversized header or EOF inside a frame.
        """
        buf = self._buf
        pos = self._pos
        blen = len(buf)
        if blen - pos < HEADER_LEN:
            if self._eof and blen - pos:
                raise ProtocolError("EOF inside a frame header")
            return None
        ftype, length = _HDR.unpack_from(buf, pos)
        if length > self._limits.get(ftype, self._unknown_limit):
            raise FrameTooLarge(
                "frame type 0x%02x of %d bytes exceeds %d"
                % (ftype, length, self._limits.get(ftype, self._unknown_limit))
            )
        end = pos + HEADER_LEN + length
        if end > blen:
            if self._eof:
                raise ProtocolError("EOF inside a frame body")
            return None
        with memoryview(buf) as view:
            payload = bytes(view[pos + HEADER_LEN : end])  # one copy, out of the buffer
        if end == blen:
            buf.clear()
            self._pos = 0
        else:
            self._pos = end
        return ftype, payload

    def take_frames(self, limit: int) -> list[tuple[int, bytearray]]:
        """Up to ``limit`` complete frames as ``(type, whole frame)``; empty if none is complete.

        Each frame is a fresh bytearray holding the 5-byte header and the payload (one copy out
        of the buffer) that the caller owns and may rewrite in place: the relay turns a
        SendPacket into a RecvPacket that way, since both are ``header | key (32) | packet``.
        Frames before a bad one are returned first; the next call raises (FrameTooLarge, or
        ProtocolError for EOF inside a frame), like :meth:`next_raw`.
        """
        buf = self._buf
        pos = self._pos
        blen = len(buf)
        limits = self._limits
        unknown = self._unknown_limit
        unpack = _HDR.unpack_from
        out: list[tuple[int, bytearray]] = []
        while len(out) < limit and blen - pos >= HEADER_LEN:
            ftype, length = unpack(buf, pos)
            if length > limits.get(ftype, unknown):
                if out:
                    break
                raise FrameTooLarge(
                    "frame type 0x%02x of %d bytes exceeds %d"
                    % (ftype, length, limits.get(ftype, unknown))
                )
            end = pos + HEADER_LEN + length
            if end > blen:
                break
            out.append((ftype, buf[pos:end]))
            pos = end
        if pos == blen:
            buf.clear()
            pos = 0
        self._pos = pos
        if not out and self._eof and blen - pos:
            raise ProtocolError(
                "EOF inside a frame header" if blen - pos < HEADER_LEN
                else "EOF inside a frame body"
            )
        return out

    def next_event(self) -> Frame | _NeedData:
        """Return the next complete frame, or NEED_DATA.

        Raises ProtocolError (and subclasses) on malformed input, including EOF in the middle
        of a frame.
        """
        raw = self.next_raw()
        if raw is None:
            return NEED_DATA
        return parse_payload(raw[0], raw[1])

    def events(self) -> list[Frame]:
        """All complete frames buffered now (convenience for drivers and tests)."""
        out: list[Frame] = []
        while True:
            ev = self.next_event()
            if ev is NEED_DATA:
                return out
            out.append(ev)  # type: ignore[arg-type]


# Limits for each side of a connection. A server reads client frames: nothing the server
# itself sends (ServerInfo of 1 MiB etc.) needs to be accepted from a client.
SERVER_READ_LIMITS: Final[dict[int, int]] = {
    t: FRAME_LIMITS[t]
    for t in (
        FrameType.CLIENT_INFO, FrameType.SEND_PACKET, FrameType.NOTE_PREFERRED,
        FrameType.FORWARD_PACKET, FrameType.WATCH_CONNS, FrameType.CLOSE_PEER,
        FrameType.PING, FrameType.PONG, FrameType.KEEP_ALIVE,
    )
}
CLIENT_READ_LIMITS: Final[dict[int, int]] = dict(FRAME_LIMITS)


def server_decoder() -> FrameDecoder:
    """A decoder for frames a server reads from a client (unknown types skipped, ≤ 1 KiB)."""
    return FrameDecoder(SERVER_READ_LIMITS, unknown_limit=MAX_SERVER_KEY_LEN)


def client_decoder() -> FrameDecoder:
    """A decoder for frames a client reads from a server."""
    return FrameDecoder(CLIENT_READ_LIMITS)


# ---------------------------------------------------------------------------------------------
# Handshake payloads (NaCl box, derp.md §3)


def seal_client_info(
    client_private: bytes,
    server_public: bytes,
    info: dict[str, Any],
    nonce: bytes | None = None,
) -> ClientInfo:
    """Build the ClientInfo message: JSON sealed to the server key with the client key.

    ``nonce`` defaults to 24 random bytes; tests pass a fixed one to compare with vectors.
    """
    priv = nacl.public.PrivateKey(client_private)
    box = nacl.public.Box(priv, nacl.public.PublicKey(server_public))
    nonce = nacl.utils.random(NONCE_LEN) if nonce is None else nonce
    body = json.dumps(info, separators=(",", ":")).encode()
    sealed = box.encrypt(body, nonce).ciphertext
    return ClientInfo(bytes(priv.public_key), nonce, sealed)


def open_client_info(server_private: bytes, msg: ClientInfo) -> dict[str, Any]:
    """Open a ClientInfo box and parse its JSON object. Raises HandshakeError."""
    return _open_json(server_private, msg.key, msg.nonce, msg.sealed)


def seal_server_info(
    server_private: bytes,
    client_public: bytes,
    info: dict[str, Any],
    nonce: bytes | None = None,
) -> ServerInfo:
    """Build the ServerInfo message sealed to ``client_public``."""
    box = nacl.public.Box(
        nacl.public.PrivateKey(server_private), nacl.public.PublicKey(client_public)
    )
    nonce = nacl.utils.random(NONCE_LEN) if nonce is None else nonce
    body = json.dumps(info, separators=(",", ":")).encode()
    return ServerInfo(nonce, box.encrypt(body, nonce).ciphertext)


def open_server_info(
    client_private: bytes, server_public: bytes, msg: ServerInfo
) -> dict[str, Any]:
    """Open a ServerInfo box and parse its JSON object. Raises HandshakeError."""
    return _open_json(client_private, server_public, msg.nonce, msg.sealed)


def _open_json(priv: bytes, pub: bytes, nonce: bytes, sealed: bytes) -> dict[str, Any]:
    try:
        box = nacl.public.Box(nacl.public.PrivateKey(priv), nacl.public.PublicKey(pub))
        plain = box.decrypt(sealed, nonce)
        obj = json.loads(plain)
    except RecursionError:
        # JSON nested deeper than the interpreter's stack fits in a box of MAX_CLIENT_INFO_LEN
        # and is sent before any authentication.
        raise HandshakeError("handshake JSON is nested too deeply") from None
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
        raise HandshakeError("cannot open handshake box: %s" % exc.__class__.__name__) from None
    if not isinstance(obj, dict):
        raise HandshakeError("handshake JSON is not an object")
    return obj


def public_key(private: bytes) -> bytes:
    """The Curve25519 public key for a 32-byte private key."""
    return bytes(nacl.public.PrivateKey(private).public_key)


def generate_private_key() -> bytes:
    """32 random bytes suitable as a DERP/node private key."""
    return bytes(nacl.public.PrivateKey.generate())
