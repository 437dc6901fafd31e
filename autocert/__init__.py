"""autocert: TLS certificates for a Trio server, from files or over ACME (RFC 8555).

Public surface:

- :class:`CertManager`: obtains and renews a certificate over ACME (TLS-ALPN-01 or HTTP-01).
- :class:`StaticCertificate`: serves a certificate from files, reloading them on change.
- :class:`TLSAcceptor`: routes a TCP stream by its ClientHello and completes the handshake.
- :func:`serve_http01`: the port-80 server (HTTP-01 answers, redirect to https).
- :func:`source_from_config`, :func:`parse_listen`: Headscale's config keys.
"""

from .acceptor import TLSAcceptor
from .config import parse_listen, source_from_config
from .errors import (AcmeError, AcmeProblem, AcmeUnreachable, AutocertError, CacheError,
                     CertificateError, ChallengeFailed, ClientHelloError, ConfigError,
                     IssuanceTimeout, RateLimited)
from .http01 import serve_http01
from .manager import LETSENCRYPT_DIRECTORY, CertManager
from .schedule import RenewalSchedule, RetryPolicy
from .static import StaticCertificate

__all__ = [
    "AcmeError", "AcmeProblem", "AcmeUnreachable", "AutocertError", "CacheError",
    "CertManager", "CertificateError", "ChallengeFailed", "ClientHelloError", "ConfigError",
    "IssuanceTimeout", "LETSENCRYPT_DIRECTORY", "RateLimited", "RenewalSchedule",
    "RetryPolicy", "StaticCertificate", "TLSAcceptor", "parse_listen", "serve_http01",
    "source_from_config",
]
