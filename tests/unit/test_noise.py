"""Noise handshake and records against the vectors of protocol/control-transport.md §9."""

import base64
import json
import struct

import pytest

from appliance.noise.errors import NoiseError
from appliance.noise.handshake import ClientHandshake, error_message, respond
from appliance.noise.transport import MAX_PLAINTEXT, MAX_RECORD, NoiseTransport

SERVER_PRIV = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
SERVER_PUB = bytes.fromhex("8f40c5adb68f25624ae5b214ea767a6ec94d829d3d7b5e1ad1ba6f3e2138285f")
CLIENT_PRIV = bytes.fromhex("11" * 32)
CLIENT_PUB = bytes.fromhex("7b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f13")
CLIENT_EPH = bytes.fromhex("22" * 32)
SERVER_EPH = bytes.fromhex("33" * 32)

INITIATION_B64 = (
    "AIUBAGAPqmhO0ohnuX9Kai3uXfjOl052twGOPyKhxM8meFcPIFuBtxfKzqD1QJjOz78q/2VHqbHY162Qq9CpriDRp2aw"
    "adZwJz2Uqk+AMf4YbqtwHpkeE+/+tU37zWXTk1hU8UE="
)
RESPONSE = bytes.fromhex(
    "0200307b0d47d93427f8311160781c7c733fd89f88970aef490d8aa0ee19a4cb8a1b14"
    "5d8e9f049ac0b5da8bb159ab3960e1ba"
)
K1 = bytes.fromhex("80eeb472ce4120b5ac1ca8fba473b8eb1a303ed0db0001e7a8a4d04e00be6bbe")
K2 = bytes.fromhex("f652fbc2b8a3826bfaabe02e93bb3d1f7fa1bd3369c5f2f69776b18fa77e081d")
HASH = bytes.fromhex("2b71376eb004e6f39942d1bd0a8d7a6294973d96514f726ca8418dbd1e292853")
EARLY_RECORD = bytes.fromhex(
    "04007894743919cd93e35b069a68efb728c39864f1face464bc00dbd4da55f787f2cb1c355e6"
    "84bc22c4e7a652ccfdee2893ece82a8454728a748f17cbbfb011f9fc5225171fc4824cd477f4"
    "db50ed417f1f4d9fe7c5e7793846bec35c6aa8be4b0826b75ab69ffbb9ae93e29b440efb9c7b"
    "ffbb3b0378917d8583"
)
PREFACE_RECORD = bytes.fromhex(
    "0400280993ce6188051cbdd739267d34837c76e68775a282aeb302a7d99b1c3bb183b8948dc1ad6c128362"
)


def early_payload() -> bytes:
    body = json.dumps({"nodeKeyChallenge": "chalpub:" + "44" * 32}, separators=(",", ":")).encode()
    return b"\xff\xff\xffTS" + struct.pack(">I", len(body)) + body


def test_client_initiation_matches_vector():
    c = ClientHandshake(SERVER_PUB, CLIENT_PRIV, 133, ephemeral_private=CLIENT_EPH)
    assert base64.b64encode(c.initiation).decode() == INITIATION_B64


def test_server_response_and_keys_match_vector():
    hs = respond(SERVER_PRIV, base64.b64decode(INITIATION_B64), ephemeral_private=SERVER_EPH)
    assert hs.version == 133
    assert hs.machine_key == CLIENT_PUB
    assert hs.response == RESPONSE
    assert (hs.rx_key, hs.tx_key) == (K1, K2)
    assert hs.handshake_hash == HASH


def test_first_records_match_vector():
    server = NoiseTransport(tx_key=K2, rx_key=K1)
    assert server.encrypt(early_payload()) == EARLY_RECORD
    assert server.receive_data(PREFACE_RECORD) == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def test_client_and_server_agree_with_other_versions():
    c = ClientHandshake(SERVER_PUB, CLIENT_PRIV, 113)
    hs = respond(SERVER_PRIV, c.initiation)
    assert hs.version == 113
    tx, rx = c.finish(hs.response)
    client = NoiseTransport(tx, rx)
    server = NoiseTransport(hs.tx_key, hs.rx_key)
    assert server.receive_data(client.encrypt(b"hello")) == b"hello"
    assert client.receive_data(server.encrypt(b"world")) == b"world"


def test_tampered_initiation_is_refused():
    bad = bytearray(base64.b64decode(INITIATION_B64))
    bad[50] ^= 1
    with pytest.raises(NoiseError):
        respond(SERVER_PRIV, bytes(bad))
    with pytest.raises(NoiseError):
        respond(SERVER_PRIV, bytes(bad[:100]))
    wrong_type = bytearray(base64.b64decode(INITIATION_B64))
    wrong_type[2] = 2
    with pytest.raises(NoiseError):
        respond(SERVER_PRIV, bytes(wrong_type))


def test_error_message_reaches_client():
    c = ClientHandshake(SERVER_PUB, CLIENT_PRIV, 133)
    with pytest.raises(NoiseError, match="too old"):
        c.finish(error_message("client too old"))


def _pair():
    c = ClientHandshake(SERVER_PUB, CLIENT_PRIV, 133)
    hs = respond(SERVER_PRIV, c.initiation)
    tx, rx = c.finish(hs.response)
    return NoiseTransport(tx, rx), NoiseTransport(hs.tx_key, hs.rx_key)


def test_large_writes_are_chunked_and_reassemble_byte_by_byte():
    client, server = _pair()
    data = bytes(range(256)) * 100
    wire = server.encrypt(data)
    # every record fits the client's limit
    pos = 0
    while pos < len(wire):
        _, length = struct.unpack_from(">BH", wire, pos)
        assert 3 + length <= MAX_RECORD
        pos += 3 + length
    assert len(wire) == len(data) + 3 * 7 + 16 * 7 and -(-len(data) // MAX_PLAINTEXT) == 7
    got = b"".join(client.receive_data(wire[i : i + 1]) for i in range(len(wire)))
    assert got == data


def test_many_records_in_one_chunk():
    client, server = _pair()
    wire = b"".join(client.encrypt(b"msg%d" % i) for i in range(5))
    assert server.receive_data(wire) == b"msg0msg1msg2msg3msg4"


def test_oversized_record_header_is_refused_before_body():
    _, server = _pair()
    with pytest.raises(NoiseError, match="exceeds"):
        server.receive_data(b"\x04\x10\x00")
    with pytest.raises(NoiseError):  # poisoned afterwards
        server.receive_data(b"")


def test_wrong_type_and_bad_tag_poison_the_transport():
    client, server = _pair()
    with pytest.raises(NoiseError):
        server.receive_data(b"\x01\x00\x10" + bytes(16))
    client, server = _pair()
    rec = bytearray(client.encrypt(b"x"))
    rec[-1] ^= 1
    with pytest.raises(NoiseError):
        server.receive_data(bytes(rec))
    with pytest.raises(NoiseError):
        server.receive_data(client.encrypt(b"y"))
