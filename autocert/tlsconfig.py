"""Certificates, keys and the SSLContexts built from them (no I/O beyond what ssl needs).

Also builds the RFC 8737 TLS-ALPN-01 challenge certificate, which the acme 5.x library no
longer provides.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID

from .errors import CertificateError

ACME_TLS_ALPN = "acme-tls/1"
# RFC 8737 3: id-pe-acmeIdentifier.
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
DEFAULT_ALPN = ("http/1.1",)

# TLS 1.2 suites: forward secrecy and AEAD only (Mozilla "intermediate" minus DHE, which
# needs parameters we do not ship). TLS 1.3 suites are all acceptable and set separately.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


@dataclass(frozen=True, slots=True)
class CertInfo:
    """Facts about a leaf certificate, in the form status() and the schedule need."""

    names: tuple[str, ...]
    issuer: str
    serial: int
    not_before: float  # seconds since the epoch
    not_after: float

    def covers(self, hostname: str) -> bool:
        return hostname.lower() in (n.lower() for n in self.names)


def split_pem_chain(chain_pem: bytes) -> list[x509.Certificate]:
    """Parse every certificate of a PEM bundle, leaf first; raise CertificateError if none."""
    try:
        certs = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as exc:
        raise CertificateError(f"unreadable certificate chain: {exc}") from None
    if not certs:
        raise CertificateError("no certificate in chain")
    return certs


def cert_info(cert: x509.Certificate) -> CertInfo:
    """Extract names, issuer, serial and validity from a certificate."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    if not names:
        names = tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    return CertInfo(
        names=names,
        issuer=cert.issuer.rfc4514_string(),
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
    )


def check_key_pair(cert: x509.Certificate, key_pem: bytes) -> None:
    """Raise CertificateError unless key_pem is the private key of cert."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"unreadable private key: {exc}") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, pub)
            != cert.public_key().public_bytes(serialization.Encoding.DER, pub)):
        raise CertificateError("private key does not match the certificate")


def server_context(chain_pem: bytes, key_pem: bytes,
                   alpn_protocols: Sequence[str] = DEFAULT_ALPN) -> ssl.SSLContext:
    """An SSLContext serving chain_pem with key_pem: TLS 1.2+, forward-secret AEAD suites."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if alpn_protocols:
        ctx.set_alpn_protocols(list(alpn_protocols))
    _load_cert_chain(ctx, chain_pem, key_pem)
    return ctx


def _load_cert_chain(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    # ssl can only load PEM from files. The temporary directory is private (0700) and the
    # files live only for the call, so the key never sits readable by others.
    with tempfile.TemporaryDirectory(prefix="autocert-") as tmp:
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        for path, data in ((cert_path, chain_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        try:
            ctx.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise CertificateError(f"OpenSSL refused the certificate or key: {exc}") from None


def new_private_key_pem() -> bytes:
    """A fresh P-256 key in PKCS#8 PEM: small, fast, accepted by every ACME CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def key_authorization_digest(key_authorization: str) -> bytes:
    return hashlib.sha256(key_authorization.encode("ascii")).digest()


def tls_alpn_challenge_cert(domain: str, key_authorization: str, *,
                            now: float) -> tuple[bytes, bytes]:
    """Build the RFC 8737 self-signed challenge certificate; return (cert_pem, key_pem).

    The certificate has the domain as its only SAN and a critical acmeIdentifier extension
    whose value is the DER OCTET STRING of SHA-256(key authorization).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    digest = key_authorization_digest(key_authorization)
    # DER: OCTET STRING tag 0x04, length 0x20, then the 32-byte digest (RFC 8737 3).
    ext_value = b"\x04\x20" + digest
    start = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ACME TLS-ALPN-01 challenge")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - datetime.timedelta(days=1))
        .not_valid_after(start + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, ext_value), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert_pem, key_pem


def challenge_context(domain: str, key_authorization: str, *, now: float) -> ssl.SSLContext:
    """An SSLContext that answers the acme-tls/1 validation for domain."""
    cert_pem, key_pem = tls_alpn_challenge_cert(domain, key_authorization, now=now)
    return server_context(cert_pem, key_pem, alpn_protocols=(ACME_TLS_ALPN,))


def load_pair(chain_pem: bytes, key_pem: bytes, *, hostname: str | None = None,
              alpn_protocols: Sequence[str] = DEFAULT_ALPN) -> tuple[ssl.SSLContext, CertInfo]:
    """Validate a chain/key pair and build its context; raise CertificateError if unusable."""
    certs = split_pem_chain(chain_pem)
    check_key_pair(certs[0], key_pem)
    info = cert_info(certs[0])
    if hostname is not None and not info.covers(hostname):
        raise CertificateError(f"certificate names {list(info.names)} do not include {hostname}")
    return server_context(chain_pem, key_pem, alpn_protocols), info
