"""TLSAcceptor: route a TCP connection by its ClientHello, then hand it to trio.SSLStream."""

from __future__ import annotations

import logging
import ssl
from typing import Protocol

import trio

from .clienthello import ClientHelloReader
from .errors import ClientHelloError
from .tlsconfig import ACME_TLS_ALPN

log = logging.getLogger(__name__)

# Clients send the ClientHello at once; a slow or silent peer must not hold a task.
HANDSHAKE_TIMEOUT = 10.0
RECEIVE_CHUNK = 4096


class CertificateSource(Protocol):
    """What the acceptor needs; CertManager and StaticCertificate both provide it."""

    def current_context(self) -> ssl.SSLContext | None: ...

    def challenge_context(self, server_name: str | None) -> ssl.SSLContext | None: ...


class ReplayStream(trio.abc.Stream):
    """A stream that first yields bytes already read from the transport, then the transport.

    The acceptor reads the ClientHello itself to choose the SSLContext; OpenSSL must still
    see those bytes, so they are given back through this wrapper.
    """

    def __init__(self, prefix: bytes, transport: trio.abc.Stream) -> None:
        self._prefix = prefix
        self.transport = transport

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            if max_bytes is None or max_bytes >= len(self._prefix):
                out, self._prefix = self._prefix, b""
            else:
                out, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            await trio.lowlevel.checkpoint()
            return out
        return await self.transport.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        # HalfCloseableStream only when the transport is; SSLStream never calls this.
        await self.transport.send_eof()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        await self.transport.aclose()


class TLSAcceptor:
    """Accepts TLS on TCP streams for a certificate source.

    Args:
        source: a :class:`~autocert.CertManager` or :class:`~autocert.StaticCertificate`.
        handshake_timeout: seconds allowed for the ClientHello and the whole handshake.
    """

    def __init__(self, source: CertificateSource, *,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self.source = source
        self.handshake_timeout = handshake_timeout

    async def accept(self, tcp_stream: trio.abc.Stream) -> trio.SSLStream[trio.abc.Stream] | None:
        """Complete the TLS handshake on tcp_stream.

        Returns the handshaken SSLStream, which the caller then owns and closes. Returns None
        (after closing tcp_stream) when the connection was an acme-tls/1 validation, which
        ends at the handshake (RFC 8737 3), or when the peer failed, was too slow, or no
        certificate is available yet. Raises only Cancelled.
        """
        peer = _peer(tcp_stream)
        ssl_stream: trio.SSLStream[trio.abc.Stream] | None = None
        try:
            with trio.fail_after(self.handshake_timeout):
                reader = ClientHelloReader()
                while True:
                    data = await tcp_stream.receive_some(RECEIVE_CHUNK)
                    if not data:
                        raise ClientHelloError("peer closed before sending a ClientHello")
                    hello = reader.receive_data(data)
                    if hello is not None:
                        break
                ctx = None
                if ACME_TLS_ALPN in hello.alpn_protocols:
                    ctx = self.source.challenge_context(hello.server_name)
                # A probe offering acme-tls/1 with no validation pending gets the ordinary
                # certificate, whose context does not offer acme-tls/1, so it never matches.
                challenge = ctx is not None
                if ctx is None:
                    ctx = self.source.current_context()
                if ctx is None:
                    log.warning("tls %s: no certificate yet for %s; closing", peer,
                                hello.server_name)
                    await _close(tcp_stream)
                    return None
                ssl_stream = trio.SSLStream(ReplayStream(reader.data, tcp_stream), ctx,
                                            server_side=True, https_compatible=True)
                await ssl_stream.do_handshake()
            if challenge and ssl_stream.selected_alpn_protocol() == ACME_TLS_ALPN:
                log.info("tls %s: answered acme-tls/1 validation for %s", peer, hello.server_name)
                await _close(ssl_stream)
                return None
            return ssl_stream
        except ClientHelloError as exc:
            log.debug("tls %s: not a usable ClientHello: %s", peer, exc)
        except trio.TooSlowError:
            log.debug("tls %s: handshake timed out", peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError) as exc:
            log.debug("tls %s: handshake failed: %s", peer, exc)
        await _close(ssl_stream if ssl_stream is not None else tcp_stream)
        return None


async def _close(stream: trio.abc.AsyncResource) -> None:
    # An SSLStream's aclose tries to send close_notify; a dead peer must not delay us.
    with trio.move_on_after(1, shield=True) as scope:
        try:
            await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
            pass
    if scope.cancelled_caught and isinstance(stream, trio.SSLStream):
        await trio.aclose_forcefully(stream.transport_stream)


def _peer(stream: trio.abc.Stream) -> str:
    sock = getattr(stream, "socket", None)
    try:
        addr = sock.getpeername() if sock is not None else None
    except OSError:
        addr = None
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return "?"
