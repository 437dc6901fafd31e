from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme

from autocert import CertificateError, StaticCertificate, source_from_config, parse_listen
from autocert import CertManager, ConfigError


def write_pair(dir: Path, ca: trustme.CA, name: str, **kw) -> tuple[Path, Path]:
    leaf = ca.issue_cert(name, **kw)
    cert, key = dir / "tls.crt", dir / "tls.key"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return cert, key


def test_load_and_status(tmp_path: Path) -> None:
    cert, key = write_pair(tmp_path, trustme.CA(), "a.example")
    static = StaticCertificate(cert, key)
    assert static.current_context() is None
    assert static.load() is True
    assert static.load() is False  # unchanged files are not re-read
    st = static.status()
    assert st["names"] == ["a.example"] and st["source"] == "file" and not st["expired"]
    assert static.challenge_context("a.example") is None


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="cannot read"):
        StaticCertificate(tmp_path / "no.crt", tmp_path / "no.key").load()
    ca = trustme.CA()
    cert, key = write_pair(tmp_path, ca, "a.example")
    other = ca.issue_cert("b.example")
    key.write_bytes(other.private_key_pem.bytes())
    with pytest.raises(CertificateError, match="does not match"):
        StaticCertificate(cert, key).load()


async def test_reload_on_change_and_keep_last_good(tmp_path: Path, caplog) -> None:
    ca = trustme.CA()
    cert, key = write_pair(tmp_path, ca, "a.example")
    static = StaticCertificate(cert, key, check_interval=0.05)
    async with trio.open_nursery() as nursery:
        await nursery.start(static.run)
        first = static.current_context()
        # a half-written update (chain without its key) is refused; the old context stays
        leaf_b = ca.issue_cert("b.example")
        cert.write_bytes(b"".join(b.bytes() for b in leaf_b.cert_chain_pems))
        with trio.fail_after(5):
            while static.status()["last_error"] is None:
                await trio.sleep(0.02)
        assert static.current_context() is first
        key.write_bytes(leaf_b.private_key_pem.bytes())
        with trio.fail_after(5):
            while static.status()["names"] != ["b.example"]:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert static.current_context() is not first
    assert static.status()["last_error"] is None
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "still serving the previous certificate" in errors[0]


async def test_expired_file_logs_one_line(tmp_path: Path, caplog) -> None:
    import datetime
    ca = trustme.CA()
    cert, key = write_pair(tmp_path, ca, "a.example",
                           not_after=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
    static = StaticCertificate(cert, key, check_interval=0.02)
    async with trio.open_nursery() as nursery:
        await nursery.start(static.run)
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "expired" in errors[0] and "tls_cert_path" in errors[0]
    assert static.status()["expired"]


def test_parse_listen() -> None:
    assert parse_listen(":http") == (None, 80)
    assert parse_listen("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_listen("[::]:https") == ("::", 443)
    for bad in ("80", ":x", ":70000"):
        with pytest.raises(ConfigError):
            parse_listen(bad)


def test_source_from_config(tmp_path: Path) -> None:
    assert source_from_config({}) is None
    mgr = source_from_config({"tls_letsencrypt_hostname": "TS.Example.NET.",
                              "tls_letsencrypt_cache_dir": str(tmp_path),
                              "tls_letsencrypt_challenge_type": "TLS-ALPN-01",
                              "acme_url": "https://ca/dir", "acme_email": ""})
    assert isinstance(mgr, CertManager)
    assert (mgr.hostname, mgr.challenge_type, mgr.email) == ("ts.example.net", "tls-alpn-01", None)
    assert isinstance(source_from_config({"tls_cert_path": "a", "tls_key_path": "b"}),
                      StaticCertificate)
    with pytest.raises(ConfigError):
        source_from_config({"tls_cert_path": "a"})
    with pytest.raises(ConfigError):
        source_from_config({"tls_cert_path": "a", "tls_key_path": "b",
                            "tls_letsencrypt_hostname": "h"})
    with pytest.raises(ConfigError, match="challenge"):
        source_from_config({"tls_letsencrypt_hostname": "h",
                            "tls_letsencrypt_challenge_type": "DNS-01"})
