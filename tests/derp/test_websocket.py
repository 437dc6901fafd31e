"""Sans-IO RFC 6455 framing tests."""

import pytest

from derp import websocket as ws
from derp.errors import FrameTooLarge, ProtocolError


def test_accept_key_rfc_example():
    assert ws.accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_rfc_masked_frame_as_binary():
    # RFC 6455 §5.7 masked "Hello", with the opcode changed from text to binary.
    raw = bytes.fromhex("8285 37fa213d 7f9f4d5158".replace(" ", ""))
    c = ws.WebSocketCodec()
    c.receive_data(raw)
    assert c.next_event() == ws.Data(b"Hello")
    assert c.next_event() is None


def test_text_frame_refused():
    c = ws.WebSocketCodec()
    c.receive_data(bytes.fromhex("818537fa213d7f9f4d5158"))
    with pytest.raises(ProtocolError):
        c.next_event()


def test_unmasked_client_frame_refused():
    c = ws.WebSocketCodec()
    c.receive_data(b"\x82\x02hi")
    with pytest.raises(ProtocolError):
        c.next_event()


def _client_frames():
    cl = ws.WebSocketCodec(client=True)
    return (cl.send_binary(b"a" * 10) + cl.send_binary(b"b" * 300) + cl.send_ping(b"p")
            + cl.send_binary(b"c" * 70000) + cl.send_close(1000, "bye"))


EXPECTED = [ws.Data(b"a" * 10), ws.Data(b"b" * 300), ws.PingReceived(b"p"),
            ws.Data(b"c" * 70000), ws.CloseReceived(1000, "bye")]


def _drain(c):
    out = []
    while (ev := c.next_event()) is not None:
        out.append(ev)
    return out


def test_roundtrip_whole_and_bytewise():
    data = _client_frames()
    s = ws.WebSocketCodec()
    s.receive_data(data)
    assert _drain(s) == EXPECTED
    s = ws.WebSocketCodec()
    out = []
    for i in range(0, len(data), 997):
        s.receive_data(data[i : i + 997])
        out += _drain(s)
    assert out == EXPECTED
    s = ws.WebSocketCodec()
    out = []
    for b in data[:400]:
        s.receive_data(bytes([b]))
        out += _drain(s)
    assert out == EXPECTED[:3]


def test_server_frames_unmasked_and_client_reads_them():
    s = ws.WebSocketCodec()
    f = s.send_binary(b"xyz")
    assert f == b"\x82\x03xyz"
    cl = ws.WebSocketCodec(client=True)
    cl.receive_data(f + s.send_pong(b"q"))
    assert _drain(cl) == [ws.Data(b"xyz"), ws.PongReceived(b"q")]


def test_fragmented_message():
    # binary, FIN=0 "ab" then continuation FIN=1 "cd", both masked with a zero key
    raw = b"\x02\x82\x00\x00\x00\x00ab" + b"\x80\x82\x00\x00\x00\x00cd"
    c = ws.WebSocketCodec()
    c.receive_data(raw)
    assert _drain(c) == [ws.Data(b"ab"), ws.Data(b"cd")]
    c = ws.WebSocketCodec()
    c.receive_data(b"\x80\x82\x00\x00\x00\x00cd")
    with pytest.raises(ProtocolError):
        c.next_event()


def test_oversized_rejected_from_header():
    c = ws.WebSocketCodec()
    c.receive_data(b"\x82\xff" + (ws.MAX_WS_FRAME + 1).to_bytes(8, "big"))
    with pytest.raises(FrameTooLarge):
        c.next_event()


def test_bad_control_frames():
    c = ws.WebSocketCodec()
    c.receive_data(b"\x89\xfe\x00\x80")  # ping with 128 bytes
    with pytest.raises(ProtocolError):
        c.next_event()
    c = ws.WebSocketCodec()
    c.receive_data(b"\x09\x80\x00\x00\x00\x00")  # ping without FIN
    with pytest.raises(ProtocolError):
        c.next_event()
    c = ws.WebSocketCodec()
    c.receive_data(b"\xc2\x80\x00\x00\x00\x00")  # RSV1 set
    with pytest.raises(ProtocolError):
        c.next_event()


def test_truncated_needs_more():
    data = ws.WebSocketCodec(client=True).send_binary(b"hello" * 100)
    c = ws.WebSocketCodec()
    c.receive_data(data[:-1])
    assert c.next_event() is None
    c.receive_data(data[-1:])
    assert c.next_event() == ws.Data(b"hello" * 100)
