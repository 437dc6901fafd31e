"""Auth requests waiting for a decision: interactive registrations (a client without a key) and
SSH checks. Each has an auth ID (Headscale 0.28's ``hskey-authreq-`` + 24 hex); an admin, the
OIDC login or its expiry decides it, and whoever waits on it is woken at that moment.

Nothing here is authenticated yet, so everything is bounded: requests per source address and in
total, their lifetime, and the Hostinfo kept with a registration (a few fields the approval page
and the node need, each cut to a size; the client sends its whole Hostinfo again in its first
map request once registered). A source at its limit replaces its own oldest request, and a full
table refuses new ones rather than pushing out other people's logins (issue 10).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterator

import trio

from ..errors import Conflict, Invalid, NotFound, TrioscaleError
from ..http.limits import source_of_peer
from .hostinfo import Hostinfo

AUTH_ID_PREFIX = "hskey-authreq-"
AUTH_ID_RANDOM_LEN = 24  # hex characters, as Headscale's (96 bits, for a 15-minute life)
LIFETIME = timedelta(minutes=15)  # Headscale's register_cache_expiration default
MAX_TOTAL = 10_000  # every pending request in memory (10,000 cost under 50 MB; bench/)
MAX_PER_SOURCE = 32  # per IPv4 address or IPv6 /64

# Hostinfo fields kept while a registration waits: what the approval page shows and what the
# node record needs (tags asked for with --advertise-tags). Everything else is dropped.
KEPT_TEXT = ("hostname", "os", "os_version", "device_model", "ipn_version", "go_arch", "distro",
             "distro_version")
MAX_HOSTINFO_TEXT = 64  # characters per kept text field (a host name is one DNS label)
# Fewer than a map request may carry (hostinfo.MAX_REQUEST_TAGS): 10,000 waiting logins stay small.
MAX_REQUEST_TAGS = 16
MAX_TAG_TEXT = 100


class TooManyRequests(TrioscaleError):
    """The table of pending requests is full; the client should try again later."""

    http_status = 503


def new_auth_id() -> str:
    return AUTH_ID_PREFIX + secrets.token_hex(AUTH_ID_RANDOM_LEN // 2)


def parse_auth_id(text: str) -> str:
    """An auth ID as an admin or a client gives it (the bare 24 hex digits are accepted too).
    Raises Invalid for anything that cannot be one."""
    if not text.startswith(AUTH_ID_PREFIX):
        text = AUTH_ID_PREFIX + text
    rand = text[len(AUTH_ID_PREFIX):]
    if len(rand) != AUTH_ID_RANDOM_LEN or any(c not in "0123456789abcdef" for c in rand):
        raise Invalid("an auth ID looks like hskey-authreq-<24 hex digits>")
    return text


def trim_hostinfo(hostinfo: Hostinfo | None) -> Hostinfo:
    """The few Hostinfo fields a waiting registration keeps, each cut to its size (the client's
    Hostinfo was checked at the boundary already). Raises Invalid for more requested tags than
    a login may ask for: cutting them would grant other tags than asked."""
    if hostinfo is None:
        return Hostinfo()
    tags = hostinfo.request_tags
    if len(tags) > MAX_REQUEST_TAGS or any(len(t) > MAX_TAG_TEXT for t in tags):
        raise Invalid(f"Hostinfo.RequestTags: at most {MAX_REQUEST_TAGS} tags of at most "
                      f"{MAX_TAG_TEXT} characters")
    kept = {k: getattr(hostinfo, k)[:MAX_HOSTINFO_TEXT] for k in KEPT_TEXT}
    return Hostinfo(request_tags=tags, **kept)


@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: bool
    node_id: int | None = None  # the registered node, for a registration
    reason: str = ""  # for the client when refused


@dataclass(eq=False, slots=True)
class AuthRequest:
    auth_id: str
    kind: str  # "register" | "ssh-check"
    source: str
    created: datetime
    expires: datetime
    machine_key: str = ""
    node_key: str = ""
    hostinfo: Hostinfo = field(default_factory=Hostinfo)
    src_node_id: int | None = None  # SSH check: who connects
    dst_node_id: int | None = None  # SSH check: the node that asks us
    local_user: str = ""
    verdict: Verdict | None = None
    deciding: bool = False  # a registration for it is being written (see AuthRequests.pending)
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def is_registration(self) -> bool:
        return self.kind == "register"

    async def wait(self, now: datetime) -> Verdict | None:
        """The verdict, waiting for it until the request expires (None then)."""
        if self.verdict is None:
            with trio.move_on_after(max(0.0, (self.expires - now).total_seconds())):
                await self.done.wait()
        return self.verdict


class AuthRequests:
    """The table of pending requests. Decided requests stay until they expire, so that a
    client whose follow-up comes after the decision (a reconnect) still gets the verdict."""

    def __init__(self, *, max_total: int = MAX_TOTAL, max_per_source: int = MAX_PER_SOURCE,
                 lifetime: timedelta = LIFETIME) -> None:
        self.max_total = max_total
        self.max_per_source = max_per_source
        self.lifetime = lifetime
        self._by_id: dict[str, AuthRequest] = {}  # insertion order = age
        self._per_source: dict[str, int] = {}
        self._by_machine: dict[str, AuthRequest] = {}  # undecided registrations

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[AuthRequest]:
        return iter(list(self._by_id.values()))

    def _add(self, req: AuthRequest, now: datetime) -> AuthRequest:
        self.expire(now)
        if self._per_source.get(req.source, 0) >= self.max_per_source:
            oldest = next(r for r in self._by_id.values() if r.source == req.source)
            self._remove(oldest)
        if len(self._by_id) >= self.max_total:
            raise TooManyRequests("too many logins are waiting; try again in a few minutes")
        self._by_id[req.auth_id] = req
        if req.is_registration:
            self._by_machine[req.machine_key] = req
        self._per_source[req.source] = self._per_source.get(req.source, 0) + 1
        return req

    def _remove(self, req: AuthRequest) -> None:
        if self._by_id.pop(req.auth_id, None) is None:
            return
        if self._by_machine.get(req.machine_key) is req:
            del self._by_machine[req.machine_key]
        left = self._per_source.get(req.source, 1) - 1
        if left:
            self._per_source[req.source] = left
        else:
            self._per_source.pop(req.source, None)
        if req.verdict is None:
            req.done.set()  # whoever waits learns it is gone (verdict None: expired)

    def start_registration(self, *, machine_key: str, node_key: str, hostinfo: Hostinfo | None, remote: str,
                           now: datetime) -> AuthRequest:
        """A registration for this machine and node key: the one already waiting (the client
        asked again) or a new one, which replaces any other of the same machine."""
        r = self._by_machine.get(machine_key)
        if r is not None:
            if r.node_key == node_key and r.expires > now:
                r.hostinfo = trim_hostinfo(hostinfo)
                return r
            self._remove(r)
        req = AuthRequest(
            auth_id=new_auth_id(), kind="register", source=source_of_peer(remote), created=now,
            expires=now + self.lifetime, machine_key=machine_key, node_key=node_key,
            hostinfo=trim_hostinfo(hostinfo),
        )
        return self._add(req, now)

    def start_ssh_check(self, *, src_node_id: int, dst_node_id: int, local_user: str, remote: str,
                        now: datetime) -> AuthRequest:
        req = AuthRequest(
            auth_id=new_auth_id(), kind="ssh-check", source=source_of_peer(remote), created=now,
            expires=now + self.lifetime, src_node_id=src_node_id, dst_node_id=dst_node_id,
            local_user=local_user[:MAX_HOSTINFO_TEXT],
        )
        return self._add(req, now)

    def get(self, auth_id: str, now: datetime) -> AuthRequest | None:
        r = self._by_id.get(auth_id)
        if r is not None and r.expires <= now:
            self._remove(r)
            return None
        return r

    def pending(self, auth_id: str, now: datetime) -> AuthRequest:
        """An undecided request; NotFound or Conflict (already decided) otherwise."""
        r = self.get(parse_auth_id(auth_id), now)
        if r is None:
            raise NotFound("no pending auth request with that ID (it may have expired)")
        if r.verdict is not None:
            raise Conflict("this auth request was already " + ("approved" if r.verdict.accepted else "rejected"))
        if r.deciding:
            # A registration is being written for it: a reject now would leave the node made
            # and the client told no.
            raise Conflict("this auth request is being approved right now")
        return r

    def decide(self, req: AuthRequest, verdict: Verdict) -> None:
        """Record the verdict and wake the waiting client at once."""
        if req.verdict is None:
            req.verdict = verdict
            req.done.set()
            if self._by_machine.get(req.machine_key) is req:
                del self._by_machine[req.machine_key]

    def expire(self, now: datetime) -> None:
        while self._by_id:
            oldest = next(iter(self._by_id.values()))
            if oldest.expires > now:
                break  # insertion order is age order, and every request lives as long
            self._remove(oldest)

    def waiting(self, now: datetime) -> list[AuthRequest]:
        """The undecided requests, oldest first (``auth list``)."""
        self.expire(now)
        return [r for r in self._by_id.values() if r.verdict is None]
