"""The endpoints a client calls inside Noise: register, map, and the minor ones."""

from __future__ import annotations

import json
import logging
import random
from typing import Callable
from urllib.parse import parse_qs, urlsplit
from dataclasses import dataclass
from typing import Any

import trio

from ..errors import AuthFailed, NotFound
from ..http.h2server import H2Server, Request, Response
from ..keys import KeyFormatError, ZERO_KEY, decode_key, decode_optional_key, encode_key
from ..storage.records import NodeRecord
from ..tailnet.changes import FULL
from ..tailnet.model import TAGGED_DEVICES_LOGIN, TAGGED_DEVICES_USER_ID, Tailnet
from .interactive import PENDING_LIFETIME, PendingLogins
from .mapframes import encode_frame
from .mapper import Mapper, SessionView
from .setdns import SetDNS
from .wire import MapRequest, RegisterRequest, WireError, from_json, parse_time, to_json
from .wire import RegisterResponse, WireLogin, WireUser

log = logging.getLogger(__name__)

# The client's watchdog gives up after 120 s without a frame; 50 s plus jitter keeps well
# inside it without a herd of keepalives all at once.
KEEPALIVE_BASE = 50.0
KEEPALIVE_JITTER = 9.0
# After a wake-up, wait this long for more changes so a burst becomes one delta.
COALESCE_DELAY = 0.02
# Under churn (many nodes joining or reconnecting at once) a session sends at most one delta
# per this interval: every change wakes every session, so without it the server rebuilds and
# sends N deltas per change and spends its time on them instead of on the joins (issue 2).
# Headscale batches for 800 ms; a change after a quiet spell still goes out after 20 ms.
MIN_DELTA_INTERVAL = 0.5


@dataclass
class NoisePeer:
    machine_key: str  # "mkey:…" text
    version: int
    remote: str


def _filter_endpoints(eps: list) -> tuple[str, ...]:
    out = []
    for e in eps:
        if not isinstance(e, str):
            continue
        # Link-local and zoned IPv6 endpoints are useless to peers on other hosts.
        if e.startswith("[fe80:") or "%" in e:
            continue
        out.append(e)
    return tuple(out)


class ControlService:
    def __init__(self, tailnet: Tailnet, mapper: Mapper, server_url: str) -> None:
        self.tailnet = tailnet
        self.mapper = mapper
        self.server_url = server_url.rstrip("/")
        self.logins = PendingLogins()
        self.ping_answered: Callable[[str], bool] = lambda token: False  # set by the HA prober
        # Set by the policy layer; with no policy no tag may be requested (tagOwners decide).
        self.tag_permitted: Callable[[int, str], bool] = lambda user_id, tag: False
        self.set_dns = SetDNS(tailnet, mapper)  # its zone is set when certificates are on

    async def handle(self, req: Request, resp: Response, conn: H2Server) -> None:
        peer: NoisePeer = conn.context  # type: ignore[assignment]
        path = req.path.split("?", 1)[0]
        try:
            if path == "/machine/register" and req.method == "POST":
                await self.register(req, resp, peer, conn.name)
            elif path == "/machine/map" and req.method == "POST":
                await self.map(req, resp, peer, conn.name)
            elif path == "/machine/ping-response":
                token = parse_qs(urlsplit(req.path).query).get("token", [""])[-1]
                await resp.start(200 if self.ping_answered(token) else 404, end=True)
            elif path in ("/machine/update-health", "/machine/audit-log"):
                await resp.start(204, end=True)
            elif path == "/machine/set-dns" and req.method == "POST":
                await self.set_dns.handle(req, resp, peer.machine_key, conn.name)
            elif path == "/machine/set-device-attr":
                await resp.simple(200, b"{}", "application/json")
            else:
                await resp.simple(404, b"not found\n")
        # RecursionError: json.loads on nesting deeper than the interpreter's stack allows.
        except (WireError, KeyFormatError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            log.warning("%s: bad %s request: %s", conn.name, path, e)
            if not resp.headers_sent:
                await resp.simple(400, f"bad request: {e}\n".encode())

    # --- register -----------------------------------------------------------------------

    def _identity(self, n: NodeRecord) -> tuple[WireUser, WireLogin]:
        if n.tags or n.user_id is None:
            return (
                WireUser(id=TAGGED_DEVICES_USER_ID, display_name="Tagged Devices"),
                WireLogin(id=TAGGED_DEVICES_USER_ID, login_name=TAGGED_DEVICES_LOGIN, display_name="Tagged Devices"),
            )
        u = self.tailnet.users[n.user_id]
        name = u.display_name or u.name
        return WireUser(id=u.id, display_name=name), WireLogin(id=u.id, login_name=u.login_name, display_name=name)

    def _authorized(self, n: NodeRecord) -> RegisterResponse:
        user, login = self._identity(n)
        return RegisterResponse(user=user, login=login, machine_authorized=True)

    async def register(self, req: Request, resp: Response, peer: NoisePeer, name: str) -> None:
        rr = from_json(RegisterRequest, json.loads(req.body))
        answer = await self._register(rr, peer, name)
        await resp.simple(200, json.dumps(to_json(answer)).encode(), "application/json")

    async def _register(self, rr: RegisterRequest, peer: NoisePeer, name: str) -> RegisterResponse:
        node_key_raw = decode_key("nodekey", rr.node_key)
        if node_key_raw == ZERO_KEY:
            raise WireError("NodeKey is zero")
        old_raw = decode_optional_key("nodekey", rr.old_node_key)
        old_key = encode_key("nodekey", old_raw) if old_raw else None
        hostinfo = rr.hostinfo or {}
        now = self.tailnet.clock()
        existing = self.tailnet.node_by_key(rr.node_key)
        if existing is not None and existing.machine_key != peer.machine_key:
            log.warning("%s: node key of node %d presented by another machine", name, existing.id)
            return RegisterResponse(error="this node key belongs to another machine")

        expiry = parse_time(rr.expiry)
        if expiry is not None and expiry <= now:
            # Logout: the client sends an expiry in the past (Unix 123).
            if existing is not None:
                user, login = self._identity(existing)
                await self.tailnet.logout(existing, expiry)
                log.info("%s: node %d (%s) logged out", name, existing.id, existing.given_name)
                return RegisterResponse(user=user, login=login, node_key_expired=True)
            return RegisterResponse(node_key_expired=True)

        if rr.auth_key:
            try:
                key = self.tailnet.check_preauth_key(rr.auth_key)
                requested = () if key.tags else self._requested_tags(hostinfo, key.user_id)
                node = await self.tailnet.register_with_key(
                    key, machine_key=peer.machine_key, node_key=rr.node_key, old_node_key=old_key,
                    hostinfo=hostinfo, ephemeral_request=rr.ephemeral, requested_tags=requested,
                )
            except AuthFailed as e:
                log.info("%s: registration refused: %s", name, e)
                return RegisterResponse(error=str(e))
            log.info("%s: node %d (%s) registered with a pre-auth key", name, node.id, node.given_name)
            return self._authorized(node)

        if existing is not None and not self.tailnet.is_expired(existing, now):
            if hostinfo and hostinfo != existing.hostinfo:
                existing = await self.tailnet.update_node(existing.id, hostinfo=hostinfo)
            return self._authorized(existing)

        if old_key is not None:
            old = self.tailnet.node_by_key(old_key)
            if old is not None and old.machine_key == peer.machine_key and not self.tailnet.is_expired(old, now):
                node = await self.tailnet.rotate_node_key(old, rr.node_key, hostinfo or None)
                log.info("%s: node %d rotated its node key", name, node.id)
                return self._authorized(node)

        return await self._interactive(rr, peer, hostinfo)

    def _requested_tags(self, hostinfo: dict, user_id: int | None) -> tuple[str, ...]:
        """`tailscale up --advertise-tags`: every requested tag must be the user's to give by
        the policy's tagOwners, else the login fails with Tailscale's message."""
        tags = hostinfo.get("RequestTags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise WireError("Hostinfo.RequestTags: expected a list of strings")
        if not tags:
            return ()
        if user_id is None or not all(self.tag_permitted(user_id, t) for t in tags):
            raise AuthFailed(f"requested tags {sorted(tags)} are invalid or not permitted")
        return tuple(sorted(set(tags)))

    async def _interactive(self, rr: RegisterRequest, peer: NoisePeer, hostinfo: dict) -> RegisterResponse:
        now = self.tailnet.clock()
        if rr.followup:
            token = rr.followup.rstrip("/").rsplit("/", 1)[-1]
            pending = self.logins.get(token)
            if pending is None or pending.node_key != rr.node_key:
                return RegisterResponse(error="this login link has expired; run `tailscale up` again")
            with trio.move_on_after(PENDING_LIFETIME.total_seconds()):
                await pending.done.wait()
            if pending.node_id is None or pending.node_id not in self.tailnet.nodes:
                return RegisterResponse(error="login was not completed in time; run `tailscale up` again")
            return self._authorized(self.tailnet.nodes[pending.node_id])
        pending = self.logins.start(peer.machine_key, rr.node_key, hostinfo, now)
        return RegisterResponse(auth_url=f"{self.server_url}/register/{pending.token}")

    async def complete_interactive(self, token: str, user_ref: str) -> NodeRecord:
        """Admin approval of a pending interactive login (``nodes register``)."""
        pending = self.logins.get(token)
        if pending is None:
            raise NotFound("no pending login with that key (it may have expired)")
        user = self.tailnet.find_user(user_ref)
        node = await self.tailnet.register_interactive(
            user, machine_key=pending.machine_key, node_key=pending.node_key, hostinfo=pending.hostinfo,
            tags=self._requested_tags(pending.hostinfo, user.id),
        )
        self.logins.finish(token, node.id)
        return node

    # --- map ----------------------------------------------------------------------------

    async def map(self, req: Request, resp: Response, peer: NoisePeer, name: str) -> None:
        mr = from_json(MapRequest, json.loads(req.body))
        decode_key("nodekey", mr.node_key)
        node = self.tailnet.node_by_key(mr.node_key)
        if node is None or node.machine_key != peer.machine_key:
            await resp.simple(404, b"node not found; register first\n")
            return
        compress = mr.compress == "zstd"
        if not mr.read_only:
            node = await self._apply_map_request(node, mr)
        if not mr.stream:
            if mr.omit_peers:
                # Lite update: the client discards the body.
                await resp.start(200, [("content-type", "application/json")], end=True)
                return
            view = SessionView(node.id)
            await resp.start(200, [("content-type", "application/json")])
            await resp.send(encode_frame(self.mapper.full(view, raw_peers=True), compress), end=True)
            return
        await self._stream(node, resp, compress, name)

    async def _apply_map_request(self, node: NodeRecord, mr: MapRequest) -> NodeRecord:
        changes: dict[str, Any] = {}
        patch: dict[str, Any] | None = {}
        if mr.version and self.mapper.capver.get(node.id) != mr.version:
            self.mapper.capver[node.id] = mr.version
            self.tailnet.version[node.id] = self.tailnet.version.get(node.id, 0) + 1
            patch["Cap"] = mr.version
        if mr.disco_key:
            decode_key("discokey", mr.disco_key)
            if mr.disco_key != node.disco_key:
                changes["disco_key"] = mr.disco_key
                patch["DiscoKey"] = mr.disco_key
        if mr.endpoints is not None:
            eps = _filter_endpoints(mr.endpoints)
            if eps != node.endpoints:
                changes["endpoints"] = eps
                patch["Endpoints"] = list(eps)
        if mr.hostinfo is not None and mr.hostinfo != node.hostinfo:
            changes["hostinfo"] = mr.hostinfo
            old_ni = node.hostinfo.get("NetInfo") or {}
            new_ni = mr.hostinfo.get("NetInfo") or {}
            rest_same = {k: v for k, v in mr.hostinfo.items() if k != "NetInfo"} == {
                k: v for k, v in node.hostinfo.items() if k != "NetInfo"
            }
            if not rest_same:
                patch = FULL
            elif new_ni.get("PreferredDERP") != old_ni.get("PreferredDERP"):
                patch["DERPRegion"] = new_ni.get("PreferredDERP") or 0
        if not changes:
            if patch:
                self.tailnet.bus.node_changed(node.id, patch)
            return node
        return await self.tailnet.update_node(node.id, patch=patch, **changes)

    async def _stream(self, node: NodeRecord, resp: Response, compress: bool, name: str) -> None:
        bus = self.tailnet.bus
        for old in bus.sessions_of(node.id):
            old.closed = True  # a newer stream of the same node replaces the old one
            old.wake()
        handle = bus.open(node.id)
        view = SessionView(node.id)
        self.tailnet.stream_opened(node.id)
        log.info("%s: map stream of node %d (%s) open", name, node.id, node.given_name)
        try:
            handle.pending.take()
            # Encoded at once and not kept: the full map of a big tailnet is ~1000 node dicts,
            # and a local holding it for the stream's life cost ~0.5 MiB per connected node.
            first = encode_frame(self.mapper.full(view, raw_peers=True), compress)
            await resp.start(200, [("content-type", "application/json")])
            await resp.send(first)
            del first
            last_delta = float("-inf")
            while True:
                keepalive = KEEPALIVE_BASE + random.random() * KEEPALIVE_JITTER
                with trio.move_on_after(keepalive) as timer:
                    await handle.wait()
                    await trio.sleep_until(max(trio.current_time() + COALESCE_DELAY, last_delta + MIN_DELTA_INTERVAL))
                if handle.closed or node.id not in self.tailnet.nodes:
                    break
                pending = handle.pending.take()
                msg = None if pending.empty() else self.mapper.delta(view, pending)
                if msg is None:
                    if not timer.cancelled_caught:
                        continue
                    msg = {"KeepAlive": True}
                else:
                    last_delta = trio.current_time()
                await resp.send(encode_frame(msg, compress))
            await resp.send(b"", end=True)
        finally:
            bus.close(handle)
            with trio.CancelScope(shield=True):
                with trio.move_on_after(5):
                    await self.tailnet.stream_closed(node.id)
            log.info("%s: map stream of node %d closed", name, node.id)
