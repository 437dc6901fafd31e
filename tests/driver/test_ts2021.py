"""The /ts2021 upgrade end to end against the in-process server: both variants, and refusals."""

from __future__ import annotations

import base64
import json
import os
from urllib.parse import quote

import pytest
import trio

from appliance.config import config_from_dict
from appliance.keys import decode_key, generate_private_key
from appliance.noise.handshake import ClientHandshake
from appliance.noise.transport import NoiseTransport
from appliance.serve import serve
from derp.transport import WebSocketStream
from derp.websocket import accept_key
from tests.ports import free_port




@pytest.fixture
async def server(tmp_path, nursery):
    port = free_port()
    cfg = config_from_dict({
        "server_url": f"http://127.0.0.1:{port}", "listen_addr": f"127.0.0.1:{port}",
        "data_dir": str(tmp_path), "derp": {"server": {"enabled": False}},
    })
    running = await nursery.start(serve, cfg)
    yield port, running
    running.cancel_scope.cancel()


async def http(port: int, request: bytes) -> tuple[bytes, bytes, trio.SocketStream]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(request)
    buf = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in buf:
            chunk = await stream.receive_some(65536)
            assert chunk, buf
            buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest, stream


async def server_key(port: int) -> bytes:
    head, rest, stream = await http(port, b"GET /key?v=133 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    with trio.fail_after(5):
        while True:
            more = await stream.receive_some(65536)
            if not more:
                break
            rest += more
    await stream.aclose()
    assert head.startswith(b"HTTP/1.1 200")
    doc = json.loads(rest)
    assert doc["legacyPublicKey"] == "mkey:" + "0" * 64
    return decode_key("mkey", doc["publicKey"])


async def test_websocket_variant_carries_noise_and_http2(server):
    port, _ = server
    ch = ClientHandshake(await server_key(port), generate_private_key(), 133)
    ws_key = base64.b64encode(os.urandom(16))
    head, rest, stream = await http(port, (
        f"GET /ts2021?X-Tailscale-Handshake={quote(base64.b64encode(ch.initiation).decode())} HTTP/1.1\r\n"
        "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {ws_key.decode()}\r\nSec-WebSocket-Protocol: tailscale-control-protocol\r\n\r\n"
    ).encode())
    assert head.startswith(b"HTTP/1.1 101")
    assert b"sec-websocket-accept: " + accept_key(ws_key) in head
    ws = WebSocketStream(stream, client=True, leftover=rest)
    got = b""
    with trio.fail_after(5):
        while len(got) < 51:
            got += await ws.receive_some()
    tx, rx = ch.finish(got[:51])
    noise = NoiseTransport(tx, rx)
    plain = noise.receive_data(got[51:])
    with trio.fail_after(5):
        while len(plain) < 9:
            plain += noise.receive_data(await ws.receive_some())
    assert plain[3] == 0x04  # no early payload here: the server's HTTP/2 SETTINGS frame comes first
    await ws.aclose()


async def test_plain_variant_sends_early_payload_first(server):
    port, _ = server
    ch = ClientHandshake(await server_key(port), generate_private_key(), 133)
    head, rest, stream = await http(port, (
        "POST /ts2021 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: upgrade\r\n"
        "Upgrade: tailscale-control-protocol\r\n"
        f"X-Tailscale-Handshake: {base64.b64encode(ch.initiation).decode()}\r\n\r\n"
    ).encode())
    assert head.startswith(b"HTTP/1.1 101") and b"upgrade: tailscale-control-protocol" in head.lower()
    with trio.fail_after(5):
        while len(rest) < 51 + 3:
            rest += await stream.receive_some(65536)
    tx, rx = ch.finish(rest[:51])
    plain = NoiseTransport(tx, rx).receive_data(rest[51:])
    assert plain.startswith(b"\xff\xff\xffTS")
    (n,) = (int.from_bytes(plain[5:9], "big"),)
    assert json.loads(plain[9 : 9 + n])["nodeKeyChallenge"].startswith("chalpub:")
    await stream.aclose()


@pytest.mark.parametrize("request_bytes,status", [
    (b"POST /ts2021 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", b"400"),
    (b"POST /ts2021 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: upgrade\r\nUpgrade: nope\r\n\r\n", b"400"),
    (b"POST /ts2021 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: upgrade\r\n"
     b"Upgrade: tailscale-control-protocol\r\nX-Tailscale-Handshake: !!notbase64\r\n\r\n", b"400"),
    (b"POST /ts2021 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: upgrade\r\n"
     b"Upgrade: tailscale-control-protocol\r\nX-Tailscale-Handshake: " + base64.b64encode(os.urandom(101)) + b"\r\n\r\n", b"400"),
    (b"GET /ts2021 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Key: eA==\r\nSec-WebSocket-Protocol: chat\r\n\r\n", b"400"),
])
async def test_bad_upgrades_are_refused_and_the_server_serves_on(server, request_bytes, status, caplog):
    port, _ = server
    head, _, stream = await http(port, request_bytes)
    assert head.split(b" ")[1] == status
    await stream.aclose()
    assert await server_key(port)  # still serving


async def test_http_api_needs_a_valid_api_key(server):
    port, running = server
    head, _, s = await http(port, b"GET /api/v1/user HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert head.split(b" ")[1] == b"401" and b"application/problem+json" in head
    await s.aclose()
    keys = running.api.apikeys
    rec, key = await keys.create(None)
    assert key.startswith("hskey-api-")
    await running.tailnet.create_user("zoe")
    head, rest, s = await http(port, b"GET /api/v1/user HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                     b"Authorization: Bearer " + key.encode() + b"\r\n\r\n")
    with trio.fail_after(5):
        while True:
            more = await s.receive_some(65536)
            if not more:
                break
            rest += more
    assert head.split(b" ")[1] == b"200" and json.loads(rest)["users"][0]["name"] == "zoe"
    await keys.expire(keys.find(rec.prefix))
    head, _, s = await http(port, b"GET /api/v1/user HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                  b"Authorization: Bearer " + key.encode() + b"\r\n\r\n")
    assert head.split(b" ")[1] == b"401"
    await s.aclose()
