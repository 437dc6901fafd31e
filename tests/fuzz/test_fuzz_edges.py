"""Fuzzing the connection handlers with their real cores behind them (issue 10, item 6): HTTP/1.1
heads (plain routes and the /ts2021, WebSocket and /derp upgrades) into the real front door of
an in-process server, HTTP/2 through h2 into the real control handlers (with resets and
stream-ID races), and the DERP server's handshake and frames.

For every input: the handler returns (nothing escapes it), no answer is a 5xx, no ERROR line is
logged, and what the connection held is given back (handler tasks, the shared body budget)."""

from __future__ import annotations

import base64
import logging

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.config import config_from_dict
from appliance.control.hostinfo import Hostinfo
from appliance.console.sessions import csrf_token
from appliance.control.service import NoisePeer
from appliance.http.h2server import H2Server
from appliance.noise.handshake import ClientHandshake
from appliance.serve import serve
from bench.control_load import free_port
from derp import frames as fr
from derp.server import DerpServer

from ..oidc.discovery_stub import serve_discovery
from .mutate import chunks, mutated
from .profile import fuzz, scaled

HANDSHAKE = b"@@HANDSHAKE@@"  # replaced by a valid initiation for the server under test
LOGIN = b"@@LOGIN@@"  # replaced by the auth ID of a registration waiting on the server
CHECK = b"@@CHECK@@"  # and of an SSH check
SESSION = b"@@SESSION@@"  # a web console session's secret, and its CSRF token
CSRF = b"@@CSRF@@"


@pytest.fixture
async def running(nursery, tmp_path):
    """A server with sign-in through a provider that answers discovery (its /register/ID pages
    send people there, /oidc/callback and /oidc/confirm take them back), a registration and an
    SSH check waiting."""
    port = free_port()
    issuer = await serve_discovery("127.0.0.1", free_port(), nursery)
    cfg = config_from_dict({
        "server_url": f"http://127.0.0.1:{port}",
        "listen_addr": f"127.0.0.1:{port}",
        "data_dir": str(tmp_path / "data"),
        "unix_socket": str(tmp_path / "data" / "trioscale.sock"),
        "dns": {"base_domain": "ts.test", "override_local_dns": False},
        "derp": {"server": {"enabled": True, "stun_listen_addr": f"127.0.0.1:{free_port()}"}},
        "oidc": {"issuer": issuer, "client_id": "fuzz", "client_secret": "s"},
    })
    running = await nursery.start(serve, cfg)
    auth, now = running.control.auth, running.tailnet.clock()
    running.login = auth.start_registration(machine_key="mkey:" + "44" * 32, node_key="nodekey:" + "55" * 32,
                                            hostinfo=Hostinfo(hostname="<b>laptop</b>"), remote="192.0.2.9:1", now=now)
    running.check = auth.start_ssh_check(src_node_id=1, dst_node_id=2, local_user="root", remote="192.0.2.9:1",
                                         now=now)
    running.session = await running.api.backend.console.start(None, "link", "192.0.2.9")
    yield running
    running.cancel_scope.cancel()


async def send_then_close(client: trio.abc.HalfCloseableStream, data: bytes, cuts: list[int]) -> None:
    """``data`` in pieces, then end of input; the server may hang up first."""
    try:
        for chunk in chunks(data, cuts):
            await client.send_all(chunk)
        await client.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# --- HTTP/1.1 heads -----------------------------------------------------------------------

TARGETS = ["/key", "/key?v=106", "/ts2021", "/ts2021?X-Tailscale-Handshake=" + HANDSHAKE.decode(), "/derp",
           "/derp/probe", "/derp/latency-check", "/generate_204", "/health", "/", "/register/abc",
           "/api/v1/user", "/api/v1/node?user=x", "/api/v1/policy", "*", "http://a/key", "/%00", "/" + "a" * 3000,
           # sign-in: the AuthURL pages, the provider's way back and the confirmation
           "/register/" + LOGIN.decode(), "/auth/" + CHECK.decode(), "/register/" + CHECK.decode(),
           "/auth/" + LOGIN.decode() + "/x", "/register/hskey-authreq-" + "0" * 24, "/register/%ff%fe",
           "/oidc/callback?state=x&code=y", "/oidc/callback?state=&code=", "/oidc/callback",
           "/oidc/callback?error=access_denied&error_description=%3Cscript%3Ealert(1)%3C/script%3E",
           "/oidc/callback?" + "&".join(f"a{i}=b" for i in range(40)), "/oidc/callback?state=%ff&code=" + "c" * 9000,
           "/oidc/confirm", "/oidc/confirm?token=x",
           # the web console: pages, sign-in, its files and the API behind a session
           "/admin", "/admin/", "/admin/machines", "/admin/policy", "/admin/keys", "/admin/nosuch", "/admin/login",
           "/admin/login/x", "/admin/login/" + "a" * 43, "/admin/login/%ff", "/admin/oidc", "/admin/logout",
           "/admin/static/console.js", "/admin/static/../api.py", "/admin/api/v1/node", "/admin/api/v1/user",
           "/admin/api/v1/policy", "/admin/api/v1/policy/validate", "/admin/api/v1/node/1/rename/%ff",
           "/admin/api/v1/console/login", "/admin/api/v1/policy/reachers?dst=%00"]
HEADER_VALUES = {
    "host": ["a", "127.0.0.1:8080", ""],
    "upgrade": ["tailscale-control-protocol", "websocket", "DERP", "h2c", "x" * 100],
    "connection": ["upgrade", "close", "keep-alive", "Upgrade, close"],
    "x-tailscale-handshake": [HANDSHAKE.decode(), base64.b64encode(b"x" * 101).decode(), "!!", ""],
    "content-length": ["0", "5", "100", "-1", "99999999999", "1,1", " 3"],
    "transfer-encoding": ["chunked", "gzip", "chunked, chunked", "identity"],
    "sec-websocket-key": ["dGhlIHNhbXBsZSBub25jZQ==", ""],
    "sec-websocket-protocol": ["tailscale-control-protocol", "x"],
    "sec-websocket-version": ["13"],
    "authorization": ["Bearer tskey-api-nope", "Basic eA=="],
    "derp-fast-start": ["1"],
    "content-type": ["application/json", "application/x-www-form-urlencoded"],
    "cookie": ["trioscale_oidc_state=x", "trioscale_oidc_confirm=x; trioscale_oidc_state=y", "=;;\"", "a" * 500,
               "trioscale_console=" + SESSION.decode(), "trioscale_console=x" * 40],
    "x-csrf-token": [CSRF.decode(), "x"],
    "origin": ["http://127.0.0.1:8080", "null", "http://evil.example"],
}


@st.composite
def http_requests(draw) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "PRI"]))
    target = draw(st.sampled_from(TARGETS))
    names = draw(st.lists(st.sampled_from(sorted(HEADER_VALUES)), max_size=6))
    lines = [f"{method} {target} HTTP/1.1"]
    for name in names:
        lines.append(f"{name}: {draw(st.sampled_from(HEADER_VALUES[name]))}")
    body = draw(st.binary(max_size=300) | st.sampled_from(
        [b"token=x&action=add", b"action=cancel", b"token=%ff&action=add&" + b"x=1&" * 40, b"token=" + b"t" * 9000]))
    if draw(st.booleans()):
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    if draw(st.integers(0, 3)) == 0:
        raw = draw(mutated(raw, 3))
    return raw


@settings(fuzz, max_examples=scaled(150))
@given(request=http_requests(), cuts=st.lists(st.integers(0, 500), max_size=4), pipelined=st.booleans())
async def test_http1_heads_into_the_front_door(running, caplog, request, cuts, pipelined):
    front = running.front
    init = ClientHandshake(front.noise_public, bytes([7] * 32), 106, bytes([9] * 32)).initiation
    data = request.replace(HANDSHAKE, base64.b64encode(init)).replace(LOGIN, running.login.auth_id.encode())
    data = data.replace(CHECK, running.check.auth_id.encode())
    data = data.replace(SESSION, running.session.encode()).replace(CSRF, csrf_token(running.session).encode())
    if pipelined:
        data += b"GET /key HTTP/1.1\r\nhost: a\r\n\r\n"
    client, server_end = trio.testing.memory_stream_pair()
    reply = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(front.handle, server_end)
        await send_then_close(client, data, cuts)
        with trio.fail_after(20):
            while part := await client.receive_some(65536):
                reply += part
    for line in bytes(reply).split(b"\r\n"):
        if line.startswith(b"HTTP/1.1 "):
            assert not line[9:10] == b"5" or line[9:12] in (b"501", b"503"), (data, bytes(reply))
    assert not errors(caplog), (data, errors(caplog))
    assert front.body_budget.used == 0


# --- HTTP/2 through h2, into the control handlers ------------------------------------------

PATHS = ["/machine/register", "/machine/map", "/machine/ping-response?token=x", "/machine/update-health",
         "/machine/set-device-attr", "/machine/audit-log", "/nope", ""]
BODIES = [b"", b"{}", b"[]", b"null", b'{"NodeKey": "nodekey:00"}', b'{"NodeKey": 5, "Hostinfo": []}',
          b'{"Version": 106, "NodeKey": "nodekey:' + b"ab" * 32 + b'", "Hostinfo": {"Hostname": "x"}}',
          b'{"Version": 106, "NodeKey": "nodekey:' + b"ab" * 32 + b'", "Stream": true}',
          b'{"Version": 106, "NodeKey": "nodekey:' + b"ab" * 32 + b'", "Auth": {"AuthKey": "nope"}}',
          b"[" * 5000, b"\xff\xfe", b'{"a": 1e999}']

H2_OPS = st.one_of(
    st.tuples(st.just("request"), st.sampled_from(PATHS), st.sampled_from(["POST", "GET", "PUT"]),
              st.sampled_from(BODIES), st.booleans(), st.integers(1, 3)),
    st.tuples(st.just("reset"), st.integers(0, 20), st.sampled_from(list(h2.errors.ErrorCodes))),
    st.tuples(st.just("data"), st.integers(0, 20), st.binary(max_size=2000), st.booleans()),
    st.tuples(st.just("window"), st.integers(-1, 20), st.integers(1, 2**20)),
    st.tuples(st.just("ping")),
    st.tuples(st.just("settings"), st.integers(0, 2**16), st.integers(16384, 2**20)),
    st.tuples(st.just("read")),
    st.tuples(st.just("raw"), st.binary(max_size=64)),
    st.tuples(st.just("stream-id"), st.integers(1, 2**31 - 1)),
)


@settings(fuzz, max_examples=scaled(120))
@given(ops=st.lists(H2_OPS, max_size=25))
async def test_h2_through_the_control_handlers(running, caplog, ops):
    client, server_end = trio.testing.memory_stream_pair()
    peer = NoisePeer(machine_key="mkey:" + "11" * 32, version=106, remote="192.0.2.1:41641")
    budget = running.front.body_budget
    h2s = H2Server(server_end, running.control.handle, "h2-fuzz", peer, body_budget=budget)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    ids: list[int] = []
    statuses: list[str] = []
    done = trio.Event()

    async def serve_it():
        try:
            await h2s.serve()
        finally:
            await server_end.aclose()  # the caller owns the stream, as the front door does
            done.set()

    async def read_some():
        with trio.move_on_after(0.01):
            data = await client.receive_some(65536)
            if data:
                try:
                    for ev in c.receive_data(data):
                        if isinstance(ev, h2.events.ResponseReceived):
                            statuses.append(dict(ev.headers).get(b":status", b"").decode())
                        elif isinstance(ev, h2.events.DataReceived):
                            c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                except h2.exceptions.ProtocolError:
                    pass  # our raw bytes may have broken the client's view: the server's matters

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_it)
        try:
            for op in ops:
                kind = op[0]
                try:
                    if kind == "request":
                        _, path, method, body, end, pieces = op
                        sid = c.get_next_available_stream_id()
                        hdrs = [(":method", method), (":path", path or "/"), (":scheme", "http"),
                                (":authority", "a")]
                        c.send_headers(sid, hdrs, end_stream=end and not body)
                        ids.append(sid)
                        if body:
                            step = max(1, len(body) // pieces)
                            for i in range(0, len(body), step):
                                last = end and i + step >= len(body)
                                c.send_data(sid, body[i:i + step], end_stream=last)
                    elif kind == "reset" and ids:
                        c.reset_stream(ids[op[1] % len(ids)], op[2])
                    elif kind == "data" and ids:
                        c.send_data(ids[op[1] % len(ids)], op[2], end_stream=op[3])
                    elif kind == "window":
                        sid = 0 if op[1] < 0 or not ids else ids[op[1] % len(ids)]
                        c.increment_flow_control_window(op[2], stream_id=sid or None)
                    elif kind == "ping":
                        c.ping(b"12345678")
                    elif kind == "settings":
                        c.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: op[1],
                                           h2.settings.SettingCodes.MAX_FRAME_SIZE: min(op[2], 2**24 - 1)})
                    elif kind == "stream-id":
                        # A HEADERS frame on a stream ID of our choosing, maybe lower than
                        # one already used: written by hand, h2's client would refuse to.
                        sid = op[1] | 1
                        frame = b"\x00\x00\x00\x01\x05" + sid.to_bytes(4, "big")
                        await client.send_all(c.data_to_send() + frame)
                        continue
                except (h2.exceptions.ProtocolError, ValueError, KeyError):
                    continue  # not a valid step for h2's client (it checks its own side)
                if kind == "raw":
                    await client.send_all(c.data_to_send() + op[1])
                elif kind == "read":
                    await client.send_all(c.data_to_send())
                    await read_some()
                else:
                    await client.send_all(c.data_to_send())
            await client.send_all(c.data_to_send())
            for _ in range(2):
                await read_some()
            await client.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        with trio.fail_after(20):
            await done.wait()
            while await client.receive_some(65536):
                pass
    assert "500" not in statuses, (ops, statuses)
    assert not errors(caplog), (ops, errors(caplog))
    assert not h2s._scopes and not h2s._requests
    assert budget.used == 0


# --- DERP handshake and frames --------------------------------------------------------------

DERP_PRIV = bytes(range(1, 33))
DERP_PUB = fr.public_key(DERP_PRIV)
CLIENT = bytes([0x21] * 32)
DERP_SESSION = b"".join([
    fr.encode(fr.seal_client_info(CLIENT, DERP_PUB, {"version": 2}, nonce=b"\x03" * 24)),
    fr.encode(fr.NotePreferred(True)),
    fr.encode(fr.SendPacket(b"\x45" * 32, b"hello")),
    fr.encode(fr.Ping(b"abcdefgh")),
    fr.encode(fr.WatchConns()),
])


@settings(fuzz, max_examples=scaled(150))
@given(data=st.one_of(mutated(DERP_SESSION, 6), st.binary(max_size=600)),
       cuts=st.lists(st.integers(0, 700), max_size=5), fast_start=st.booleans())
async def test_derp_server_sessions(caplog, data, cuts, fast_start):
    server = DerpServer(DERP_PRIV)
    client, server_end = trio.testing.memory_stream_pair()
    headers = [(b"host", b"a"), (b"connection", b"Upgrade"), (b"upgrade", b"DERP")]
    if fast_start:
        headers.append((b"derp-fast-start", b"1"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_upgrade, server_end, "GET", "/derp", headers, b"")
        await send_then_close(client, data, cuts)
        with trio.fail_after(20):
            while await client.receive_some(65536):
                pass
    assert not errors(caplog), (data, errors(caplog))
    assert server.metrics()["clients"] == 0
