"""The public front door: ``/key``, the ``/ts2021`` upgrade into Noise + HTTP/2, and whatever
plain and upgrade routes other parts register (DERP, the login page)."""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import logging

import h11
import trio

from ..control.service import ControlService, NoisePeer
from ..keys import encode_key, generate_private_key, public_key
from ..noise.errors import NoiseError
from ..noise.handshake import respond
from ..noise.stream import NoiseStream
from ..noise.transport import NoiseTransport
from .h2server import H2Server
from .server import HEAD_TIMEOUT, Answer, HTTPServer, header, peer_name, text

log = logging.getLogger(__name__)

EARLY_MAGIC = b"\xff\xff\xffTS"
CONTROL_UPGRADE = "tailscale-control-protocol"
_ids = itertools.count(1)


class FrontDoor(HTTPServer):
    def __init__(self, noise_private: bytes, control: ControlService) -> None:
        super().__init__("http")
        self.noise_private = noise_private
        self.noise_public = public_key(noise_private)
        self.control = control
        self.noise_connections = 0

    async def answer(self, req: h11.Request, path: str, body: bytes) -> Answer:
        if path == "/key":
            doc = {
                "legacyPublicKey": encode_key("mkey", bytes(32)),
                "publicKey": encode_key("mkey", self.noise_public),
            }
            return 200, [("content-type", "application/json")], json.dumps(doc).encode()
        if path == "/health":
            return 200, [("content-type", "application/json")], b'{"status":"pass"}'
        got = await super().answer(req, path, body)
        if got[0] == 404 and path == "/":
            return text(200, "trioscale: a Tailscale control server. Point clients here with "
                             "`tailscale up --login-server`.\n")
        return got

    async def upgrade(self, stream: trio.abc.Stream, conn: h11.Connection, req: h11.Request, path: str, name: str) -> bool:
        if path != "/ts2021":
            return False
        with trio.fail_after(HEAD_TIMEOUT):
            end = await self.read_event(stream, conn)
        if not isinstance(end, h11.EndOfMessage):
            await self.send_simple(stream, conn, *text(400, "the upgrade request has no body\n"))
            return True
        upgrade = header(req, b"upgrade")
        if req.method != b"POST" or upgrade is None:
            await self.send_simple(stream, conn, *text(400, "missing next protocol\n"))
            return True
        if upgrade != CONTROL_UPGRADE:
            await self.send_simple(stream, conn, *text(400, "unknown next protocol\n"))
            return True
        try:
            initiation = base64.b64decode(header(req, b"x-tailscale-handshake") or "", validate=True)
            hs = respond(self.noise_private, initiation)
        except (binascii.Error, ValueError, NoiseError) as e:
            log.warning("%s: bad Noise handshake: %s", name, e)
            await self.send_simple(stream, conn, *text(400, "bad handshake\n"))
            return True
        head = conn.send(
            h11.InformationalResponse(
                status_code=101, headers=[("upgrade", CONTROL_UPGRADE), ("connection", "upgrade")]
            )
        )
        leftover = conn.trailing_data[0]
        transport = NoiseTransport(hs.tx_key, hs.rx_key)
        challenge = json.dumps(
            {"nodeKeyChallenge": encode_key("chalpub", public_key(generate_private_key()))}
        ).encode()
        early = EARLY_MAGIC + len(challenge).to_bytes(4, "big") + challenge
        # The 101, the Noise response and the early payload go out in one write.
        await stream.send_all(head + hs.response + transport.encrypt(early))
        machine = encode_key("mkey", hs.machine_key)
        cname = f"noise-{next(_ids)}[{peer_name(stream)} {machine[5:13]}]"
        peer = NoisePeer(machine_key=machine, version=hs.version, remote=peer_name(stream))
        self.noise_connections += 1
        try:
            await H2Server(NoiseStream(stream, transport, leftover), self.control.handle, cname, peer).serve()
        finally:
            self.noise_connections -= 1
        return True
