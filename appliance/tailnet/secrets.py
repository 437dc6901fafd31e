"""Pre-auth and API key secrets: shown once, stored as a SHA-256 hash.

Key text: ``hskey-auth-<prefix>-<secret>`` / ``hskey-api-<prefix>-<secret>``, Headscale's
layout, so scripts that recognise its keys keep working. The prefix finds the row; the hash
proves the rest. The secret is 256 random bits, so a fast hash is enough (no password
stretching is needed for a secret no person chose).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX_LEN = 12
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def new_secret(kind: str) -> tuple[str, str, str]:
    """Returns (full key text, prefix, hash)."""
    prefix = "".join(secrets.choice(_ALPHABET) for _ in range(PREFIX_LEN))
    text = f"hskey-{kind}-{prefix}-{secrets.token_hex(32)}"
    return text, prefix, hash_secret(text)


def hash_secret(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def split_prefix(kind: str, text: str) -> str | None:
    """The prefix of a well-formed key of ``kind``, else None."""
    head = f"hskey-{kind}-"
    if not text.startswith(head):
        return None
    prefix, sep, rest = text[len(head):].partition("-")
    if not sep or len(prefix) != PREFIX_LEN or not rest:
        return None
    return prefix


def matches(text: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(text), stored_hash)
