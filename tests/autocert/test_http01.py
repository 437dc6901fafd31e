"""The port-80 server: pure decision function, then the h11 driver over real sockets."""

from __future__ import annotations

import trio
import trio.testing

from autocert.http01 import handle_http01_connection, response_for, serve_http01

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"


class Source:
    hostname = "ts.example.net"

    def http01_response(self, token: str) -> bytes | None:
        return b"keyauth" if token == TOKEN else None


class NoHostname:
    def http01_response(self, token: str) -> bytes | None:
        return None


def test_challenge_answer_and_unknown_token() -> None:
    assert response_for(Source(), "GET", f"/.well-known/acme-challenge/{TOKEN}", "x")[::2] == (200, b"keyauth")
    assert response_for(Source(), "GET", "/.well-known/acme-challenge/nope", "x")[0] == 404
    assert response_for(Source(), "GET", "/.well-known/acme-challenge/../../etc", "x")[0] == 404
    assert response_for(Source(), "POST", f"/.well-known/acme-challenge/{TOKEN}", "x")[0] == 404
    assert response_for(Source(), "HEAD", f"/.well-known/acme-challenge/{TOKEN}", "x")[::2] == (200, b"")


def test_redirects_to_https_on_our_hostname() -> None:
    status, headers, _ = response_for(Source(), "GET", "/web?x=1", "evil.example")
    assert status == 301 and ("Location", "https://ts.example.net/web?x=1") in headers
    status, headers, _ = response_for(Source(), "GET", "http://evil/", None, https_port=8443)
    assert ("Location", "https://ts.example.net:8443/") in headers


def test_redirect_from_host_header_when_no_hostname() -> None:
    status, headers, _ = response_for(NoHostname(), "GET", "/a", "files.example:80")
    assert ("Location", "https://files.example/a") in headers
    assert response_for(NoHostname(), "GET", "/a", "bad/host")[0] == 400
    assert response_for(NoHostname(), "GET", "/a", None)[0] == 400


async def roundtrip(request: bytes) -> bytes:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(request)
    await handle_http01_connection(Source(), server)
    out = b""
    while chunk := await client.receive_some(4096):
        out += chunk
    return out


async def test_driver_answers_and_closes() -> None:
    out = await roundtrip(f"GET /.well-known/acme-challenge/{TOKEN} HTTP/1.1\r\nHost: ts\r\n\r\n".encode())
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"\r\n\r\nkeyauth")
    out = await roundtrip(b"GET /x HTTP/1.1\r\nHost: ts\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 301 ") and b"location: https://ts.example.net/x" in out.lower()


async def test_driver_bad_request() -> None:
    out = await roundtrip(b"\x16\x03\x01garbage\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400")


async def test_driver_slow_client(autojump_clock) -> None:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(b"GET / HTTP/1.1\r\n")
    start = trio.current_time()
    await handle_http01_connection(Source(), server)
    assert trio.current_time() - start >= 10


async def test_serve_http01_on_loopback() -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve_http01, Source(), "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(f"GET /.well-known/acme-challenge/{TOKEN} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        out = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(4096):
                out += chunk
        nursery.cancel_scope.cancel()
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"keyauth")
