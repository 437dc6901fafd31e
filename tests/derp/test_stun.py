"""STUN responder: fixed-byte vectors (stun.md) and a loopback UDP round trip."""

import socket

import pytest
import trio

from derp import stun
from derp.errors import StunError

REQ = bytes.fromhex("000100142112a4427c8b0724b4c12a1c6970ccb7802200087461696c6e6f64658028000469a4bf1a")
TXID = bytes.fromhex("7c8b0724b4c12a1c6970ccb7")
RESP = bytes.fromhex("0101000c2112a4427c8b0724b4c12a1c6970ccb7002000080001aa595e12a443")


def test_parse_captured_request():
    assert stun.parse_binding_request(REQ) == TXID
    assert stun.parse_binding_request(REQ, strict=True) == TXID


def test_build_request_matches_capture():
    assert stun.build_binding_request(TXID) == REQ


def test_response_vector_ipv4():
    assert stun.build_binding_response(TXID, "127.0.0.1", 35659) == RESP
    assert stun.parse_binding_response(RESP) == (TXID, "127.0.0.1", 35659)


def test_v4_mapped_reported_as_ipv4():
    assert stun.build_binding_response(TXID, "::ffff:127.0.0.1", 35659) == RESP


def test_response_ipv6():
    r = stun.build_binding_response(TXID, "2001:db8::1", 443)
    assert len(r) == 20 + 24
    assert r[2:4] == b"\x00\x18" and r[24:26] == b"\x00\x02"
    assert stun.parse_binding_response(r) == (TXID, "2001:db8::1", 443)


def test_minimal_request_without_attributes():
    req = b"\x00\x01\x00\x00" + stun.MAGIC_COOKIE + TXID
    assert stun.parse_binding_request(req) == TXID
    with pytest.raises(StunError):
        stun.parse_binding_request(req, strict=True)


@pytest.mark.parametrize("data", [
    b"",
    REQ[:19],                                          # shorter than a header
    REQ[:-1],                                          # truncated attribute
    REQ[:24],                                          # length field says more
    b"\x01\x01" + REQ[2:],                             # a response, not a request
    REQ[:4] + b"\x00\x00\x00\x00" + REQ[8:],           # no magic cookie
    REQ[:-1] + bytes([REQ[-1] ^ 1]),                   # bad fingerprint
    b"\x00\x01\x00\x03" + stun.MAGIC_COOKIE + TXID + b"abc",  # length not a multiple of 4
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",              # not STUN at all
    b"\x00" * 3000,                                    # too large
])
def test_malformed(data):
    with pytest.raises(StunError):
        stun.parse_binding_request(data)


def test_strict_wrong_software():
    body = stun.build_binding_request(TXID).replace(b"tailnode", b"tailnodX")
    with pytest.raises(StunError):  # fingerprint no longer matches either
        stun.parse_binding_request(body, strict=True)


async def _roundtrip(family, host, stats):
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(lambda task_status: stun.serve_stun(
            host, 0, stats=stats, task_status=task_status))
        sock = trio.socket.socket(family, socket.SOCK_DGRAM)
        with sock:
            await sock.bind((host, 0))
            await sock.sendto(b"garbage", (host, port))
            await sock.sendto(REQ, (host, port))
            with trio.fail_after(5):
                data, _ = await sock.recvfrom(2048)
            mine = sock.getsockname()
        nursery.cancel_scope.cancel()
    return data, mine


async def test_serve_stun_ipv4():
    stats = stun.StunStats()
    data, mine = await _roundtrip(socket.AF_INET, "127.0.0.1", stats)
    assert stun.parse_binding_response(data) == (TXID, "127.0.0.1", mine[1])
    assert stats.responses == 1
    assert stats.dropped == {"malformed": 1}


async def test_serve_stun_ipv6():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind(("::1", 0))
        s.close()
    except OSError:
        pytest.skip("no ::1")
    stats = stun.StunStats()
    data, mine = await _roundtrip(socket.AF_INET6, "::1", stats)
    assert stun.parse_binding_response(data) == (TXID, "::1", mine[1])
