from __future__ import annotations

import stat
from pathlib import Path

import pytest

from autocert.cache import ACCOUNT_KEY_FILE, CertCache
from autocert.errors import CacheError


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_account_key_created_once_0600(tmp_path: Path) -> None:
    cache = CertCache(tmp_path / "c")
    key = cache.load_or_create_account_key()
    assert b"PRIVATE KEY" in key
    assert mode(tmp_path / "c") == 0o700
    assert mode(tmp_path / "c" / ACCOUNT_KEY_FILE) == 0o600
    assert CertCache(tmp_path / "c").load_or_create_account_key() == key


def test_certificate_round_trip(tmp_path: Path) -> None:
    cache = CertCache(tmp_path)
    assert cache.load_certificate("ts.example.net") is None
    cache.store_certificate("ts.example.net", b"CHAIN", b"KEY", "https://ca/dir")
    got = cache.load_certificate("ts.example.net")
    assert got is not None
    assert (got.chain_pem, got.key_pem, got.directory_url) == (b"CHAIN", b"KEY", "https://ca/dir")
    assert mode(tmp_path / "ts.example.net.key") == 0o600
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_key_or_bad_meta(tmp_path: Path) -> None:
    cache = CertCache(tmp_path)
    (tmp_path / "h.crt").write_bytes(b"C")
    assert cache.load_certificate("h") is None
    (tmp_path / "h.key").write_bytes(b"K")
    (tmp_path / "h.json").write_text("not json")
    got = cache.load_certificate("h")
    assert got is not None and got.directory_url is None


def test_cache_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(CacheError, match="cannot"):
        CertCache(tmp_path / "f").load_or_create_account_key()
