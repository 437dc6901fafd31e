from __future__ import annotations

import hashlib
import ssl

import pytest
import trustme
from cryptography import x509

from autocert.errors import CertificateError
from autocert.tlsconfig import (ACME_IDENTIFIER_OID, cert_info, load_pair, split_pem_chain,
                                tls_alpn_challenge_cert)

NOW = 1_800_000_000.0


def test_challenge_certificate_follows_rfc8737() -> None:
    key_auth = "tok3n.thumbPRINT"
    cert_pem, key_pem = tls_alpn_challenge_cert("ts.example.net", key_auth, now=NOW)
    cert = x509.load_pem_x509_certificate(cert_pem)
    ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    assert ext.critical
    digest = hashlib.sha256(key_auth.encode()).digest()
    assert ext.value.value == b"\x04\x20" + digest  # DER OCTET STRING of the SHA-256
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["ts.example.net"]
    assert cert.not_valid_before_utc.timestamp() < NOW < cert.not_valid_after_utc.timestamp()
    assert b"PRIVATE KEY" in key_pem


def test_load_pair_checks_key_and_name() -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("ts.example.net")
    other = ca.issue_cert("other.example.net")
    chain = b"".join(b.bytes() for b in leaf.cert_chain_pems)
    ctx, info = load_pair(chain, leaf.private_key_pem.bytes(), hostname="ts.example.net")
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert info.names == ("ts.example.net",)
    with pytest.raises(CertificateError, match="does not match"):
        load_pair(chain, other.private_key_pem.bytes())
    with pytest.raises(CertificateError, match="do not include"):
        load_pair(chain, leaf.private_key_pem.bytes(), hostname="x.example.net")
    with pytest.raises(CertificateError, match="unreadable private key"):
        load_pair(chain, b"junk")
    with pytest.raises(CertificateError):
        split_pem_chain(b"no pem here")


def test_cert_info() -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("a.example", "b.example")
    info = cert_info(x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()))
    assert info.names == ("a.example", "b.example")
    assert info.covers("B.EXAMPLE") and not info.covers("c.example")
    assert "trustme" in info.issuer
    assert info.not_before < info.not_after
