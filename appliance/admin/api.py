"""The admin API (/api/v1): on the admin unix socket for the CLI (its file mode is the guard),
and on the public listener with Bearer API keys, for Headscale's UIs, scripts and the remote CLI.

Adding endpoints: write a module with ``routes(r: Router, b: Backend)`` declaring operations
(see users.py) and add it to MODULES; the OpenAPI document and the docs page follow.
"""

from __future__ import annotations

import json
from typing import Any

import h11
import trio

from .. import meters
from ..http.server import Answer, Streamed, peer_host, peer_user
from ..tailnet.model import Tailnet
from ..audit.journal import ServerJournal, install_journal
from ..events.webhooks import Webhooks
from ..stats.samples import Sampler, sources_of
from . import audit, auth, console, events, keys, nodes, policyops, runtime, server, stats, users, webhooks
from .apikeys import ApiKeys, masked
from .backend import Backend
from .docs import docs_page
from .openapi import openapi_document
from .problem import problem
from .router import Actor, Router

MODULES = [users, nodes, auth, keys, policyops, runtime, server, audit, events, stats, webhooks, console]
PREFIX = "/api/v1/"


def build_router(backend: Backend, modules=MODULES) -> Router:
    r = Router()
    for module in modules:
        module.routes(r, backend)
    return r


class AdminAPI:
    """Args: the live parts the operations act on (see Backend); ``runtime`` and ``config``
    may be None in tests that need neither DNS/DERP changes nor settings. Without the server's
    journal on ``tailnet`` (serve installs it), one is installed here."""

    def __init__(self, tailnet: Tailnet, control: Any = None, policy: Any = None, *, certs: Any = None,
                 zone: Any = None, runtime: Any = None, config: Any = None, webhooks: Any = None,
                 stats: Any = None, console: Any = None) -> None:
        journal = tailnet.journal if isinstance(tailnet.journal, ServerJournal) else install_journal(tailnet)
        self.apikeys = ApiKeys(tailnet.store, tailnet.clock)
        self.apikeys.journal = journal
        stats = stats or Sampler(tailnet.store, tailnet.clock, sources_of(tailnet))
        if webhooks is None:
            webhooks = Webhooks(tailnet.store, tailnet.clock)
            journal.hub.listeners.append(webhooks.on_event)
        self.backend = Backend(tailnet, self.apikeys, control=control, policy=policy, certs=certs, zone=zone,
                               runtime=runtime, config=config, journal=journal, webhooks=webhooks, stats=stats,
                               console=console)
        self.router = build_router(self.backend)
        self.router.on_change.append(
            lambda c: journal.operation_done(c.actor, c.operation, c.target, c.request, c.touched))
        self.openapi = openapi_document(self.router)
        self._openapi_json = json.dumps(self.openapi).encode()
        self._docs_html = docs_page(self.openapi).encode()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Load API keys and stored settings; then record API keys' last use until cancelled."""
        if self.backend.runtime is not None:
            await self.backend.runtime.load()
        await self.backend.webhooks.load()
        await self.apikeys.run(task_status=task_status)

    async def __call__(self, req: h11.Request, body: bytes) -> Answer | None:
        """The admin socket's route: no key needed."""
        return await self._answer(req, body, public=False)

    def public_route(self):
        """The same API on the public listener: every operation needs a Bearer API key."""

        async def route(req: h11.Request, body: bytes) -> Answer | None:
            return await self._answer(req, body, public=True)

        return route

    async def _answer(self, req: h11.Request, body: bytes, *, public: bool) -> Answer | Streamed | None:
        path = req.target.split(b"?", 1)[0]
        if not (path.startswith(PREFIX.encode()) or path == PREFIX[:-1].encode()):
            return None
        got = await self._dispatch(req, body, path, public=public)
        meters.api_requests.inc(str(got.status if isinstance(got, Streamed) else got[0]))
        return got

    async def _dispatch(self, req: h11.Request, body: bytes, path: bytes, *, public: bool) -> Answer | Streamed:
        if path in (b"/api/v1/openapi.json", b"/api/v1/docs", b"/api/v1/docs/"):
            if req.method not in (b"GET", b"HEAD"):
                return problem(405, "use GET", headers=(("allow", "GET"),))
            if path.endswith(b".json"):
                return 200, [("content-type", "application/json")], self._openapi_json
            return 200, [("content-type", "text/html; charset=utf-8"),
                         ("content-security-policy", "default-src 'none'; style-src 'unsafe-inline'")], self._docs_html
        source = peer_host.get()
        if not public:
            uid, user = peer_user.get() or ("", "")
            return await self.router.serve(req, body, Actor("cli", uid, source, user))

        async def authenticate(r: h11.Request) -> Actor:
            auth = next((v.decode("latin-1") for k, v in r.headers if k == b"authorization"), None)
            rec = await self.apikeys.authenticate(auth, source)
            return Actor("apikey", str(rec.id), source, masked(rec.prefix))

        return await self.router.serve(req, body, Actor("anonymous", source=source), authenticate)
