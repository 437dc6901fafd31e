"""Byte-level tests of the ClientHello reader: no sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

from autocert.clienthello import MAX_CLIENT_HELLO_LEN, ClientHello, ClientHelloReader
from autocert.errors import ClientHelloError

from .hellos import (alpn_ext, client_hello, ext, handshake, hello_body, records, sni_ext)

CAPTURE = Path(__file__).parent / "data" / "clienthello-openssl3-example.com.bin"


def feed_whole(data: bytes) -> ClientHello | None:
    return ClientHelloReader().receive_data(data)


def feed_bytewise(data: bytes) -> ClientHello | None:
    reader = ClientHelloReader()
    result = None
    for i in range(len(data)):
        result = reader.receive_data(data[i:i + 1])
        if i < len(data) - 1:
            assert result is None
    assert reader.data == data
    return result


def test_captured_openssl_client_hello() -> None:
    # Captured from Python's ssl (OpenSSL 3) with server_hostname="Example.COM" and
    # ALPN ["h2", "http/1.1"].
    data = CAPTURE.read_bytes()
    expected = ClientHello("example.com", ("h2", "http/1.1"))
    assert feed_whole(data) == expected
    assert feed_bytewise(data) == expected


def test_live_client_hello_from_ssl_module() -> None:
    import ssl
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["acme-tls/1"])
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="ts.example.net")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    assert feed_whole(out.read()) == ClientHello("ts.example.net", ("acme-tls/1",))


def test_constructed_hello_whole_bytewise_and_split_records() -> None:
    data = client_hello(b"a.example", (b"acme-tls/1", b"http/1.1"))
    expected = ClientHello("a.example", ("acme-tls/1", "http/1.1"))
    assert feed_whole(data) == expected
    assert feed_bytewise(data) == expected
    # The same handshake message fragmented over many 7-byte records (RFC 8446 5.1 allows it).
    assert feed_bytewise(client_hello(b"a.example", (b"acme-tls/1", b"http/1.1"), size=7)) == expected


def test_bytes_after_hello_are_kept_for_replay() -> None:
    data = client_hello()
    reader = ClientHelloReader()
    assert reader.receive_data(data + b"\x17\x03\x03") is not None
    assert reader.data == data + b"\x17\x03\x03"
    assert reader.receive_data(b"more") is not None
    assert reader.data.endswith(b"more")


def test_no_sni_no_alpn_and_no_extensions() -> None:
    assert feed_whole(client_hello(None, ())) == ClientHello(None, ())
    assert feed_whole(records(handshake(hello_body(None)))) == ClientHello(None, ())


def test_sni_trailing_dot_and_case() -> None:
    assert feed_whole(client_hello(b"WWW.Example.ORG.")).server_name == "www.example.org"


def test_every_truncation_of_a_valid_hello_waits_for_more() -> None:
    data = client_hello()
    for n in range(len(data)):
        assert ClientHelloReader().receive_data(data[:n]) is None


def test_truncated_inner_vector_is_an_error() -> None:
    # The record and handshake lengths are complete, but the extensions claim more bytes.
    exts = sni_ext(b"example.com")
    body = hello_body(None) + (len(exts) + 10).to_bytes(2, "big") + exts
    with pytest.raises(ClientHelloError, match="truncated"):
        feed_whole(records(handshake(body)))


@pytest.mark.parametrize("data, match", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not a TLS handshake"),
    (b"\x80\x2e\x01\x03\x01", "not a TLS handshake"),                   # SSLv2 hello
    (b"\x16\x02\x00\x00\x05", "record version"),
    (b"\x16\x03\x01\x00\x00", "bad record length"),
    (b"\x16\x03\x01\x40\x01", "bad record length"),                     # 2^14 + 1
    (records(handshake(hello_body(b""), msg_type=2)), "not ClientHello"),
    (records(b"\x01\xff\xff\xff"), "too large"),
    (client_hello()[:5] + b"\x15" + client_hello()[6:], "not ClientHello"),
])
def test_malformed_records(data: bytes, match: str) -> None:
    with pytest.raises(ClientHelloError, match=match):
        feed_whole(data)


def test_alert_record_between_fragments_is_refused() -> None:
    data = client_hello(size=20)
    first = data[:25]
    with pytest.raises(ClientHelloError):
        reader = ClientHelloReader()
        reader.receive_data(first)
        reader.receive_data(b"\x15\x03\x03\x00\x02\x02\x28")


def test_declared_size_limit() -> None:
    assert MAX_CLIENT_HELLO_LEN == 65536
    header = b"\x01" + (MAX_CLIENT_HELLO_LEN + 1).to_bytes(3, "big")
    with pytest.raises(ClientHelloError, match="too large"):
        feed_whole(records(header))


@pytest.mark.parametrize("exts, match", [
    (sni_ext(b"a.example") + sni_ext(b"b.example"), "duplicate extension"),
    (alpn_ext(b"h2") + alpn_ext(b"http/1.1"), "duplicate extension"),
    (ext(16, b"\x00\x00"), "empty ALPN list"),
    (ext(16, b"\x00\x01\x00"), "empty ALPN protocol"),
    (ext(16, b"\x00\x05\x08http"), "truncated"),
    (sni_ext("bücher.example".encode()), "not ASCII"),
    (sni_ext(b"a b.example"), "bad characters"),
    (sni_ext(b""), "bad characters"),
    (ext(0, b"\x00\x0a\x00\x00\x07abc"), "truncated"),
    (ext(0, b"\x00\x03\x00\x00\x00" + b"x"), "trailing bytes"),
])
def test_malformed_extensions(exts: bytes, match: str) -> None:
    with pytest.raises(ClientHelloError, match=match):
        feed_whole(records(handshake(hello_body(exts))))


@pytest.mark.parametrize("kwargs, match", [
    (dict(version=0x0300), "SSL version"),
    (dict(session_id=b"\x00" * 33), "session_id"),
    (dict(suites=b"\x13"), "cipher_suites"),
    (dict(suites=b""), "cipher_suites"),
    (dict(compression=b""), "compression"),
])
def test_malformed_hello_fields(kwargs: dict, match: str) -> None:
    with pytest.raises(ClientHelloError, match=match):
        feed_whole(records(handshake(hello_body(b"", **kwargs))))


def test_trailing_bytes_after_extensions() -> None:
    body = hello_body(alpn_ext(b"h2")) + b"\x00"
    with pytest.raises(ClientHelloError, match="trailing"):
        feed_whole(records(handshake(body)))


def test_unknown_name_type_is_skipped() -> None:
    entry = b"\x01\x00\x03abc"
    data = records(handshake(hello_body(ext(0, len(entry).to_bytes(2, "big") + entry))))
    assert feed_whole(data) == ClientHello(None, ())
