"""TLSAcceptor over in-memory streams, with trio's SSLStream as the client."""

from __future__ import annotations

import ssl

import pytest
import trio
import trio.testing
import trustme
from cryptography import x509

from autocert import TLSAcceptor
from autocert.acceptor import ReplayStream
from autocert.tlsconfig import ACME_IDENTIFIER_OID, challenge_context, load_pair

HOST = "ts.example.net"


class Source:
    def __init__(self, ctx: ssl.SSLContext | None, challenge: ssl.SSLContext | None = None) -> None:
        self.ctx, self.challenge = ctx, challenge

    def current_context(self) -> ssl.SSLContext | None:
        return self.ctx

    def challenge_context(self, server_name: str | None) -> ssl.SSLContext | None:
        return self.challenge if server_name == HOST else None


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    leaf = ca.issue_cert(HOST)
    chain = b"".join(b.bytes() for b in leaf.cert_chain_pems)
    return load_pair(chain, leaf.private_key_pem.bytes())[0]


def client_ctx(ca: trustme.CA | None, alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ca.configure_trust(ctx)
    ctx.set_alpn_protocols(alpn)
    return ctx


async def handshake(source: Source, ctx: ssl.SSLContext, server_name: str = HOST):
    client_raw, server_raw = trio.testing.memory_stream_pair()
    client = trio.SSLStream(client_raw, ctx, server_hostname=server_name)
    result: dict[str, object] = {}

    async def server() -> None:
        result["stream"] = await TLSAcceptor(source).accept(server_raw)

    async def do_client() -> None:
        try:
            await client.do_handshake()
            result["alpn"] = client.selected_alpn_protocol()
            result["peer"] = client.getpeercert(binary_form=True)
        except (trio.BrokenResourceError, ssl.SSLError) as exc:
            result["client_error"] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        nursery.start_soon(do_client)
    return result, client


async def test_normal_handshake_with_alpn(ca: trustme.CA, server_ctx: ssl.SSLContext) -> None:
    result, client = await handshake(Source(server_ctx), client_ctx(ca, ["h2", "http/1.1"]))
    stream = result["stream"]
    assert isinstance(stream, trio.SSLStream)
    assert result["alpn"] == "http/1.1" == stream.selected_alpn_protocol()
    # data flows both ways after the replayed ClientHello
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"ping")
        assert await stream.receive_some(10) == b"ping"
    await stream.send_all(b"pong")
    assert await client.receive_some(10) == b"pong"


async def test_acme_tls_alpn_validation_gets_challenge_cert(server_ctx: ssl.SSLContext) -> None:
    chal = challenge_context(HOST, "token.thumb", now=1_800_000_000)
    result, _ = await handshake(Source(server_ctx, chal), client_ctx(None, ["acme-tls/1"]))
    assert result["stream"] is None  # validation connections end at the handshake
    assert result["alpn"] == "acme-tls/1"
    cert = x509.load_der_x509_certificate(result["peer"])
    assert cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID).critical


async def test_acme_tls_alpn_without_pending_challenge(ca, server_ctx) -> None:
    result, _ = await handshake(Source(server_ctx, None), client_ctx(ca, ["acme-tls/1"]))
    stream = result["stream"]
    assert isinstance(stream, trio.SSLStream) and stream.selected_alpn_protocol() is None


async def test_no_certificate_yet_closes(server_ctx) -> None:
    result, _ = await handshake(Source(None), client_ctx(None, ["http/1.1"]))
    assert result["stream"] is None and "client_error" in result


async def test_plain_http_on_tls_port_is_closed() -> None:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await TLSAcceptor(Source(None)).accept(server) is None
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(3):
            await client.send_all(b"x")
            await trio.testing.wait_all_tasks_blocked()


async def test_silent_client_times_out(autojump_clock: trio.testing.MockClock) -> None:
    client, server = trio.testing.memory_stream_pair()
    start = trio.current_time()
    assert await TLSAcceptor(Source(None), handshake_timeout=10).accept(server) is None
    assert trio.current_time() - start == pytest.approx(10)


async def test_peer_closing_early() -> None:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(b"\x16\x03\x01\x00")
    await client.aclose()
    assert await TLSAcceptor(Source(None)).accept(server) is None


async def test_replay_stream_yields_prefix_then_transport() -> None:
    a, b = trio.testing.memory_stream_pair()
    replay = ReplayStream(b"hello", b)
    assert await replay.receive_some(2) == b"he"
    assert await replay.receive_some() == b"llo"
    await a.send_all(b"world")
    assert await replay.receive_some(100) == b"world"
    await replay.send_all(b"back")
    assert await a.receive_some(10) == b"back"
    await replay.aclose()
