"""Byte-level tests of the sans-IO DERP codec (vectors from derp.md §9)."""

import pytest

from derp import frames as fr
from derp.errors import FrameTooLarge, HandshakeError, ProtocolError

SERVER_PRIV = bytes.fromhex("202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f")
SERVER_PUB = bytes.fromhex("358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd166254")
CLIENT_PRIV = bytes.fromhex("55" * 32)
CLIENT_PUB = bytes.fromhex("38ab664bd86f77d7e66bdd9ae0792913a94fd8b33a1260027e4b46c1f4884c67")
SERVER_KEY_FRAME = bytes.fromhex(
    "010000002844455250f09f9491358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd166254")
CLIENT_INFO_FRAME = bytes.fromhex(
    "020000006838ab664bd86f77d7e66bdd9ae0792913a94fd8b33a1260027e4b46c1f4884c67"
    "666666666666666666666666666666666666666666666666"
    "8602e801b5ba24fad26eee2c5f090d0aac777c40ca245a3a76746c791fba59cf0cc8b0c28f74b6092c906525ba96d843")
SERVER_INFO_FRAME = bytes.fromhex(
    "0300000035777777777777777777777777777777777777777777777777"
    "357c26093175fcaecb3bb22b894898279fa11e864a539115284a580762")

K1 = bytes(range(32))
K2 = bytes(range(32, 64))

ALL = [
    fr.ServerKey(SERVER_PUB),
    fr.ClientInfo(CLIENT_PUB, b"\x66" * 24, b"sealed"),
    fr.ServerInfo(b"\x77" * 24, b"sealed"),
    fr.SendPacket(K1, b"hello"),
    fr.RecvPacket(K2, b"world"),
    fr.SendPacket(K1, b""),
    fr.KeepAlive(),
    fr.NotePreferred(True),
    fr.NotePreferred(False),
    fr.PeerGone(K1, fr.PeerGoneReason.NOT_HERE),
    fr.PeerPresent(K2, b"\x00" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1]), 4242, 1),
    fr.ForwardPacket(K1, K2, b"x" * 1000),
    fr.WatchConns(),
    fr.ClosePeer(K1),
    fr.Ping(b"12345678"),
    fr.Pong(b"abcdefgh"),
    fr.Health("disk on fire"),
    fr.Restarting(1500, 30000),
    fr.UnknownFrame(0x42, b"future"),
]


def test_keys():
    assert fr.public_key(SERVER_PRIV) == SERVER_PUB
    assert fr.public_key(CLIENT_PRIV) == CLIENT_PUB


def test_server_key_vector():
    assert fr.encode(fr.ServerKey(SERVER_PUB)) == SERVER_KEY_FRAME
    d = fr.FrameDecoder()
    d.receive_data(SERVER_KEY_FRAME)
    assert d.next_event() == fr.ServerKey(SERVER_PUB)


def test_client_info_vector_both_ways():
    ci = fr.seal_client_info(CLIENT_PRIV, SERVER_PUB, {"version": 2, "CanAckPings": True},
                             b"\x66" * 24)
    assert fr.encode(ci) == CLIENT_INFO_FRAME
    d = fr.server_decoder()
    d.receive_data(CLIENT_INFO_FRAME)
    ev = d.next_event()
    assert ev.key == CLIENT_PUB
    assert fr.open_client_info(SERVER_PRIV, ev) == {"version": 2, "CanAckPings": True}


def test_server_info_vector_both_ways():
    si = fr.seal_server_info(SERVER_PRIV, CLIENT_PUB, {"version": 2}, b"\x77" * 24)
    assert fr.encode(si) == SERVER_INFO_FRAME
    d = fr.client_decoder()
    d.receive_data(SERVER_INFO_FRAME)
    assert fr.open_server_info(CLIENT_PRIV, SERVER_PUB, d.next_event()) == {"version": 2}


def test_client_info_wrong_key_or_tampered():
    d = fr.server_decoder()
    d.receive_data(CLIENT_INFO_FRAME[:-1] + bytes([CLIENT_INFO_FRAME[-1] ^ 1]))
    with pytest.raises(HandshakeError):
        fr.open_client_info(SERVER_PRIV, d.next_event())
    d = fr.server_decoder()
    d.receive_data(CLIENT_INFO_FRAME)
    with pytest.raises(HandshakeError):
        fr.open_client_info(CLIENT_PRIV, d.next_event())


def test_send_packet_bytes():
    assert fr.encode(fr.SendPacket(K1, b"hi")) == b"\x04\x00\x00\x00\x22" + K1 + b"hi"
    assert fr.encode_recv_packet(K2, b"hi") == b"\x05\x00\x00\x00\x22" + K2 + b"hi"
    assert fr.encode(fr.PeerGone(K1)) == b"\x08\x00\x00\x00\x21" + K1 + b"\x00"
    assert fr.encode(fr.Restarting(1, 2)) == bytes.fromhex("15000000080000000100000002")


def _stream():
    return b"".join(fr.encode(m) for m in ALL)


def test_whole_input():
    d = fr.FrameDecoder()
    d.receive_data(_stream())
    assert d.events() == ALL
    assert d.buffered == 0


def test_one_byte_at_a_time():
    d = fr.FrameDecoder()
    out = []
    for b in _stream():
        d.receive_data(bytes([b]))
        out += d.events()
    assert out == ALL


def test_odd_chunks():
    data = _stream() * 3
    d = fr.FrameDecoder()
    out = []
    for i in range(0, len(data), 7):
        d.receive_data(data[i : i + 7])
        out += d.events()
    assert out == ALL * 3


def test_many_small_frames_in_one_chunk():
    msgs = [fr.SendPacket(K1, bytes([i % 256]) * (i % 50)) for i in range(5000)]
    d = fr.server_decoder()
    d.receive_data(b"".join(fr.encode(m) for m in msgs))
    assert d.events() == msgs


def test_oversized_rejected_from_header_alone():
    d = fr.server_decoder()
    # Header of a SendPacket announcing 1 byte over the limit; no body sent at all.
    d.receive_data(fr.frame_header(fr.FrameType.SEND_PACKET, 32 + fr.MAX_PACKET_SIZE + 1))
    with pytest.raises(FrameTooLarge):
        d.next_event()


def test_client_info_limit():
    d = fr.server_decoder()
    d.receive_data(fr.frame_header(fr.FrameType.CLIENT_INFO, fr.MAX_CLIENT_INFO_LEN + 1))
    with pytest.raises(FrameTooLarge):
        d.next_event()


def test_server_does_not_accept_server_frames():
    d = fr.server_decoder()
    d.receive_data(fr.frame_header(fr.FrameType.SERVER_INFO, 5000))
    with pytest.raises(FrameTooLarge):
        d.next_event()


def test_max_packet_accepted():
    pkt = b"\xaa" * fr.MAX_PACKET_SIZE
    d = fr.server_decoder()
    d.receive_data(fr.encode(fr.SendPacket(K1, pkt)))
    assert d.next_event() == fr.SendPacket(K1, pkt)
    with pytest.raises(ValueError):
        fr.encode(fr.SendPacket(K1, pkt + b"x"))


def test_truncated_needs_data_then_eof_errors():
    data = fr.encode(fr.SendPacket(K1, b"payload"))
    for cut in (1, 4, 5, 20, len(data) - 1):
        d = fr.FrameDecoder()
        d.receive_data(data[:cut])
        assert d.next_event() is fr.NEED_DATA
        d.receive_data(b"")
        with pytest.raises(ProtocolError):
            d.next_event()


def test_clean_eof():
    d = fr.FrameDecoder()
    d.receive_data(fr.encode(fr.KeepAlive()))
    d.receive_data(b"")
    assert d.next_event() == fr.KeepAlive()
    assert d.next_event() is fr.NEED_DATA


@pytest.mark.parametrize("raw", [
    b"\x04\x00\x00\x00\x05short",                      # SendPacket shorter than a key
    b"\x07\x00\x00\x00\x00",                           # NotePreferred without its byte
    b"\x08\x00\x00\x00\x05abcde",                      # PeerGone of a bad size
    b"\x11\x00\x00\x00\x03abc",                        # ClosePeer not a key
    b"\x12\x00\x00\x00\x03abc",                        # Ping shorter than 8
    b"\x01\x00\x00\x00\x28" + b"NOTMAGIC" + b"k" * 32,  # ServerKey with wrong magic
    b"\x06\x00\x00\x00\x01x",                          # KeepAlive must be empty
])
def test_malformed(raw):
    d = fr.FrameDecoder()
    d.receive_data(raw)
    with pytest.raises(ProtocolError):
        d.next_event()


def test_old_forms():
    d = fr.FrameDecoder()
    d.receive_data(b"\x08\x00\x00\x00\x20" + K1 + b"\x09\x00\x00\x00\x20" + K2)
    assert d.events() == [fr.PeerGone(K1, 0), fr.PeerPresent(K2)]


def test_long_ping_echoes_first_8():
    d = fr.server_decoder()
    d.receive_data(fr.frame_header(fr.FrameType.PING, 1000) + b"A" * 8 + b"B" * 992)
    assert d.next_event() == fr.Ping(b"A" * 8)
    d.receive_data(fr.frame_header(fr.FrameType.PING, 1001))
    with pytest.raises(FrameTooLarge):
        d.next_event()


def test_unknown_frame_skipped_by_server_within_limit():
    d = fr.server_decoder()
    d.receive_data(b"\x77\x00\x00\x00\x03abc" + fr.encode(fr.KeepAlive()))
    assert d.events() == [fr.UnknownFrame(0x77, b"abc"), fr.KeepAlive()]


def _take_all(dec: fr.FrameDecoder, limit: int) -> list[tuple[int, bytes]]:
    out = []
    while True:
        got = dec.take_frames(limit)
        if not got:
            return out
        assert len(got) <= limit
        out += [(t, bytes(f)) for t, f in got]


def test_take_frames_whole_bytewise_and_limited():
    wire = [fr.encode(m) for m in ALL]
    expect = [(w[0], w) for w in wire]
    dec = fr.client_decoder()
    dec.receive_data(b"".join(wire))
    assert _take_all(dec, 3) == expect
    assert dec.buffered == 0
    dec = fr.client_decoder()
    got = []
    for b in b"".join(wire):
        dec.receive_data(bytes([b]))
        got += _take_all(dec, 1)
    assert got == expect


def test_take_frames_are_owned_copies_and_errors_come_after_good_frames():
    dec = fr.server_decoder()
    good = fr.encode_send_packet(K1, b"abc")
    dec.receive_data(good + fr.frame_header(0x04, fr.MAX_PACKET_SIZE + fr.KEY_LEN + 1))
    [(t, f)] = dec.take_frames(10)
    f[0] = 0x05  # rewriting the returned frame must not touch the decoder's buffer
    assert t == 0x04 and bytes(f[1:]) == good[1:]
    with pytest.raises(FrameTooLarge):
        dec.take_frames(10)
    dec = fr.server_decoder()
    dec.receive_data(good + good[:-1])
    dec.receive_data(b"")
    assert [bytes(f) for _, f in dec.take_frames(10)] == [good]
    with pytest.raises(ProtocolError):
        dec.take_frames(10)


def _seal_raw(client_priv: bytes, server_pub: bytes, body: bytes) -> fr.ClientInfo:
    import nacl.public

    box = nacl.public.Box(nacl.public.PrivateKey(client_priv), nacl.public.PublicKey(server_pub))
    nonce = b"\x01" * fr.NONCE_LEN
    return fr.ClientInfo(fr.public_key(client_priv), nonce, box.encrypt(body, nonce).ciphertext)


def test_client_info_nested_past_the_stack_is_a_handshake_error():
    # Fits in the 256 KiB ClientInfo limit, sent before any authentication (issue 10).
    body = b"[" * 120_000 + b"]" * 120_000
    msg = _seal_raw(CLIENT_PRIV, SERVER_PUB, body)
    assert len(fr.encode(msg)) <= fr.MAX_CLIENT_INFO_LEN + fr.HEADER_LEN
    with pytest.raises(HandshakeError):
        fr.open_client_info(SERVER_PRIV, msg)
