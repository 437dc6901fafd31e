"""Sans-IO reader of a TLS ClientHello: just enough to route a connection.

Python's ssl module only shows SNI to its servername callback, and never the client's ALPN
offer, but the acme-tls/1 validation (RFC 8737) must be answered with a different certificate
before the handshake starts. So the acceptor reads the first handshake message itself, picks
the SSLContext, and replays the bytes into OpenSSL.

Layout (RFC 8446 section 5.1 and 4.1.2; TLS 1.0 to 1.3 use the same outer shape)::

    TLSPlaintext: type(1)=22 | legacy_record_version(2) | length(2) | fragment
    Handshake:    msg_type(1)=1 | length(3) | ClientHello
    ClientHello:  legacy_version(2) | random(32) | session_id<0..32> (1-byte length)
                  | cipher_suites<2..2^16-2> (2) | compression_methods<1..2^8-1> (1)
                  | extensions<0..2^16-1> (2, absent in very old clients)
    Extension:    type(2) | length(2) | data
    server_name (0):  list length(2) | name_type(1)=0 | host_name length(2) | host_name
    ALPN (16):        list length(2) | (name length(1) | name)+

A handshake message may be split over several records; records of other types must not be
interleaved before the ClientHello is complete.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ClientHelloError

RECORD_HEADER_LEN = 5
HANDSHAKE_HEADER_LEN = 4
CONTENT_TYPE_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16

# RFC 8446 5.1: a plaintext record carries at most 2^14 bytes; anything longer is an attack
# or not TLS, and rejecting it early bounds what we buffer per connection.
MAX_RECORD_LEN = 2**14
# Bounds the buffered handshake message. Real ClientHellos are well under 2 KiB, post-quantum
# key shares included; Go's crypto/tls uses the same 64 KiB ceiling for handshake messages.
MAX_CLIENT_HELLO_LEN = 2**16


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What routing needs from a ClientHello."""

    server_name: str | None
    alpn_protocols: tuple[str, ...]


class ClientHelloReader:
    """Accumulates the first bytes of a TLS connection until the ClientHello is complete.

    Feed bytes with :meth:`receive_data`; it returns the parsed :class:`ClientHello` once the
    whole message has arrived, None while more bytes are needed, and raises
    :class:`ClientHelloError` on anything that is not a well-formed ClientHello. Every byte fed
    is kept in :attr:`data` so the caller can replay it into the real TLS implementation.
    """

    def __init__(self) -> None:
        self._data = bytearray()
        self._consumed = 0  # bytes of _data already split into records
        self._handshake = bytearray()
        self._result: ClientHello | None = None

    @property
    def data(self) -> bytes:
        """Every byte received so far, for replay."""
        return bytes(self._data)

    def receive_data(self, data: bytes) -> ClientHello | None:
        """Add bytes from the peer; return the ClientHello once complete, else None."""
        self._data += data
        if self._result is not None:
            return self._result
        while True:
            avail = len(self._data) - self._consumed
            if avail < RECORD_HEADER_LEN:
                return None
            header = self._data[self._consumed:self._consumed + RECORD_HEADER_LEN]
            content_type = header[0]
            length = int.from_bytes(header[3:5], "big")
            if content_type != CONTENT_TYPE_HANDSHAKE:
                # Also catches SSLv2-style hellos (high bit set) and plain HTTP on the TLS port.
                raise ClientHelloError(f"first record is not a TLS handshake (type {content_type})")
            if header[1] != 3:
                raise ClientHelloError(f"unknown record version {header[1]}.{header[2]}")
            if length == 0 or length > MAX_RECORD_LEN:
                raise ClientHelloError(f"bad record length {length}")
            if avail < RECORD_HEADER_LEN + length:
                return None
            start = self._consumed + RECORD_HEADER_LEN
            self._handshake += self._data[start:start + length]
            self._consumed = start + length
            if len(self._handshake) >= HANDSHAKE_HEADER_LEN:
                if self._handshake[0] != HANDSHAKE_CLIENT_HELLO:
                    raise ClientHelloError(
                        f"first handshake message is type {self._handshake[0]}, not ClientHello")
                body_len = int.from_bytes(self._handshake[1:4], "big")
                if body_len > MAX_CLIENT_HELLO_LEN:
                    raise ClientHelloError(f"ClientHello of {body_len} bytes is too large")
                if len(self._handshake) >= HANDSHAKE_HEADER_LEN + body_len:
                    body = bytes(self._handshake[HANDSHAKE_HEADER_LEN:
                                                 HANDSHAKE_HEADER_LEN + body_len])
                    self._result = parse_client_hello_body(body)
                    return self._result


class _Cursor:
    """Bounds-checked reads over a byte string; every overrun is a ClientHelloError."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > self.end:
            raise ClientHelloError(f"truncated ClientHello in {what}")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int, what: str) -> int:
        return int.from_bytes(self.take(n, what), "big")

    def vector(self, len_bytes: int, what: str) -> "_Cursor":
        n = self.uint(len_bytes, what)
        if self.pos + n > self.end:
            raise ClientHelloError(f"truncated ClientHello in {what}")
        sub = _Cursor(self.buf, self.pos, self.pos + n)
        self.pos += n
        return sub

    def take_all(self) -> bytes:
        return self.take(self.remaining, "vector")

    @property
    def remaining(self) -> int:
        return self.end - self.pos


def parse_client_hello_body(body: bytes) -> ClientHello:
    """Parse the body of a ClientHello handshake message (after its 4-byte header)."""
    cur = _Cursor(body)
    version = cur.uint(2, "legacy_version")
    if version < 0x0301:
        # SSL 3.0 and older: we only serve TLS 1.2+, and OpenSSL would refuse anyway.
        raise ClientHelloError(f"client offers only SSL version {version:#06x}")
    cur.take(32, "random")
    session_id = cur.vector(1, "session_id")
    if session_id.remaining > 32:
        raise ClientHelloError("session_id longer than 32 bytes")
    suites = cur.vector(2, "cipher_suites")
    if suites.remaining < 2 or suites.remaining % 2:
        raise ClientHelloError("bad cipher_suites length")
    compression = cur.vector(1, "compression_methods")
    if compression.remaining < 1:
        raise ClientHelloError("empty compression_methods")
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    if cur.remaining == 0:
        # Pre-extension clients (RFC 5246 7.4.1.2 allows omitting the block).
        return ClientHello(None, ())
    exts = cur.vector(2, "extensions")
    if cur.remaining:
        raise ClientHelloError("trailing bytes after extensions")
    seen: set[int] = set()
    while exts.remaining:
        ext_type = exts.uint(2, "extension type")
        ext = exts.vector(2, "extension data")
        # RFC 8446 4.2: at most one extension of each type; a duplicate could make us route on
        # one value while OpenSSL acts on the other.
        if ext_type in seen:
            raise ClientHelloError(f"duplicate extension {ext_type}")
        seen.add(ext_type)
        if ext_type == EXT_SERVER_NAME:
            server_name = _parse_server_name(ext)
        elif ext_type == EXT_ALPN:
            alpn = _parse_alpn(ext)
    return ClientHello(server_name, alpn)


def _parse_server_name(ext: _Cursor) -> str | None:
    names = ext.vector(2, "server_name_list")
    if ext.remaining:
        raise ClientHelloError("trailing bytes in server_name")
    host: str | None = None
    while names.remaining:
        name_type = names.uint(1, "server_name type")
        name = names.vector(2, "server_name").take_all()
        if name_type != 0:
            continue  # RFC 6066 3: unknown name types are skipped
        if host is not None:
            raise ClientHelloError("more than one host_name in server_name")
        try:
            text = name.decode("ascii")
        except UnicodeDecodeError:
            # RFC 6066 3: host_name is an A-label (punycode), ASCII only.
            raise ClientHelloError("server_name is not ASCII") from None
        if not text or any(c.isspace() or c in "/\\\x00" for c in text):
            raise ClientHelloError("server_name has bad characters")
        host = text.rstrip(".").lower()  # trailing dot is not allowed, but tolerated by browsers
    return host


def _parse_alpn(ext: _Cursor) -> tuple[str, ...]:
    protos = ext.vector(2, "ALPN list")
    if ext.remaining:
        raise ClientHelloError("trailing bytes in ALPN")
    out = []
    while protos.remaining:
        proto = protos.vector(1, "ALPN protocol").take_all()
        if not proto:
            raise ClientHelloError("empty ALPN protocol name")  # RFC 7301 3.1
        out.append(proto.decode("latin-1"))
    if not out:
        raise ClientHelloError("empty ALPN list")
    return tuple(out)
