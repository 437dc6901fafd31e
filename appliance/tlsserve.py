"""TLS on the main listener: wrap each accepted TCP stream in a ``trio.SSLStream``.

Where the ``ssl.SSLContext`` comes from is not this module's business: it takes a *provider*,
a callable returning the context to use for the next connection. Manual certificates
(``tls_cert_path`` / ``tls_key_path``) are one provider (:class:`CertificateFiles`); the ACME
manager in ``autocert/`` plugs in the same way (its context answers SNI and ``acme-tls/1``).

The provider is called once per accepted connection, so a renewed certificate is used from
the next connection on without restarting the listener.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path
from typing import Awaitable, Callable

import trio

log = logging.getLogger(__name__)

# A client gets this long to complete the TLS handshake; a TCP connection that never speaks
# TLS must not hold a task and a socket for ever (slowloris before the HTTP deadlines apply).
HANDSHAKE_TIMEOUT = 10.0

ContextProvider = Callable[[], ssl.SSLContext]
Handler = Callable[[trio.abc.Stream], Awaitable[None]]


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """A server context for a PEM chain and key: TLS 1.2 or newer, ALPN ``http/1.1``.

    Raises OSError / ssl.SSLError when the files are missing or do not match.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # Tailscale's DERP and control clients speak HTTP/1.1 only (HTTP/2 runs inside Noise).
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(str(cert_path), str(key_path))
    return ctx


class CertificateFiles:
    """A provider for manual certificates: reloads the files when either one changes on disk.

    A failed reload (say, the key written before the chain) keeps the previous context and
    logs it; the next connection tries again.
    """

    def __init__(self, cert_path: Path, key_path: Path) -> None:
        self.cert_path = Path(cert_path)
        self.key_path = Path(key_path)
        self._stamp = self._mtimes()
        self._ctx = server_context(self.cert_path, self.key_path)  # bad files fail at start

    def _mtimes(self) -> tuple[int, int]:
        return (os.stat(self.cert_path).st_mtime_ns, os.stat(self.key_path).st_mtime_ns)

    def __call__(self) -> ssl.SSLContext:
        try:
            stamp = self._mtimes()
            if stamp != self._stamp:
                self._ctx = server_context(self.cert_path, self.key_path)
                self._stamp = stamp
                log.info("tls: reloaded certificate %s", self.cert_path)
        except (OSError, ssl.SSLError) as e:
            log.error("tls: cannot reload %s / %s, keeping the old certificate: %s",
                      self.cert_path, self.key_path, e)
        return self._ctx


def tls_handler(handler: Handler, contexts: ContextProvider, *,
                handshake_timeout: float = HANDSHAKE_TIMEOUT) -> Handler:
    """Wrap ``handler`` (which serves a plain stream) so that it serves TLS streams.

    The returned coroutine function takes an accepted TCP stream, completes the server-side
    handshake within ``handshake_timeout`` and hands the ``SSLStream`` to ``handler``, which
    then owns it (and closes it). A failed or slow handshake closes the TCP stream, logs at
    DEBUG (scanners and plain-HTTP clients are common, not our fault) and returns.
    """

    async def serve_tls(stream: trio.abc.Stream) -> None:
        try:
            ctx = contexts()
        except Exception:
            log.exception("tls: no certificate available; closing the connection")
            await trio.aclose_forcefully(stream)
            return
        # https_compatible: HTTP clients often close without close_notify; that is not an error.
        tls = trio.SSLStream(stream, ctx, server_side=True, https_compatible=True)
        try:
            with trio.fail_after(handshake_timeout):
                await tls.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError) as e:
            log.debug("tls: handshake with %s failed: %r", _peer(stream), e)
            await trio.aclose_forcefully(stream)
            return
        await handler(tls)

    return serve_tls


def _peer(stream: trio.abc.Stream) -> str:
    sock = getattr(stream, "socket", None)
    try:
        addr = sock.getpeername() if sock is not None else None
    except OSError:
        addr = None
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else "?"


def tls_for_config(cfg, handler: Handler) -> Handler:
    """The main listener's connection handler for ``cfg``: ``handler`` behind TLS when
    ``tls_cert_path``/``tls_key_path`` are set, else ``handler`` itself (plain HTTP: behind a
    TLS-terminating proxy, or tests). Raises ConfigError when the files cannot be used.

    ACME (``tls_letsencrypt_hostname``) is autocert's: it will pass its own provider to
    :func:`tls_handler` here.
    """
    from .config import ConfigError

    if cfg.tls.uses_files:
        try:
            provider = CertificateFiles(cfg.tls.cert_path, cfg.tls.key_path)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"tls_cert_path: cannot load {cfg.tls.cert_path} with {cfg.tls.key_path}: {e}",
                              key="tls_cert_path") from None
        log.info("tls: serving %s", cfg.tls.cert_path)
        return tls_handler(handler, provider)
    if cfg.tls.uses_letsencrypt:
        log.error("tls_letsencrypt_hostname: ACME is not available in this build; serving plain HTTP")
    return handler
