"""Noise_IK_25519_ChaChaPoly_BLAKE2s as Tailscale's control protocol uses it (sans-IO).

Initiation (client → server), 101 bytes::

    0   2  protocol version, uint16 BE (the client's capability version)
    2   1  message type 0x01
    3   2  payload length, uint16 BE (= 96)
    5  32  client ephemeral public key
   37  48  client machine (static) public key, sealed
   85  16  tag over the empty payload

Response (server → client), 51 bytes: type 0x02, length uint16 BE (= 48), server ephemeral
public key (32), tag over the empty payload (16). No version field.

The prologue is mixed in as the first hash input: "Tailscale Control Protocol v<version>",
with the version taken from the initiation, never a constant: every client release has its own.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .errors import NoiseError

PROTOCOL_NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2s"
PROLOGUE_PREFIX = b"Tailscale Control Protocol v"

MSG_INITIATION = 0x01
MSG_RESPONSE = 0x02
MSG_ERROR = 0x03
MSG_RECORD = 0x04

INITIATION_LEN = 101
INITIATION_HEADER_LEN = 5
RESPONSE_LEN = 51
_KEY = 32
_TAG = 16
_ZERO_NONCE = bytes(12)


def _hash(*parts: bytes) -> bytes:
    h = hashlib.blake2s()
    for p in parts:
        h.update(p)
    return h.digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def _hkdf2(ck: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    prk = _hmac(ck, ikm)
    t1 = _hmac(prk, b"\x01")
    t2 = _hmac(prk, t1 + b"\x02")
    return t1, t2


def _dh(private: bytes, public: bytes) -> bytes:
    try:
        return X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(public)
        )
    except ValueError as e:  # low-order point: an all-zero shared secret
        raise NoiseError(f"bad public key in handshake: {e}") from None


def _public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


class _SymmetricState:
    def __init__(self, version: int, responder_static_pub: bytes) -> None:
        self.h = _hash(PROTOCOL_NAME)  # the name is 33 bytes (> HASHLEN), so it is hashed
        self.ck = self.h
        self.mix_hash(PROLOGUE_PREFIX + str(version).encode())
        self.mix_hash(responder_static_pub)  # IK pre-message: the responder's static key

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h, data)

    def mix_dh(self, private: bytes, public: bytes) -> bytes:
        self.ck, k = _hkdf2(self.ck, _dh(private, public))
        return k

    def encrypt_and_hash(self, k: bytes, plaintext: bytes) -> bytes:
        c = ChaCha20Poly1305(k).encrypt(_ZERO_NONCE, plaintext, self.h)
        self.mix_hash(c)
        return c

    def decrypt_and_hash(self, k: bytes, ciphertext: bytes) -> bytes:
        try:
            p = ChaCha20Poly1305(k).decrypt(_ZERO_NONCE, ciphertext, self.h)
        except InvalidTag:
            raise NoiseError("handshake decryption failed") from None
        self.mix_hash(ciphertext)
        return p

    def split(self) -> tuple[bytes, bytes]:
        return _hkdf2(self.ck, b"")


@dataclass(frozen=True)
class ServerHandshake:
    """What the server learns and must send after a valid initiation."""

    version: int
    machine_key: bytes  # the client's static key: its identity for every request on this conn
    response: bytes  # the 51-byte response message to write after the 101
    rx_key: bytes  # client → server
    tx_key: bytes  # server → client
    handshake_hash: bytes


def parse_initiation_version(initiation: bytes) -> int:
    """The protocol (capability) version in an initiation; raises NoiseError if malformed."""
    if len(initiation) != INITIATION_LEN:
        raise NoiseError(f"initiation is {len(initiation)} bytes, want {INITIATION_LEN}")
    version, mtype, length = struct.unpack(">HBH", initiation[:INITIATION_HEADER_LEN])
    if mtype != MSG_INITIATION or length != INITIATION_LEN - INITIATION_HEADER_LEN:
        raise NoiseError(f"not an initiation (type {mtype}, length {length})")
    return version


def respond(server_private: bytes, initiation: bytes, ephemeral_private: bytes | None = None) -> ServerHandshake:
    """Process a client's initiation as the responder.

    ``ephemeral_private`` is for test vectors only; normally a fresh key is made.
    Raises NoiseError when the initiation is malformed or does not decrypt.
    """
    version = parse_initiation_version(initiation)
    server_pub = _public(server_private)
    s = _SymmetricState(version, server_pub)
    e_client = initiation[5:37]
    s.mix_hash(e_client)
    k = s.mix_dh(server_private, e_client)  # es
    machine_key = s.decrypt_and_hash(k, initiation[37:85])
    k = s.mix_dh(server_private, machine_key)  # ss
    if s.decrypt_and_hash(k, initiation[85:101]) != b"":
        raise NoiseError("initiation payload must be empty")
    e_priv = ephemeral_private or X25519PrivateKey.generate().private_bytes_raw()
    e_pub = _public(e_priv)
    s.mix_hash(e_pub)
    s.mix_dh(e_priv, e_client)  # ee
    k = s.mix_dh(e_priv, machine_key)  # se
    tag = s.encrypt_and_hash(k, b"")
    rx, tx = s.split()
    response = struct.pack(">BH", MSG_RESPONSE, RESPONSE_LEN - 3) + e_pub + tag
    return ServerHandshake(version, machine_key, response, rx, tx, s.h)


class ClientHandshake:
    """The initiator's side, for our tests and load generator (the real client is Go)."""

    def __init__(
        self,
        server_public: bytes,
        machine_private: bytes,
        version: int,
        ephemeral_private: bytes | None = None,
    ) -> None:
        self._machine_private = machine_private
        self._e_priv = ephemeral_private or X25519PrivateKey.generate().private_bytes_raw()
        self._s = _SymmetricState(version, server_public)
        e_pub = _public(self._e_priv)
        self._s.mix_hash(e_pub)
        k = self._s.mix_dh(self._e_priv, server_public)  # es
        sealed_static = self._s.encrypt_and_hash(k, _public(machine_private))
        k = self._s.mix_dh(machine_private, server_public)  # ss
        tag = self._s.encrypt_and_hash(k, b"")
        self.initiation = (
            struct.pack(">HBH", version, MSG_INITIATION, INITIATION_LEN - INITIATION_HEADER_LEN)
            + e_pub
            + sealed_static
            + tag
        )

    def finish(self, response: bytes) -> tuple[bytes, bytes]:
        """Process the server's 51-byte response; returns (tx_key, rx_key) for the client."""
        if len(response) < 3:
            raise NoiseError("short handshake response")
        mtype, length = struct.unpack(">BH", response[:3])
        if mtype == MSG_ERROR:
            raise NoiseError(f"server error: {response[3:3 + length].decode(errors='replace')!r}")
        if mtype != MSG_RESPONSE or length != RESPONSE_LEN - 3 or len(response) != RESPONSE_LEN:
            raise NoiseError("malformed handshake response")
        e_server = response[3:35]
        self._s.mix_hash(e_server)
        self._s.mix_dh(self._e_priv, e_server)  # ee
        k = self._s.mix_dh(self._machine_private, e_server)  # se
        if self._s.decrypt_and_hash(k, response[35:51]) != b"":
            raise NoiseError("response payload must be empty")
        return self._s.split()


def error_message(text: str) -> bytes:
    """A type-3 message that tells the client why the server refuses it."""
    data = text.encode()[:0xFFFF]
    return struct.pack(">BH", MSG_ERROR, len(data)) + data
