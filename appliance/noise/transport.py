"""Noise transport records (sans-IO).

Record: type 0x04 (1) | ciphertext length, uint16 BE (2) | ciphertext (plaintext + 16-byte tag).
Nonce: 4 zero bytes ‖ uint64 BE counter, per direction, starting at 0. No associated data.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .errors import NoiseError
from .handshake import MSG_RECORD

# The client rejects any record whose header announces more than 4096 bytes in all, so a
# writer must chunk to this much plaintext; a reader refuses larger headers before the body
# arrives, which bounds what a peer can make us buffer.
MAX_RECORD = 4096
HEADER_LEN = 3
TAG_LEN = 16
MAX_CIPHERTEXT = MAX_RECORD - HEADER_LEN
MAX_PLAINTEXT = MAX_CIPHERTEXT - TAG_LEN
_NONCE_LIMIT = 2**64 - 1  # the all-ones counter is never used


class _Cipher:
    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._n = 0

    def _nonce(self) -> bytes:
        if self._n >= _NONCE_LIMIT:
            raise NoiseError("nonce space exhausted")
        nonce = b"\x00\x00\x00\x00" + struct.pack(">Q", self._n)
        self._n += 1
        return nonce

    def seal(self, plaintext: bytes) -> bytes:
        return self._aead.encrypt(self._nonce(), plaintext, None)

    def open(self, ciphertext: bytes) -> bytes:
        try:
            return self._aead.decrypt(self._nonce(), ciphertext, None)
        except InvalidTag:
            raise NoiseError("record decryption failed") from None


class NoiseTransport:
    """Encrypts outgoing plaintext into records and decrypts incoming records.

    After a NoiseError the transport is poisoned: every later call raises again, because the
    nonces are no longer in step with the peer's.
    """

    def __init__(self, tx_key: bytes, rx_key: bytes) -> None:
        self._tx = _Cipher(tx_key)
        self._rx = _Cipher(rx_key)
        self._buf = bytearray()
        self._broken: NoiseError | None = None

    def encrypt(self, plaintext: bytes) -> bytes:
        """Records carrying ``plaintext`` (empty input gives no records)."""
        out = bytearray()
        view = memoryview(plaintext)
        for i in range(0, len(view), MAX_PLAINTEXT):
            chunk = view[i : i + MAX_PLAINTEXT]
            ct = self._tx.seal(bytes(chunk))
            out += struct.pack(">BH", MSG_RECORD, len(ct))
            out += ct
        return bytes(out)

    def receive_data(self, data: bytes) -> bytes:
        """Feed bytes from the wire; returns all plaintext that complete records carry."""
        if self._broken:
            raise self._broken
        self._buf += data
        out = bytearray()
        try:
            while len(self._buf) >= HEADER_LEN:
                mtype, length = struct.unpack_from(">BH", self._buf)
                if mtype != MSG_RECORD:
                    raise NoiseError(f"unexpected message type {mtype} in transport phase")
                if length > MAX_CIPHERTEXT:
                    raise NoiseError(f"record of {length} bytes exceeds max allowed Noise frame size")
                if length < TAG_LEN:
                    raise NoiseError(f"record of {length} bytes is shorter than its tag")
                if len(self._buf) < HEADER_LEN + length:
                    break
                ct = bytes(self._buf[HEADER_LEN : HEADER_LEN + length])
                del self._buf[: HEADER_LEN + length]
                out += self._rx.open(ct)
        except NoiseError as e:
            self._broken = e
            raise
        return bytes(out)
