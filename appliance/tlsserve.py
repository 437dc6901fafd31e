"""TLS on the main listener: a thin adapter from trioscale's config to ``autocert``.

autocert owns every piece of TLS (contexts, SNI and ``acme-tls/1`` routing, certificate files,
ACME orders and renewal, the port-80 server); this module only chooses the certificate source
from the config, starts it in the supervisor's nursery and wraps the front door's handler.
Manual files (``tls_cert_path``/``tls_key_path``) and ACME (``tls_letsencrypt_hostname``) take
the same path: a source, a :class:`autocert.TLSAcceptor` over it, the same handler.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from functools import partial
from typing import Awaitable, Callable, Union
from urllib.parse import urlsplit

import trio

import autocert

from .config import ConfigError, split_host_port
from .supervise import Supervisor

log = logging.getLogger(__name__)

Handler = Callable[[trio.abc.Stream], Awaitable[None]]
CertificateSource = Union[autocert.CertManager, autocert.StaticCertificate]


def acme_ca_bundle(cfg, env: Mapping[str, str] | None = None) -> str | None:
    """The PEM bundle trusted for the ACME server's HTTPS: ``acme_ca_bundle``, else
    ``$SSL_CERT_FILE``, else None (the system's store).

    SSL_CERT_FILE is honoured because the ACME library (requests) ignores it by itself, and an
    operator of a private ACME server who set it expects it to count.
    """
    env = os.environ if env is None else env
    if cfg.tls.acme_ca_bundle is not None:
        return str(cfg.tls.acme_ca_bundle)
    return env.get("SSL_CERT_FILE") or None


def certificate_source(cfg, env: Mapping[str, str] | None = None) -> CertificateSource | None:
    """The certificate source ``cfg`` asks for, or None for plain HTTP (behind a TLS-terminating
    proxy, or tests).

    Manual files are read here, so that unusable files stop the start with a ConfigError naming
    ``tls_cert_path``; ACME never stops the start (failures are logged and retried by the
    manager, and the control plane serves on without TLS until a certificate arrives).
    """
    tls = cfg.tls
    if tls.uses_files:
        static = autocert.StaticCertificate(tls.cert_path, tls.key_path)
        try:
            static.load()
        except autocert.CertificateError as e:
            raise ConfigError(f"tls_cert_path: cannot use {tls.cert_path} with {tls.key_path}: {e}; "
                              f"{e.hint}", key="tls_cert_path") from None
        return static
    if tls.uses_letsencrypt:
        try:
            return autocert.CertManager(
                tls.letsencrypt_hostname, tls.letsencrypt_cache_dir, tls.acme_url,
                tls.acme_email, tls.letsencrypt_challenge_type, ca_bundle=acme_ca_bundle(cfg, env))
        except autocert.ConfigError as e:
            raise ConfigError(f"tls_letsencrypt_hostname: {e}", key="tls_letsencrypt_hostname") from None
    return None


def tls_handler(handler: Handler, acceptor: autocert.TLSAcceptor) -> Handler:
    """Wrap ``handler`` (which serves a plain stream and closes it) so that it serves TLS.

    The returned coroutine function takes an accepted TCP stream; the acceptor completes the
    handshake within its deadline, answers ``acme-tls/1`` validations itself, and closes the
    stream when the peer fails or no certificate exists yet. Only a handshaken stream reaches
    ``handler``, which then owns it.
    """

    async def serve_tls(stream: trio.abc.Stream) -> None:
        tls = await acceptor.accept(stream)
        if tls is not None:
            await handler(tls)

    return serve_tls


async def start_tls(cfg, source: CertificateSource | None, nursery: trio.Nursery,
                    handler: Handler, supervisor: Supervisor | None = None) -> Handler:
    """Start ``source`` (and, for ACME, the port-80 server) in ``nursery``; return the main
    listener's connection handler: ``handler`` behind TLS, or ``handler`` itself without TLS.

    Call it before the main listener opens: the manager loads its cache first, so a cached
    certificate is served from the first connection. Both tasks run under ``supervisor``
    (renewal that fails unexpectedly is restarted, never the end of the server). A port-80 address that cannot be bound is
    logged, not fatal: TLS-ALPN-01 does not need it, and the control plane must come up.
    """
    if source is None:
        return handler
    supervisor = supervisor or Supervisor()
    await supervisor.start(nursery, "certificates", source.run)
    if isinstance(source, autocert.CertManager):
        host, port = split_host_port(cfg.tls.letsencrypt_listen)
        https_port = urlsplit(cfg.server_url).port or 443
        try:
            await supervisor.start(nursery, "ACME port 80", partial(autocert.serve_http01, https_port=https_port),
                                   source, host or None, port)
        except* OSError as group:
            err = group.exceptions[0]
            log.error("tls_letsencrypt_listen %s: cannot listen (%s); HTTP-01 validation and the "
                      "redirect to https are off: free the port or change tls_letsencrypt_listen",
                      cfg.tls.letsencrypt_listen, getattr(err, "strerror", None) or err)
        log.info("tls: certificates for %s from %s (%s)", source.hostname, source.directory_url,
                 source.challenge_type)
    else:
        log.info("tls: serving %s", source.cert_path)
    return tls_handler(handler, autocert.TLSAcceptor(source))
