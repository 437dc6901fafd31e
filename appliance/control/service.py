"""The endpoints a client calls inside Noise: register, map, and the minor ones."""

from __future__ import annotations

import json
import logging
import random
import re
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import trio

from .. import meters
from ..audit.actors import Actor, acting
from ..errors import AuthFailed, Invalid, RateLimited
from ..http.h2server import H2Server, Request, Response
from ..logthrottle import LogThrottle
from ..storage.records import NodeRecord
from ..tailnet.changes import FULL
from ..tailnet.model import TAGGED_DEVICES_LOGIN, TAGGED_DEVICES_USER_ID, Tailnet
from .authrequests import AuthRequest, AuthRequests, TooManyRequests, Verdict, parse_auth_id
from .codec import WireError, decode_body, from_json, parse_addr_port, to_json
from .hostinfo import Hostinfo
from .mapframes import encode_frame
from .mapper import Mapper, SessionView
from .setdns import SetDNS
from .sshcheck import PREFIX as SSH_ACTION_PREFIX
from .sshcheck import SSHChecks
from .wire import (
    AuditLogRequest, HealthChangeRequest, MapRequest, PingResponse, RegisterRequest,
    RegisterResponse, SetDeviceAttributesRequest, WireLogin, WireUser,
)

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
# While streams wait for their first netmap, deltas to the connected ones wait (at most this
# long): in a reconnect storm every arrival would otherwise queue behind a delta for each of the
# sessions already back, and those deltas then carry many arrivals each instead of one.
MAX_DELTA_DEFERRAL = 5.0


class NetmapFailed(Exception):
    """A session's netmap could not be built; its stream ends."""


@dataclass
class NoisePeer:
    machine_key: str  # "mkey:…" text
    version: int
    remote: str


def useful_endpoints(eps: tuple[str, ...]) -> tuple[str, ...]:
    """Endpoints worth giving to peers: link-local and zoned IPv6 ones only work on the
    node's own link."""
    out = []
    for e in eps:
        ip, _ = parse_addr_port(e)  # already checked by the MapRequest's kind
        if ip.version == 6 and (ip.is_link_local or ip.scope_id):
            continue
        out.append(e)
    return tuple(out)


# The HA prober's tokens (secrets.token_urlsafe); anything else is not one of ours.
_PING_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class Route:
    methods: tuple[str, ...]
    handler: Callable[[Request, Response, NoisePeer, str], Awaitable[None]]


class ControlService:
    def __init__(self, tailnet: Tailnet, mapper: Mapper, server_url: str) -> None:
        self.tailnet = tailnet
        self.mapper = mapper
        self.server_url = server_url.rstrip("/")
        self.auth = AuthRequests()
        # Netmaps are built one at a time, one per scheduling round: a thousand sessions waking
        # at once (a reconnect storm) then take turns with the admin socket and new connections
        # instead of making each of those wait behind all thousand builds (issue 10).
        self._build_slot = trio.CapacityLimiter(1)
        self._firsts_waiting = 0  # streams waiting for their first netmap
        self._firsts_served = trio.Event()  # set (and replaced) when that drops to 0
        self.ping_answered: Callable[[str], bool] = lambda token: False  # set by the HA prober
        # Set by the policy layer; with no policy no tag may be requested (tagOwners decide).
        self.tag_permitted: Callable[[int, str], bool] = lambda user_id, tag: False
        self.set_dns = SetDNS(tailnet, mapper)  # its zone is set when certificates are on
        # Bad requests are logged per path at a bounded rate: a flood cannot fill the disk.
        self.throttle = LogThrottle(log)
        # Every path the 1.96 client calls inside Noise. Others (tka/*, id-token,
        # feature/query, webclient/*, c2n) are features this server does not have: 404.
        self.routes: dict[str, Route] = {
            "/machine/register": Route(("POST",), self.register),
            "/machine/map": Route(("POST",), self.map),
            "/machine/ping-response": Route(("HEAD", "GET", "POST"), self.ping_response),
            "/machine/update-health": Route(("POST",), self.update_health),
            "/machine/set-dns": Route(("POST",), self._set_dns),
            "/machine/set-device-attr": Route(("PATCH", "POST"), self.set_device_attr),
            "/machine/audit-log": Route(("POST",), self.audit_log),
        }
        self.ssh = SSHChecks(self)  # its check_period is set by the policy layer
        # Paths with parameters in them: /machine/ssh/action/SRC/to/DST.
        self.prefix_routes: dict[str, Route] = {SSH_ACTION_PREFIX: Route(("GET",), self.ssh.handle)}
        # Set by the front door: the per-source limit on registrations without a valid key
        # (http.limits.RegisterGate); None means no limit.
        self.register_gate = None

    async def handle(self, req: Request, resp: Response, conn: H2Server) -> None:
        """One request inside Noise. A body that does not parse (WireError, naming the field)
        is a 400 and one rate-limited WARNING; nothing of it is stored."""
        peer: NoisePeer = conn.context  # type: ignore[assignment]
        path = req.path.split("?", 1)[0]
        # ``where`` is the route's own name, never text from the peer (it keys the log throttle).
        where, route = next(((p, r) for p, r in self.prefix_routes.items() if path.startswith(p)),
                            (path, self.routes.get(path)))
        if route is None:
            await resp.simple(404, b"not found\n")
            return
        if req.method not in route.methods:
            await resp.simple(405, f"{path} takes {' or '.join(route.methods)}\n".encode())
            return
        try:
            await route.handler(req, resp, peer, conn.name)
        except WireError as e:
            self.throttle.warning(where, "%s: bad %s request: %s", conn.name, where, e)
            if not resp.headers_sent:
                await resp.simple(400, f"bad request: {e}\n".encode())
        except RateLimited as e:
            if not resp.headers_sent:
                await resp.simple(429, f"{e}\n".encode(), headers=[("retry-after", "5")])

    def _own_node(self, node_key: str, peer: NoisePeer) -> NodeRecord | None:
        """The node with this key, if it belongs to the machine on this Noise connection."""
        node = self.tailnet.node_by_key(node_key)
        return node if node is not None and node.machine_key == peer.machine_key else None

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
        return RegisterResponse(user=user, login=login, machine_authorized=n.authorized)

    def _checked_hostinfo(self, hostinfo: Hostinfo | None, name: str) -> Hostinfo | None:
        if hostinfo is not None and hostinfo.notes:
            self.throttle.info("hostinfo-trimmed", "%s: Hostinfo %s", name, "; ".join(hostinfo.notes))
        return hostinfo

    async def register(self, req: Request, resp: Response, peer: NoisePeer, name: str) -> None:
        rr = from_json(RegisterRequest, decode_body(req.body, "RegisterRequest"))
        if not rr.node_key:
            raise WireError("RegisterRequest.NodeKey: missing")
        answer = await self._register(rr, peer, name)
        await resp.simple(200, json.dumps(to_json(answer)).encode(), "application/json")

    async def _register(self, rr: RegisterRequest, peer: NoisePeer, name: str) -> RegisterResponse:
        old_key = rr.old_node_key or None
        hostinfo = self._checked_hostinfo(rr.hostinfo, name)
        now = self.tailnet.clock()
        existing = self.tailnet.node_by_key(rr.node_key)
        if existing is not None and existing.machine_key != peer.machine_key:
            log.warning("%s: node key of node %d presented by another machine", name, existing.id)
            meters.registrations_refused.inc("foreign_node_key")
            return RegisterResponse(error="this node key belongs to another machine")

        if rr.expiry is not None and rr.expiry <= now:
            # Logout: the client sends an expiry in the past (Unix 123).
            if existing is not None:
                user, login = self._identity(existing)
                with acting(self._as_node(existing, peer)):
                    await self.tailnet.logout(existing, rr.expiry)
                log.info("%s: node %d (%s) logged out", name, existing.id, existing.given_name)
                return RegisterResponse(user=user, login=login, node_key_expired=True)
            return RegisterResponse(node_key_expired=True)

        if rr.auth_key:
            self._check_register_rate(peer, name)
            try:
                key = self.tailnet.check_preauth_key(rr.auth_key, node=existing)
                requested = () if key.tags else self._requested_tags(hostinfo, key.user_id)
                with acting(Actor("preauthkey", str(key.id), _host(peer.remote), f"hskey-auth-{key.prefix}-***")):
                    node = await self.tailnet.register_with_key(
                        key, machine_key=peer.machine_key, node_key=rr.node_key, old_node_key=old_key,
                        hostinfo=hostinfo, ephemeral_request=rr.ephemeral, requested_tags=requested,
                    )
            except AuthFailed as e:
                meters.registrations_refused.inc(_refusal_reason(str(e)))
                if self.register_gate is not None:
                    self.register_gate.failed(peer.remote)
                log.info("%s: registration refused: %s", name, e)
                return RegisterResponse(error=str(e))
            log.info("%s: node %d (%s) registered with a pre-auth key", name, node.id, node.given_name)
            return self._authorized(node)

        if existing is not None and not self.tailnet.is_expired(existing, now):
            if hostinfo is not None and hostinfo != existing.hostinfo:
                with acting(self._as_node(existing, peer)):
                    existing = await self.tailnet.update_node(existing.id, hostinfo=hostinfo)
            return self._authorized(existing)

        # A new node key without a pre-auth key is a login (`tailscale up --force-reauth`, an
        # expired key): the person signs in again, as with Headscale; the node keeps its ID and
        # addresses when the same user approves it.
        if not rr.followup:
            self._check_register_rate(peer, name)
            if self.register_gate is not None:
                self.register_gate.failed(peer.remote)  # a new interactive login has no key
        return await self._interactive(rr, peer, hostinfo, name)

    @staticmethod
    def _as_node(n: NodeRecord, peer: NoisePeer) -> Actor:
        """A client acting on its own node (logging out, renaming its host)."""
        return Actor("node", str(n.id), _host(peer.remote), n.given_name)

    def _check_register_rate(self, peer: NoisePeer, name: str) -> None:
        if self.register_gate is not None and self.register_gate.blocked(peer.remote):
            meters.registrations_refused.inc("rate_limited")
            raise RateLimited("too many registrations without a valid key from this address; retry later")

    def _requested_tags(self, hostinfo: Hostinfo | None, user_id: int | None) -> tuple[str, ...]:
        """`tailscale up --advertise-tags`: every requested tag must be the user's to give by
        the policy's tagOwners, else the login fails with Tailscale's message."""
        tags = hostinfo.request_tags if hostinfo is not None else ()
        if not tags:
            return ()
        if user_id is None or not all(self.tag_permitted(user_id, t) for t in tags):
            raise AuthFailed(f"requested tags {sorted(tags)} are invalid or not permitted")
        return tuple(sorted(set(tags)))

    def auth_url(self, req: AuthRequest) -> str:
        """Where the person goes: /register/ID for a machine, /auth/ID for an SSH check."""
        return f"{self.server_url}/{'register' if req.is_registration else 'auth'}/{req.auth_id}"

    async def _interactive(self, rr: RegisterRequest, peer: NoisePeer, hostinfo: Hostinfo | None,
                           name: str) -> RegisterResponse:
        now = self.tailnet.clock()
        if rr.followup:
            return await self._followup(rr, peer)
        try:
            req = self.auth.start_registration(
                machine_key=peer.machine_key, node_key=rr.node_key, hostinfo=hostinfo, remote=peer.remote, now=now,
            )
        except (TooManyRequests, Invalid) as e:
            # A flood of logins without a key must not fill the disk: one line per reason a while.
            self.throttle.warning("interactive-refused", "%s: interactive login refused: %s", name, e)
            meters.registrations_refused.inc("too_many_logins" if isinstance(e, TooManyRequests) else "invalid_login")
            return RegisterResponse(error=str(e))
        self.throttle.info("interactive-started", "%s: interactive login %s waiting (%s)", name, req.auth_id,
                           req.hostinfo.hostname or "?")
        return RegisterResponse(auth_url=self.auth_url(req))

    async def _followup(self, rr: RegisterRequest, peer: NoisePeer) -> RegisterResponse:
        """The client's long poll after it showed the AuthURL: answered when the request is
        decided (approved, rejected) or expires."""
        expired = RegisterResponse(error="this login link has expired; run `tailscale up` again")
        try:
            auth_id = parse_auth_id(urlsplit(rr.followup).path.rstrip("/").rsplit("/", 1)[-1])
        except Invalid:
            return expired
        now = self.tailnet.clock()
        req = self.auth.get(auth_id, now)
        if req is None or not req.is_registration or (req.machine_key, req.node_key) != (peer.machine_key, rr.node_key):
            return expired
        verdict = await req.wait(now)
        if verdict is None:
            return RegisterResponse(error="the login was not completed in time; run `tailscale up` again")
        if not verdict.accepted:
            meters.registrations_refused.inc("login_rejected")
            return RegisterResponse(error=verdict.reason)
        node = self.tailnet.nodes.get(verdict.node_id) if verdict.node_id is not None else None
        if node is None:
            return expired  # approved, then deleted before the client asked
        return self._authorized(node)

    # --- decisions (admin CLI/API, OIDC) -------------------------------------------------

    async def register_pending(self, auth_id: str, user_ref: str | int, *, method: str = "cli",
                               expiry=None) -> NodeRecord:
        """``auth register``: the machine waiting under ``auth_id`` joins as ``user_ref``'s."""
        req = self.auth.pending(auth_id, self.tailnet.clock())
        if not req.is_registration:
            raise Invalid("this auth request is an SSH check, not a machine: use `trioscale auth approve`")
        user = self.tailnet.find_user(user_ref)
        return await self._register_request(req, user, method, expiry)

    async def _register_request(self, req: AuthRequest, user, method: str, expiry) -> NodeRecord:
        req.deciding = True
        try:
            node = await self.tailnet.register_interactive(
                user, machine_key=req.machine_key, node_key=req.node_key, hostinfo=req.hostinfo,
                tags=self._requested_tags(req.hostinfo, user.id), method=method, expiry=expiry,
            )
        finally:
            req.deciding = False
        self.auth.decide(req, Verdict(True, node.id))
        log.info("auth request %s: node %d (%s) registered for %s (%s)", req.auth_id, node.id,
                 node.given_name, user.name, method)
        return node

    async def approve(self, auth_id: str) -> AuthRequest:
        """``auth approve``: an SSH check passes; a machine that had a node before logs in
        again as the same user (a new machine needs ``auth register --user``)."""
        req = self.auth.pending(auth_id, self.tailnet.clock())
        if req.is_registration:
            owner = self.tailnet.previous_owner(req.machine_key)
            if owner is None:
                raise Invalid("this is a new machine: choose its user with "
                              f"`trioscale auth register --auth-id {req.auth_id} --user USER`")
            await self._register_request(req, owner, "cli", None)
        else:
            self.auth.decide(req, Verdict(True))
            log.info("auth request %s: SSH check approved", req.auth_id)
        return req

    async def reject(self, auth_id: str, reason: str = "an administrator rejected this login") -> AuthRequest:
        req = self.auth.pending(auth_id, self.tailnet.clock())
        self.auth.decide(req, Verdict(False, reason=reason))
        log.info("auth request %s rejected", req.auth_id)
        return req

    # --- SSH check (tailcfg.SSHAction.HoldAndDelegate) ----------------------------------

    # --- map ----------------------------------------------------------------------------

    async def map(self, req: Request, resp: Response, peer: NoisePeer, name: str) -> None:
        mr = from_json(MapRequest, decode_body(req.body, "MapRequest"))
        if not mr.node_key:
            raise WireError("MapRequest.NodeKey: missing")
        self._checked_hostinfo(mr.hostinfo, name)
        node = self._own_node(mr.node_key, peer)
        if node is None:
            await resp.simple(404, b"node not found; register first\n")
            return
        compress = mr.compress == "zstd"
        if not mr.read_only:
            node = self._apply_map_request(node, mr)
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

    def _apply_map_request(self, node: NodeRecord, mr: MapRequest) -> NodeRecord:
        """What the client reports in a map request is soft state: peers learn it at once, the
        store in the model's next batch (a map request never waits for a disk write)."""
        changes: dict[str, Any] = {}
        patch: dict[str, Any] | None = {}
        if mr.version and self.tailnet.capver.get(node.id) != mr.version:
            patch["Cap"] = mr.version
        if mr.disco_key and mr.disco_key != node.disco_key:
            changes["disco_key"] = mr.disco_key
            patch["DiscoKey"] = mr.disco_key
        if mr.endpoints is not None:
            eps = useful_endpoints(mr.endpoints)
            if eps != node.endpoints:
                changes["endpoints"] = eps
                patch["Endpoints"] = list(eps)
        if mr.hostinfo is not None and mr.hostinfo != node.hostinfo:
            changes["hostinfo"] = mr.hostinfo
            if mr.hostinfo.without_net_info() != node.hostinfo.without_net_info():
                patch = FULL
            elif mr.hostinfo.preferred_derp != node.hostinfo.preferred_derp:
                patch["DERPRegion"] = mr.hostinfo.preferred_derp
        if not (changes or patch):
            return node
        return self.tailnet.client_reported(node.id, patch=patch, capver=mr.version or None, **changes) or node

    def _next_frame(self, view: SessionView, pending, compress: bool) -> bytes | None:
        """The delta for one session, encoded (the message itself is not kept), or None."""
        msg = self._next_message(view, pending)
        return None if msg is None else encode_frame(msg, compress)

    def _next_message(self, view: SessionView, pending) -> dict | None:
        """The delta for one session. When it cannot be built (a bug, or data of one node that
        breaks it), that session alone gets a whole netmap instead; when that fails too, only
        its stream ends (NetmapFailed), never the server or another session (issue 10)."""
        try:
            return self.mapper.delta(view, pending)
        except Exception as e:
            self.throttle.log(logging.ERROR, "map-delta-failed", "node %d: building a delta failed (%s: %s); "
                         "sending it a whole netmap", view.node_id, type(e).__name__, e)
        try:
            return self.mapper.full(view, raw_peers=True)
        except Exception as e:
            self.throttle.log(logging.ERROR, "map-full-failed", "node %d: its netmap cannot be built (%s: %s); "
                         "its map stream ends", view.node_id, type(e).__name__, e)
            raise NetmapFailed from e

    # --- the minor endpoints ------------------------------------------------------------

    async def ping_response(self, req: Request, resp: Response, peer: NoisePeer, name: str) -> None:
        """The answer to a PingRequest: a HEAD (or a POST of a PingResponse) to its URL."""
        tokens = parse_qs(urlsplit(req.path).query).get("token", [])
        if len(tokens) != 1 or not _PING_TOKEN.fullmatch(tokens[0]):
            raise WireError("ping-response: the token parameter is missing or not a token")
        if req.method == "POST" and req.body:
            from_json(PingResponse, decode_body(req.body, "PingResponse"))
        await resp.start(200 if self.ping_answered(tokens[0]) else 404, end=True)

    async def update_health(self, req: Request, resp: Response, peer: NoisePeer, name: str) -> None:
        # Clients stopped sending these in October 2025; older ones expect a 200.
        from_json(HealthChangeRequest, decode_body(req.body, "HealthChangeRequest"))
        await resp.simple(200, b"{}", "application/json")

    async def _set_dns(self, req: Request, resp: Response, peer: NoisePeer, name: str) -> None:
        await self.set_dns.handle(req, resp, peer.machine_key, name)

    async def set_device_attr(self, req: Request, resp: Response, peer: NoisePeer, name: str) -> None:
        r = from_json(SetDeviceAttributesRequest, decode_body(req.body, "SetDeviceAttributesRequest"))
        if self._own_node(r.node_key, peer) is None:
            await resp.simple(404, b"node not found; register first\n")
            return
        await resp.simple(200, b"{}", "application/json")  # posture attributes are not kept

    async def audit_log(self, req: Request, resp: Response, peer: NoisePeer, name: str) -> None:
        r = from_json(AuditLogRequest, decode_body(req.body, "AuditLogRequest"))
        node = self._own_node(r.node_key, peer)
        if node is None:
            await resp.simple(404, b"node not found; register first\n")
            return
        # The client treats anything but 200 as a failure and retries.
        self.throttle.info("audit-log", "%s: node %d (%s) audit: %s %r", name, node.id, node.given_name,
                           r.action, r.details[:200])
        await resp.simple(200, b"{}", "application/json")

    async def _stream(self, node: NodeRecord, resp: Response, compress: bool, name: str) -> None:
        bus = self.tailnet.bus
        async with self._build_slot:
            bus.replace_sessions(node.id)  # a newer stream of the same node replaces the old one
            handle = bus.open(node.id)
            view = SessionView(node.id)
            self.tailnet.stream_opened(node.id)
        log.info("%s: map stream of node %d (%s) open", name, node.id, node.given_name)
        try:
            handle.pending.take()
            # Encoded at once and not kept: the full map of a big tailnet is ~1000 node dicts,
            # and a local holding it for the stream's life cost ~0.5 MiB per connected node.
            self._firsts_waiting += 1
            try:
                async with self._build_slot:
                    first = encode_frame(self.mapper.full(view, raw_peers=True), compress)
            finally:
                self._firsts_waiting -= 1
                if not self._firsts_waiting:
                    self._firsts_served.set()
                    self._firsts_served = trio.Event()
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
                frame = None
                if self._firsts_waiting and not handle.pending.empty():
                    with trio.move_on_after(MAX_DELTA_DEFERRAL):
                        await self._firsts_served.wait()
                since = handle.take_dirty_since()  # the changes about to be sent (or none)
                if not handle.pending.empty():
                    async with self._build_slot:
                        try:
                            frame = self._next_frame(view, handle.pending.take(), compress)
                        except NetmapFailed:
                            break  # this stream ends cleanly; its client reconnects
                is_delta = frame is not None
                if frame is None:
                    if not timer.cancelled_caught:
                        continue
                    frame = encode_frame({"KeepAlive": True}, compress)
                else:
                    last_delta = trio.current_time()
                await resp.send(frame)
                if is_delta:
                    meters.deltas_sent.inc()
                    if since is not None:
                        meters.delta_latency.observe(time.monotonic() - since)
                # Not kept while the stream waits: a thousand sessions each holding its last
                # message is a million objects for the garbage collector after a storm.
                del frame
            await resp.send(b"", end=True)
        finally:
            bus.close(handle)
            self.tailnet.stream_closed(node.id)
            log.info("%s: map stream of node %d closed", name, node.id)


_REASONS = (("not known", "unknown_key"), ("expired", "expired_key"), ("already been used", "used_key"),
            ("tags", "tags_not_permitted"))


def _refusal_reason(message: str) -> str:
    """A refused registration's reason as a metric label (a few fixed values)."""
    return next((label for text, label in _REASONS if text in message), "other")


def _host(remote: str) -> str:
    """The address of ``ip:port`` (as peer_name writes it)."""
    return remote.rsplit(":", 1)[0] if ":" in remote else remote
