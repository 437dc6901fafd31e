"""Build a certificate source from Headscale's config keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import ConfigError
from .manager import LETSENCRYPT_DIRECTORY, CertManager
from .static import StaticCertificate

DEFAULT_CACHE_DIR = "/var/lib/headscale/cache"
_SERVICE_PORTS = {"http": 80, "https": 443}


def parse_listen(value: str) -> tuple[str | None, int]:
    """Parse a Go-style listen address (``":http"``, ``"0.0.0.0:80"``, ``"[::]:8080"``) into
    (host or None for all addresses, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise ConfigError(f"listen address {value!r} has no port", hint='write it as ":80"')
    host = host.strip("[]") or None
    if port_text in _SERVICE_PORTS:
        return host, _SERVICE_PORTS[port_text]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"bad port in listen address {value!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"port out of range in listen address {value!r}")
    return host, port


def source_from_config(cfg: Mapping[str, Any], **kwargs: Any) -> CertManager | StaticCertificate | None:
    """CertManager when tls_letsencrypt_hostname is set, StaticCertificate when
    tls_cert_path is set, None for plain HTTP. Extra kwargs go to the constructor."""
    hostname = cfg.get("tls_letsencrypt_hostname") or ""
    cert_path = cfg.get("tls_cert_path") or ""
    if hostname and cert_path:
        raise ConfigError("both tls_letsencrypt_hostname and tls_cert_path are set",
                          hint="keep one of them")
    if hostname:
        return CertManager(
            hostname,
            cfg.get("tls_letsencrypt_cache_dir") or DEFAULT_CACHE_DIR,
            cfg.get("acme_url") or LETSENCRYPT_DIRECTORY,
            cfg.get("acme_email") or None,
            cfg.get("tls_letsencrypt_challenge_type") or "HTTP-01",
            **kwargs,
        )
    if cert_path:
        key_path = cfg.get("tls_key_path") or ""
        if not key_path:
            raise ConfigError("tls_cert_path is set but tls_key_path is not",
                              hint="set tls_key_path to the certificate's private key")
        return StaticCertificate(cert_path, key_path, **kwargs)
    return None
