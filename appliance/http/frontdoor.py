"""The public front door: ``/key``, the ``/ts2021`` upgrade into Noise + HTTP/2, and whatever
plain and upgrade routes other parts register (DERP, the login page)."""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import logging
from typing import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import h11
import trio

from derp.transport import WebSocketStream
from derp.websocket import accept_key

from ..control.service import ControlService, NoisePeer
from ..keys import encode_key, generate_private_key, public_key
from ..noise.errors import NoiseError
from ..noise.handshake import respond
from ..noise.stream import NoiseStream
from ..noise.transport import NoiseTransport
from .h2server import H2Server
from .limits import HEAVY_STEPS, BodyBudget, RegisterGate, SourceRates
from .server import HEAD_TIMEOUT, Answer, HTTPServer, Streamed, header, peer_name, text, throttled

log = logging.getLogger(__name__)

EARLY_MAGIC = b"\xff\xff\xffTS"
CONTROL_UPGRADE = "tailscale-control-protocol"
_ids = itertools.count(1)


class FrontDoor(HTTPServer):
    """Args: the server's Noise private key; the control service, or None while this server
    is a standby (see role.py: ``/ts2021`` is then refused, and ``health`` says so)."""

    max_body = 1 << 20  # anyone can send these: the admin socket's 4 MiB is for local admins

    def __init__(self, noise_private: bytes, control: ControlService | None = None) -> None:
        super().__init__("http", BodyBudget())
        self.noise_private = noise_private
        self.noise_public = public_key(noise_private)
        self.noise_connections = 0
        self.rates = SourceRates()
        self.heavy = trio.CapacityLimiter(HEAVY_STEPS)
        self._sessions: set[trio.CancelScope] = set()
        self.control: ControlService | None = None
        # GET /health; replaced by the server's role (role.py) where there are standbys.
        self.health: Callable[[], Awaitable[Answer]] = _always_active
        self.set_control(control)

    def set_control(self, control: ControlService | None) -> None:
        """Serve control traffic with ``control`` (this server became active), or refuse it
        (None: it stepped down, and every open Noise session is ended: its clients reconnect
        to the active server)."""
        if control is not None:
            control.register_gate = RegisterGate(self.rates.unkeyed_register)
        else:
            for scope in self._sessions:
                scope.cancel()
        self.control = control

    async def answer(self, req: h11.Request, path: str, body: bytes, source: str) -> Answer | Streamed:
        if path == "/key":
            if not self.rates.key.allow(source):
                throttled.warning("rate-key", "%s: too many /key requests, answering 429", source)
                return too_many()
            doc = {
                "legacyPublicKey": encode_key("mkey", bytes(32)),
                "publicKey": encode_key("mkey", self.noise_public),
            }
            return 200, [("content-type", "application/json")], json.dumps(doc).encode()
        if path == "/health":
            return await self.health()
        got = await super().answer(req, path, body, source)
        if path == "/" and not isinstance(got, Streamed) and got[0] == 404:
            return text(200, "trioscale: a Tailscale control server. Point clients here with "
                             "`tailscale up --login-server`.\n")
        return got

    async def upgrade(self, stream: trio.abc.Stream, conn: h11.Connection, req: h11.Request, path: str,
                      name: str, source: str) -> bool:
        if path != "/ts2021":
            return False
        control = self.control
        if control is None:
            await self.send_simple(stream, conn, 503, [("content-type", "text/plain; charset=utf-8"),
                                                       ("retry-after", "5")],
                                   b"this trioscale server is a standby; the active one serves control traffic\n")
            return True
        if not self.rates.noise_handshake.allow(source):
            throttled.warning("rate-noise", "%s: too many Noise handshakes from %s, answering 429", name, source)
            await self.send_simple(stream, conn, *too_many())
            return True
        with trio.fail_after(HEAD_TIMEOUT):
            end = await self.read_event(stream, conn)
        if not isinstance(end, h11.EndOfMessage):
            await self.send_simple(stream, conn, *text(400, "the upgrade request has no body\n"))
            return True
        upgrade = header(req, b"upgrade")
        if upgrade is not None and upgrade.lower() == "websocket":
            await self._websocket(stream, conn, req, name, control)
            return True
        if req.method != b"POST" or upgrade is None:
            await self.send_simple(stream, conn, *text(400, "missing next protocol\n"))
            return True
        if upgrade != CONTROL_UPGRADE:
            await self.send_simple(stream, conn, *text(400, "unknown next protocol\n"))
            return True
        hs = await self._handshake(stream, conn, header(req, b"x-tailscale-handshake"), name)
        if hs is None:
            return True
        head = conn.send(
            h11.InformationalResponse(
                status_code=101, headers=[("upgrade", CONTROL_UPGRADE), ("connection", "upgrade")]
            )
        )
        transport = NoiseTransport(hs.tx_key, hs.rx_key)
        # The 101, the Noise response and the early payload go out in one write.
        await stream.send_all(head + hs.response + transport.encrypt(_early_payload()))
        await self._serve_noise(stream, NoiseStream(stream, transport, conn.trailing_data[0]), hs, control)
        return True

    async def _websocket(self, stream: trio.abc.Stream, conn: h11.Connection, req: h11.Request, name: str,
                         control: ControlService) -> None:
        """The browser client's variant: WebSocket with subprotocol tailscale-control-protocol,
        the initiation in the query string, every later byte in binary messages."""
        protocols = [p.strip() for p in (header(req, b"sec-websocket-protocol") or "").split(",")]
        ws_key = header(req, b"sec-websocket-key")
        if CONTROL_UPGRADE not in protocols or not ws_key:
            await self.send_simple(stream, conn, *text(400, "WebSocket needs subprotocol tailscale-control-protocol\n"))
            return
        query = parse_qs(urlsplit(req.target.decode("latin-1")).query)
        initiation = (query.get("X-Tailscale-Handshake") or [""])[-1]
        hs = await self._handshake(stream, conn, initiation, name)
        if hs is None:
            return
        head = conn.send(
            h11.InformationalResponse(
                status_code=101,
                headers=[
                    ("upgrade", "websocket"), ("connection", "Upgrade"),
                    ("sec-websocket-accept", accept_key(ws_key.encode()).decode()),
                    ("sec-websocket-protocol", CONTROL_UPGRADE),
                ],
            )
        )
        await stream.send_all(head)
        ws = WebSocketStream(stream, client=False, leftover=conn.trailing_data[0])
        await ws.send_all(hs.response)
        # No early payload on this path, as the reference server does.
        transport = NoiseTransport(hs.tx_key, hs.rx_key)
        await self._serve_noise(stream, NoiseStream(ws, transport), hs, control)

    async def _handshake(self, stream: trio.abc.Stream, conn: h11.Connection, b64: str | None, name: str):
        try:
            initiation = base64.b64decode(b64 or "", validate=True)
            async with self.heavy:
                return respond(self.noise_private, initiation)
        except (binascii.Error, ValueError, NoiseError) as e:
            throttled.warning("bad-noise-handshake", "%s: bad Noise handshake: %s", name, e)
            await self.send_simple(stream, conn, *text(400, "bad handshake\n"))
            return None

    async def _serve_noise(self, raw: trio.abc.Stream, noise: NoiseStream, hs, control: ControlService) -> None:
        machine = encode_key("mkey", hs.machine_key)
        cname = f"noise-{next(_ids)}[{peer_name(raw)} {machine[5:13]}]"
        peer = NoisePeer(machine_key=machine, version=hs.version, remote=peer_name(raw))
        self.noise_connections += 1
        # Ended when this server steps down: its tailnet is gone, the client must reconnect.
        with trio.CancelScope() as scope:
            self._sessions.add(scope)
            if self.control is not control:
                scope.cancel()
            try:
                await H2Server(noise, control.handle, cname, peer, body_budget=self.body_budget,
                               cpu=self.heavy).serve()
            finally:
                self._sessions.discard(scope)
                self.noise_connections -= 1


async def _always_active() -> Answer:
    return 200, [("content-type", "application/json")], b'{"status":"pass","role":"active"}'


def too_many() -> Answer:
    return 429, [("content-type", "text/plain; charset=utf-8"), ("retry-after", "1")], b"too many requests\n"


def _early_payload() -> bytes:
    """Magic, length, then a fresh node-key challenge (stored by the client, not yet used)."""
    challenge = json.dumps(
        {"nodeKeyChallenge": encode_key("chalpub", public_key(generate_private_key()))}
    ).encode()
    return EARLY_MAGIC + len(challenge).to_bytes(4, "big") + challenge
