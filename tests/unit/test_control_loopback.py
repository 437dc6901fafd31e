"""Driver tests of the control plane: the real server (appliance.serve) in-process on loopback,
driven by our own protocol client (bench.controlclient), one Noise + HTTP/2 connection each.

Covers the main job (register, full netmap, deltas, removal, keepalives) and issue 2's bar for
bad input: each kind of garbage ends only the connection that sent it, with one WARNING line
that names the peer and the reason, and the other clients keep working.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass

import pytest
import trio
import zstandard

from appliance.config import config_from_dict
from appliance.control import service as control_service
from appliance.noise.errors import NoiseError
from appliance.noise.handshake import RESPONSE_LEN
from appliance.noise.transport import NoiseTransport
from appliance.serve import Running, serve
from bench.controlclient import (
    ControlClientError,
    SimClient,
    dial_noise,
    fetch_server_key,
    upgrade_ts2021,
)
from tests.ports import free_port

HOST = "127.0.0.1"
WAIT = 10  # seconds; every wait on the server is bounded by this
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"




@dataclass
class Server:
    running: Running
    port: int
    public: bytes
    auth_key: str

    def client(self, name: str, **kw) -> SimClient:
        return SimClient(HOST, self.port, self.public, name, **kw)


def loopback_config(tmp_path, port: int, **extra):
    """The server on loopback ``port`` with its data under ``tmp_path``; ``extra`` adds keys."""
    return config_from_dict({
        "server_url": f"http://{HOST}:{port}",
        "listen_addr": f"{HOST}:{port}",
        "data_dir": str(tmp_path / "data"),
        "unix_socket": str(tmp_path / "data" / "trioscale.sock"),
        "dns": {"base_domain": "ts.test", "override_local_dns": False},
        "derp": {"server": {"enabled": False}},
        **extra,
    })


async def start_server(nursery: trio.Nursery, tmp_path, **extra) -> Server:
    """serve() in ``nursery`` on a free loopback port (``extra``: more config), with user alice
    and a reusable key for her."""
    port = free_port()
    running = await nursery.start(serve, loopback_config(tmp_path, port, **extra))
    user = await running.tailnet.create_user("alice")
    _, key = await running.tailnet.create_preauth_key(user.name, reusable=True)
    with trio.fail_after(WAIT):
        public = await fetch_server_key(HOST, port)
    return Server(running, port, public, key)


@pytest.fixture
async def server(nursery, tmp_path):
    s = await start_server(nursery, tmp_path)
    yield s
    s.running.cancel_scope.cancel()


async def joined(server: Server, nursery: trio.Nursery, name: str, **kw) -> SimClient:
    """A client that registered and holds an open map stream with its first netmap."""
    c = server.client(name, **kw)
    with trio.fail_after(WAIT):
        await c.connect(nursery)
        await c.register(server.auth_key)
        await c.open_map(endpoints=[f"192.0.2.1:{41640 + len(name)}"])
    return c


async def wait_peers(c: SimClient, want: set[int]) -> None:
    with trio.fail_after(WAIT):
        await c.wait_until(lambda: c.peer_ids() == want)


def assert_one_warning(caplog, local: str, reason: str) -> None:
    """Exactly one WARNING from the server, naming the peer's address and the reason."""
    warns = warnings_from_server(caplog)
    assert len(warns) == 1, [r.getMessage() for r in warns]
    assert local in warns[0].getMessage() and reason in warns[0].getMessage()


def warnings_from_server(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("appliance")]


async def check_still_working(server: Server, nursery: trio.Nursery, a: SimClient, b: SimClient) -> None:
    """The healthy clients still get deltas, and a new client can still join."""
    with trio.fail_after(WAIT):
        await a.lite_update(["198.51.100.7:41641"])
        await b.wait_until(lambda: "198.51.100.7:41641" in (b.map.peers[a.node_id] or {}).get("Endpoints", ()))
    c = await joined(server, nursery, "late")
    await wait_peers(a, {b.node_id, c.node_id})
    await wait_peers(c, {a.node_id, b.node_id})


async def read_until_closed(stream: trio.abc.Stream) -> bytes:
    """Everything the server sends until it closes (bounded by the caller)."""
    got = bytearray()
    while True:
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return bytes(got)
        if not data:
            return bytes(got)
        got += data


# --- the main job ---------------------------------------------------------------------------


async def test_three_clients_see_each_other(server, nursery):
    a, b, c = [await joined(server, nursery, n, record=True) for n in ("alpha", "beta", "gamma")]
    ids = {a.node_id, b.node_id, c.node_id}
    assert len(ids) == 3
    for cl in (a, b, c):
        await wait_peers(cl, ids - {cl.node_id})
    # The first netmap is complete: self node with its addresses, DERP map, allow-all filter.
    first = c.map.messages[0]
    assert first["Node"]["Name"] == "gamma.ts.test."
    assert first["Node"]["Addresses"][0].startswith("100.64.")
    assert first["PacketFilter"] and first["CollectServices"] is False
    assert {p["ID"] for p in first["Peers"]} == {a.node_id, b.node_id}
    # Endpoints from the lite update reached the peers.
    with trio.fail_after(WAIT):
        await a.wait_until(lambda: (a.map.peers[c.node_id] or {}).get("Endpoints") == ["192.0.2.1:41645"])
        await a.wait_until(lambda: a.map.peers[c.node_id].get("DiscoKey") == c.disco_key)


async def test_join_arrives_as_peers_changed_delta(server, nursery):
    olds = [await joined(server, nursery, n, record=True) for n in ("alpha", "beta", "gamma")]
    ids = {c.node_id for c in olds}
    for c in olds:
        await wait_peers(c, ids - {c.node_id})
    marks = [len(c.map.messages) for c in olds]
    fulls = [c.map.full_peer_lists for c in olds]
    new = await joined(server, nursery, "delta")
    for c, mark, full in zip(olds, marks, fulls):
        await wait_peers(c, ids - {c.node_id} | {new.node_id})
        later = c.map.messages[mark:]
        # Announced as a delta with the whole node, never as a resend of the full peer list.
        assert c.map.full_peer_lists == full
        assert all(not m.get("Peers") for m in later)
        added = [p for m in later for p in m.get("PeersChanged") or () if p["ID"] == new.node_id]
        assert added and added[0]["Name"] == "delta.ts.test."
    assert new.peer_ids() == ids


async def test_delete_arrives_as_peers_removed(server, nursery):
    a, b, c = [await joined(server, nursery, n, record=True) for n in ("alpha", "beta", "gamma")]
    await wait_peers(a, {b.node_id, c.node_id})
    await wait_peers(b, {a.node_id, c.node_id})
    mark = len(a.map.messages)
    await server.running.tailnet.delete_node(c.node_id)
    await wait_peers(a, {b.node_id})
    await wait_peers(b, {a.node_id})
    assert any(m.get("PeersRemoved") == [c.node_id] for m in a.map.messages[mark:])
    with trio.fail_after(WAIT):
        await c.map_stream.ended.wait()  # the deleted node's own stream ends


async def test_keepalives_are_zstd_frames(server, nursery, monkeypatch):
    monkeypatch.setattr(control_service, "KEEPALIVE_BASE", 0.2)
    monkeypatch.setattr(control_service, "KEEPALIVE_JITTER", 0.0)
    c = server.client("alpha")
    raw = bytearray()
    with trio.fail_after(WAIT):
        await c.connect(nursery)
        await c.register(server.auth_key)
        body = json.dumps(c._map_request(stream=True, omit_peers=False, endpoints=None)).encode()
        st = await c.h2.request("POST", "/machine/map", body, [("ts-lb", c.node_key)], on_data=raw.extend)
        assert await st.wait_headers() == 200
        frames: list[bytes] = []
        while len(frames) < 3:
            await trio.sleep(0.1)
            frames, rest = [], bytes(raw)
            while len(rest) >= 4:
                (n,) = struct.unpack("<I", rest[:4])  # little-endian length
                if len(rest) < 4 + n:
                    break
                frames.append(rest[4 : 4 + n])
                rest = rest[4 + n :]
    d = zstandard.ZstdDecompressor()
    for f in frames:
        assert f[:4] == ZSTD_MAGIC
    docs = [json.loads(d.decompressobj().decompress(f)) for f in frames]
    assert "Node" in docs[0]
    assert docs[1] == {"KeepAlive": True} and docs[2] == {"KeepAlive": True}


async def test_one_shot_map_and_unknown_node(server, nursery):
    a = await joined(server, nursery, "alpha")
    status, body = await a.post_json("/machine/map", {
        "Version": 133, "Compress": "zstd", "NodeKey": a.node_key, "DiscoKey": a.disco_key,
    })
    assert status == 200
    (n,) = struct.unpack("<I", body[:4])
    assert len(body) == 4 + n
    assert json.loads(zstandard.ZstdDecompressor().decompressobj().decompress(body[4:]))["Node"]["ID"] == a.node_id
    stranger = server.client("stranger")
    with trio.fail_after(WAIT):
        await stranger.connect(nursery)
        status, _ = await stranger.post_json("/machine/map", stranger._map_request(stream=True, omit_peers=False, endpoints=None))
    assert status == 404


# --- bad input ends only that connection ----------------------------------------------------


async def test_malformed_noise_record(server, nursery, caplog):
    a, b = await joined(server, nursery, "alpha"), await joined(server, nursery, "beta")
    caplog.clear()
    with trio.fail_after(WAIT):
        stream, ch = await dial_noise(HOST, server.port, server.public, b"\x07" * 32)
        local = "%s:%d" % ch.raw.socket.getsockname()[:2]
        # A record header with a ciphertext that is not sealed with the session key.
        await ch.raw.send_all(b"\x04\x00\x20" + b"\xaa" * 32)
        await read_until_closed(ch.raw)
        await ch.raw.aclose()
        await trio.sleep(0.1)
    assert_one_warning(caplog, local, "decryption failed")
    await check_still_working(server, nursery, a, b)


async def test_oversized_noise_record_header(server, nursery, caplog):
    a, b = await joined(server, nursery, "alpha"), await joined(server, nursery, "beta")
    caplog.clear()
    with trio.fail_after(WAIT):
        stream, ch = await dial_noise(HOST, server.port, server.public, b"\x08" * 32)
        local = "%s:%d" % ch.raw.socket.getsockname()[:2]
        await ch.raw.send_all(b"\x04\xff\xff")  # announces more than a record may hold
        await read_until_closed(ch.raw)
        await ch.raw.aclose()
        await trio.sleep(0.1)
    assert_one_warning(caplog, local, "exceeds")
    await check_still_working(server, nursery, a, b)


@pytest.mark.parametrize("tail", [
    H2_PREFACE[:10],  # cut inside the preface
    H2_PREFACE + b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x02",  # cut inside a SETTINGS frame
], ids=["in-preface", "in-frame"])
async def test_truncated_http2(server, nursery, caplog, tail):
    a, b = await joined(server, nursery, "alpha"), await joined(server, nursery, "beta")
    caplog.clear()
    with trio.fail_after(WAIT):
        stream, ch = await dial_noise(HOST, server.port, server.public, b"\x09" * 32)
        local = "%s:%d" % ch.raw.socket.getsockname()[:2]
        await stream.send_all(tail)
        await ch.raw.send_eof()
        await read_until_closed(ch.raw)
        await ch.raw.aclose()
        await trio.sleep(0.1)
    assert_one_warning(caplog, local, "truncated")
    await check_still_working(server, nursery, a, b)


async def test_truncated_request_body(server, nursery, caplog):
    a, b = await joined(server, nursery, "alpha"), await joined(server, nursery, "beta")
    c = server.client("cut")
    with trio.fail_after(WAIT):
        await c.connect(nursery)
        local = "%s:%d" % c.channel.raw.socket.getsockname()[:2]
        caplog.clear()
        # Headers promise 100 bytes; 10 arrive; then the connection ends.
        h = c.h2._h2
        sid = h.get_next_available_stream_id()
        h.send_headers(sid, [(":method", "POST"), (":scheme", "https"), (":authority", "x"),
                             (":path", "/machine/register"), ("content-length", "100")])
        h.send_data(sid, b'{"Version"')
        await c.h2._flush()
        await trio.sleep(0.1)
        await c.channel.raw.send_eof()
        while not c.h2.closed:  # our reader sees the server close
            await trio.sleep(0.02)
        await trio.sleep(0.1)
    assert_one_warning(caplog, local, "truncated")
    await check_still_working(server, nursery, a, b)


async def test_garbage_instead_of_http2(server, nursery, caplog):
    a, b = await joined(server, nursery, "alpha"), await joined(server, nursery, "beta")
    caplog.clear()
    with trio.fail_after(WAIT):
        stream, ch = await dial_noise(HOST, server.port, server.public, b"\x0a" * 32)
        local = "%s:%d" % ch.raw.socket.getsockname()[:2]
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_until_closed(ch.raw)
        await ch.raw.aclose()
        await trio.sleep(0.1)
    assert_one_warning(caplog, local, "HTTP/2")
    await check_still_working(server, nursery, a, b)


@pytest.mark.parametrize("path,body,reason", [
    ("/machine/register", b"{not json", "bad /machine/register request"),
    ("/machine/map", b"\xff\xfe", "bad /machine/map request"),
    ("/machine/register", b'{"NodeKey": 5}', "bad /machine/register request"),
    ("/machine/map", b"[" * 200_000, "bad /machine/map request"),  # nesting deeper than the parser goes
    ("/machine/register", b'{"NodeKey":"nodekey:zz"}', "bad /machine/register request"),
], ids=["syntax", "not-utf8", "wrong-type", "deep-nesting", "bad-key"])
async def test_malformed_json(server, nursery, caplog, path, body, reason):
    a, b = await joined(server, nursery, "alpha"), await joined(server, nursery, "beta")
    c = server.client("bad")
    with trio.fail_after(WAIT):
        await c.connect(nursery)
        local = "%s:%d" % c.channel.raw.socket.getsockname()[:2]
        caplog.clear()
        st = await c.h2.request("POST", path, body)
        await st.wait_response()
    assert st.status == 400
    warns = warnings_from_server(caplog)
    assert len(warns) == 1, [r.getMessage() for r in warns]
    assert local in warns[0].getMessage() and reason in warns[0].getMessage()
    await check_still_working(server, nursery, a, b)


async def test_oversized_json(server, nursery, caplog):
    a, b = await joined(server, nursery, "alpha"), await joined(server, nursery, "beta")
    c = server.client("big")
    with trio.fail_after(WAIT):
        await c.connect(nursery)
        local = "%s:%d" % c.channel.raw.socket.getsockname()[:2]
        caplog.clear()
        big = json.dumps({"Version": 133, "Hostinfo": {"Hostname": "x" * (2 << 20)}}).encode()
        st = await c.h2.request("POST", "/machine/register", big)
        with pytest.raises(ControlClientError):
            await st.wait_response()
    assert_one_warning(caplog, local, "body over")
    await check_still_working(server, nursery, a, b)


async def test_replayed_handshake_gets_nowhere(server, nursery, caplog):
    a, b = await joined(server, nursery, "alpha"), await joined(server, nursery, "beta")
    # What an eavesdropper recorded of a's login: its initiation and its first record (the
    # HTTP/2 preface, sealed with a's client→server key, nonce 0).
    recorded_init = a.channel.initiation
    recorded_record = NoiseTransport(a.channel.tx_key, a.channel.rx_key).encrypt(H2_PREFACE)
    caplog.clear()
    with trio.fail_after(WAIT):
        raw = await trio.open_tcp_stream(HOST, server.port)
        local = "%s:%d" % raw.socket.getsockname()[:2]
        response, leftover = await upgrade_ts2021(raw, f"{HOST}:{server.port}", recorded_init)
        assert len(response) == RESPONSE_LEN
        # A fresh server ephemeral key: the replayed session has keys nobody but the server knows.
        assert response != a.channel.response
        early = leftover or await raw.receive_some(65536)
        with pytest.raises(NoiseError):
            NoiseTransport(a.channel.tx_key, a.channel.rx_key).receive_data(early)
        await raw.send_all(recorded_record)
        await read_until_closed(raw)
        await raw.aclose()
        await trio.sleep(0.1)
    assert_one_warning(caplog, local, "decryption failed")
    # a's own session is unaffected by the replay of its handshake.
    await check_still_working(server, nursery, a, b)


async def test_bad_upgrades_are_refused(server, nursery, caplog):
    a, b = await joined(server, nursery, "alpha"), await joined(server, nursery, "beta")
    caplog.clear()
    with trio.fail_after(WAIT):
        raw = await trio.open_tcp_stream(HOST, server.port)
        local = "%s:%d" % raw.socket.getsockname()[:2]
        with pytest.raises(ControlClientError, match="400"):
            await upgrade_ts2021(raw, "x", b"\x00\x85\x01\x00\x60" + bytes(96))
        await raw.aclose()
        await trio.sleep(0.1)
    warns = warnings_from_server(caplog)
    assert len(warns) == 1 and local in warns[0].getMessage() and "handshake" in warns[0].getMessage()
    await check_still_working(server, nursery, a, b)
