"""Curve25519 keys and their text forms (``mkey:``, ``nodekey:``, ``discokey:`` + 64 hex).

Private keys live in files holding ``privkey:<64 hex>``, the format Headscale and Tailscale
write, so that a Headscale noise key file can be reused as it is.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from derp import keys as derp_keys
from derp.errors import DerpError

KEY_LEN = 32
ZERO_KEY = bytes(KEY_LEN)


class KeyFormatError(ValueError):
    """A key's text form is not ``prefix:`` followed by 64 hex characters."""


def encode_key(prefix: str, raw: bytes) -> str:
    return f"{prefix}:{raw.hex()}"


def decode_key(prefix: str, text: str) -> bytes:
    """Parse ``prefix:<64 hex>``; raises KeyFormatError."""
    head, sep, hexpart = text.partition(":")
    if sep != ":" or head != prefix or len(hexpart) != 2 * KEY_LEN:
        raise KeyFormatError(f"expected {prefix}:<64 hex>, got {text[:80]!r}")
    try:
        return bytes.fromhex(hexpart)
    except ValueError:
        raise KeyFormatError(f"expected {prefix}:<64 hex>, got {text[:80]!r}") from None


def decode_optional_key(prefix: str, text: str | None) -> bytes | None:
    """Like decode_key, but an absent or all-zero key (the client's "none") gives None."""
    if not text:
        return None
    raw = decode_key(prefix, text)
    return None if raw == ZERO_KEY else raw


def public_key(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def generate_private_key() -> bytes:
    return X25519PrivateKey.generate().private_bytes_raw()


def load_or_create_private_key(path: Path) -> bytes:
    """Read a ``privkey:`` file, or create one (mode 0600) if missing: the Noise key and the
    DERP key alike, in the file format derp/ keeps (Headscale's). Raises KeyFormatError for a
    file that does not hold a key or that others may read."""
    try:
        return derp_keys.load_or_create_private_key(str(path))
    except DerpError as e:
        raise KeyFormatError(f"{path}: {e}") from None
