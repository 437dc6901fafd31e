"""This process's role: active (it serves the tailnet and alone writes the store) or standby
(another process on the same PostgreSQL database is active).

With SQLite a server is always active. With PostgreSQL every server starts as a standby and
the one that takes the database's lease (storage/postgres.py) becomes active; the others keep
answering what needs no tailnet: ``GET /key`` (the Noise key is the same on every server),
``GET /health`` (503 with ``"role": "standby"``, so a load balancer or a DNS failover sends
clients to the active one), the DERP relay (meshed with the other servers', see
``derp.server.mesh_with``) and STUN. Control traffic (``/ts2021``), the API and the login pages
are refused with 503 and Retry-After. ``trioscale status`` reads the same document as
``/health`` over the admin socket.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

import h11

from .http.server import Answer
from .storage import Store

log = logging.getLogger(__name__)

ACTIVE, STANDBY = "active", "standby"
RETRY_AFTER = "5"  # seconds a refused client is asked to wait (it reconnects sooner anyway)

PlainRoute = Callable[[h11.Request, bytes], Awaitable[Answer | None]]


def server_name(listen_addr: str) -> str:
    """How this process names itself to the others (``trioscale status``): host, address, pid."""
    return f"{socket.gethostname()} {listen_addr} pid {os.getpid()}"


@dataclass
class Role:
    """The role, the routes that exist only while active, and the health document."""

    store: Store
    name: str
    role: str = STANDBY
    since: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    epoch: int = 0
    # The active term's routes (login pages, the public API; the admin API for the socket).
    public_routes: list[PlainRoute] = field(default_factory=list)
    admin_routes: list[PlainRoute] = field(default_factory=list)
    term: Any = None  # the active term's parts (serve.ActiveTerm) while active
    takeovers: int = 0  # how many times this process became active

    @property
    def active(self) -> bool:
        return self.role == ACTIVE

    def become_active(self, epoch: int, term: Any, public: list[PlainRoute], admin: list[PlainRoute]) -> None:
        self.role, self.since, self.epoch, self.term = ACTIVE, datetime.now(timezone.utc), epoch, term
        self.public_routes, self.admin_routes = public, admin
        self.takeovers += 1

    def become_standby(self) -> None:
        self.role, self.since, self.term = STANDBY, datetime.now(timezone.utc), None
        self.public_routes, self.admin_routes = [], []

    async def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, document) of ``GET /health``: 200 when active, 503 on a standby."""
        doc: dict[str, Any] = {
            "status": "pass" if self.active else STANDBY, "role": self.role, "server": self.name,
            "since": _time(self.since), "database": self.store.kind,
        }
        if self.store.elects:
            doc["epoch"] = self.epoch
            if not self.active:
                try:
                    cluster = await self.store.cluster_status()
                    doc["active"] = cluster.active  # "" while nobody holds the lease
                    doc["activeSince"] = _time(cluster.since)
                    doc["epoch"] = cluster.epoch
                except Exception as e:  # noqa: BLE001 - health answers, whatever the database does
                    doc["databaseError"] = " ".join(str(e).split())[:200]
        return (200 if self.active else 503), doc

    async def health_answer(self) -> Answer:
        status, doc = await self.health()
        headers = [("content-type", "application/json")]
        if status != 200:
            headers.append(("retry-after", RETRY_AFTER))
        return status, headers, json.dumps(doc).encode()

    async def refusal(self) -> Answer:
        """What a standby answers to what only the active server does."""
        active = ""
        if self.store.elects:
            try:
                active = (await self.store.cluster_status()).active
            except Exception:  # noqa: BLE001 - the refusal stands without the name
                pass
        detail = "this trioscale server is a standby: " + (
            f"the active one is {active}" if active else "no server is active yet (one takes over within seconds)")
        body = {"title": "standby", "status": 503, "detail": detail, "message": detail}
        return (503, [("content-type", "application/problem+json"), ("retry-after", RETRY_AFTER)],
                json.dumps(body).encode())

    def routes(self, which: str) -> PlainRoute:
        """A plain route that hands a request to the active term's ``which`` routes, or, on a
        standby, refuses what they would have answered (``/api/``, ``/register/``...)."""

        async def route(req: h11.Request, body: bytes) -> Answer | None:
            path = req.target.decode("latin-1").split("?", 1)[0]
            if which == "admin" and path == "/health":
                return await self.health_answer()
            for r in (self.admin_routes if which == "admin" else self.public_routes):
                got = await r(req, body)
                if got is not None:
                    return got
            if not self.active and (which == "admin" or path.startswith(("/api/", "/register/", "/oidc/"))):
                return await self.refusal()
            return None

        return route


def _time(t: datetime | None) -> str | None:
    return None if t is None else t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
