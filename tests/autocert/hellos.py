"""Builders of ClientHello bytes for the parser tests."""

from __future__ import annotations

import struct


def ext(ext_type: int, data: bytes) -> bytes:
    return struct.pack("!HH", ext_type, len(data)) + data


def sni_ext(name: bytes) -> bytes:
    entry = b"\x00" + struct.pack("!H", len(name)) + name
    return ext(0, struct.pack("!H", len(entry)) + entry)


def alpn_ext(*protos: bytes) -> bytes:
    body = b"".join(bytes([len(p)]) + p for p in protos)
    return ext(16, struct.pack("!H", len(body)) + body)


def hello_body(extensions: bytes | None, *, version: int = 0x0303, session_id: bytes = b"\x11" * 32,
               suites: bytes = b"\x13\x01\xc0\x2f", compression: bytes = b"\x00") -> bytes:
    body = struct.pack("!H", version) + b"\x22" * 32
    body += bytes([len(session_id)]) + session_id
    body += struct.pack("!H", len(suites)) + suites
    body += bytes([len(compression)]) + compression
    if extensions is not None:
        body += struct.pack("!H", len(extensions)) + extensions
    return body


def handshake(body: bytes, msg_type: int = 1) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def records(msg: bytes, *, size: int = 2**14, content_type: int = 22) -> bytes:
    """Split a handshake message into TLS records of at most size bytes."""
    out = b""
    for i in range(0, len(msg), size):
        frag = msg[i:i + size]
        out += bytes([content_type]) + b"\x03\x01" + struct.pack("!H", len(frag)) + frag
    return out


def client_hello(server_name: bytes | None = b"example.com",
                 alpn: tuple[bytes, ...] = (b"http/1.1",), *, size: int = 2**14) -> bytes:
    exts = b""
    if server_name is not None:
        exts += sni_ext(server_name)
    if alpn:
        exts += alpn_ext(*alpn)
    exts += ext(43, b"\x02\x03\x04")  # supported_versions, ignored by the parser
    return records(handshake(hello_body(exts)), size=size)
