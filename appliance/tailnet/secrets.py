"""Pre-auth and API key secrets: shown once, stored as a hash.

Key text: ``hskey-auth-<prefix>-<secret>`` / ``hskey-api-<prefix>-<secret>``, Headscale's
layout, so scripts that recognise its keys keep working. The prefix finds the row; the hash
proves the rest. The secret is 256 random bits, so a fast hash is enough (no password
stretching is needed for a secret no person chose): trioscale stores SHA-256 of the whole text.

Keys imported from Headscale keep working with the hashes Headscale stored:
- Headscale 0.28+ keys (same layout, hex prefix): bcrypt of the part after the prefix;
- Headscale API keys before 0.28, ``<7-char prefix>.<secret>``: bcrypt of the secret;
- Headscale pre-auth keys before 0.28 were stored in plain text (48 hex: 192 random bits);
  the import stores their SHA-256 and finds them by it (``legacy_lookup``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX_LEN = 12
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
# Headscale's API keys before 0.28: "<prefix>.<secret>", the prefix 7 random bytes in URL-safe
# base64 (10 characters); "." is not in that alphabet.
LEGACY_API_PREFIX_MAX = 32
# bcrypt's modular-crypt marks: a stored hash starting with one of these is bcrypt (Headscale's);
# SHA-256 hex (ours) never starts with "$".
_BCRYPT_MARKS = ("$2a$", "$2b$", "$2y$")
# bcrypt costs ~0.1 s a check: remember the SHA-256 of texts already proven, per stored hash,
# so a key used again (an API key on every request) is checked at SHA-256 speed. Bounded.
_BCRYPT_PROVEN: dict[str, str] = {}
_BCRYPT_PROVEN_MAX = 1024


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


def lookup_prefix(kind: str, text: str) -> str | None:
    """The prefix that finds the row of key ``text``: ``split_prefix``'s, or for a Headscale
    API key from before 0.28 (``prefix.secret``) the part before the dot; else None."""
    prefix = split_prefix(kind, text)
    if prefix is None and kind == "api":
        legacy, sep, secret = text.partition(".")
        if sep and secret and 0 < len(legacy) <= LEGACY_API_PREFIX_MAX:
            return legacy
    return prefix


def is_bcrypt(stored_hash: str) -> bool:
    return stored_hash.startswith(_BCRYPT_MARKS)


def _bcrypt_secret(text: str) -> str:
    """The part of a key text Headscale hashed with bcrypt: after ``hskey-KIND-PREFIX-``, or
    after the first "." of a legacy API key."""
    if text.startswith("hskey-"):
        return text.split("-", 3)[3] if text.count("-") >= 3 else ""
    return text.partition(".")[2]


def matches(text: str, stored_hash: str) -> bool:
    """Does key ``text`` prove ``stored_hash``? Ours (SHA-256 hex) or Headscale's bcrypt."""
    if not is_bcrypt(stored_hash):
        return hmac.compare_digest(hash_secret(text), stored_hash)
    digest = hash_secret(text)
    proven = _BCRYPT_PROVEN.get(stored_hash)
    if proven is not None:
        return hmac.compare_digest(digest, proven)
    import bcrypt  # only imported keys need it

    secret = _bcrypt_secret(text).encode()
    try:
        ok = bool(secret) and bcrypt.checkpw(secret, stored_hash.encode("ascii"))
    except ValueError:  # a malformed stored hash proves nothing
        return False
    if ok:
        if len(_BCRYPT_PROVEN) >= _BCRYPT_PROVEN_MAX:
            _BCRYPT_PROVEN.clear()
        _BCRYPT_PROVEN[stored_hash] = digest
    return ok


def unusable_hash(stored: bytes | str) -> str:
    """A stored hash no key text can match (neither SHA-256 hex nor bcrypt): for imported rows
    whose hash is missing or of an unknown kind, kept so that nothing that refers to them breaks."""
    raw = stored.encode() if isinstance(stored, str) else bytes(stored)
    return "!" + raw.hex()


def legacy_prefix(key_id: int) -> str:
    """The prefix given to an imported plain-text Headscale pre-auth key (which has none): it
    names the row in listings; the key itself is found by its hash."""
    return f"hs{key_id:0{PREFIX_LEN - 2}d}"
