"""The on-disk cache: the ACME account key and the current certificate with its key.

Synchronous on purpose: the manager calls these through ``trio.to_thread.run_sync``.
Layout of the cache directory (created 0700)::

    acme_account.key      account key, PEM, 0600, created once and never replaced
    <hostname>.crt        full chain, leaf first
    <hostname>.key        the certificate's private key, PEM, 0600
    <hostname>.json       {"directory_url": ...}: which CA issued it

The certificate is only reused for the same ACME directory, so moving from a staging CA to
production gets a trusted certificate instead of the staging one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .errors import CacheError

ACCOUNT_KEY_FILE = "acme_account.key"


@dataclass(frozen=True, slots=True)
class CachedCertificate:
    chain_pem: bytes
    key_pem: bytes
    directory_url: str | None


class CertCache:
    """Files of one cache directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = os.fspath(directory)

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _ensure_dir(self) -> None:
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create cache directory {self.directory}: {exc}") from None

    def _write_atomic(self, name: str, data: bytes, mode: int) -> None:
        # Write then rename: a crash mid-write must never leave a truncated key or chain that
        # would stop the next start from serving.
        self._ensure_dir()
        final = self._path(name)
        tmp = final + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            try:
                os.fchmod(fd, mode)  # O_CREAT's mode is ignored if tmp already existed
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except OSError as exc:
            raise CacheError(f"cannot write {final}: {exc}") from None

    def _read(self, name: str) -> bytes | None:
        try:
            with open(self._path(name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheError(f"cannot read {self._path(name)}: {exc}") from None

    def load_or_create_account_key(self) -> bytes:
        """Return the account key PEM, creating it (0600) on first use."""
        pem = self._read(ACCOUNT_KEY_FILE)
        if pem is not None:
            return pem
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        self._write_atomic(ACCOUNT_KEY_FILE, pem, 0o600)
        return pem

    def load_certificate(self, hostname: str) -> CachedCertificate | None:
        """The cached chain and key for hostname, or None when either file is missing."""
        chain = self._read(hostname + ".crt")
        key = self._read(hostname + ".key")
        if chain is None or key is None:
            return None
        meta_raw = self._read(hostname + ".json")
        directory_url = None
        if meta_raw is not None:
            try:
                directory_url = json.loads(meta_raw).get("directory_url")
            except (ValueError, AttributeError):
                directory_url = None
        return CachedCertificate(chain, key, directory_url)

    def store_certificate(self, hostname: str, chain_pem: bytes, key_pem: bytes,
                          directory_url: str) -> None:
        """Save a new certificate and its key.

        Each file is replaced atomically; the chain goes last. A crash in between leaves a new
        key beside the old chain, which the next start rejects (key mismatch) and re-orders:
        never a half-written file.
        """
        self._write_atomic(hostname + ".key", key_pem, 0o600)
        self._write_atomic(hostname + ".json",
                           json.dumps({"directory_url": directory_url}).encode(), 0o644)
        self._write_atomic(hostname + ".crt", chain_pem, 0o644)
