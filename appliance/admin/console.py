"""/api/v1/console/login: a one-time link into the web console (`trioscale admin login`)."""

from __future__ import annotations

from ..console.sessions import LINK_LIFETIME
from ..errors import Invalid
from .backend import Backend
from .router import Call, Router
from .types import ConsoleLoginBody, ConsoleLoginResponse


def routes(r: Router, b: Backend) -> None:
    @r.post("/api/v1/console/login", "createConsoleLogin", "A one-time link that signs in to the web console",
            tag="Console", body=ConsoleLoginBody, body_required=False, response=ConsoleLoginResponse,
            errors=(404,),
            description="trioscale: the link works once, for 10 minutes, and signs in as `user` with "
                        "their role (none: the server's operator, an owner). Only its hash is kept. "
                        "Not for console sessions: made on the server or with an API key. Not a "
                        "reported change (its answer is a secret); the sign-in is logged.")
    async def create_login(call: Call, body: ConsoleLoginBody = ConsoleLoginBody()) -> ConsoleLoginResponse:
        if b.console is None:
            raise Invalid("the web console is not served by this API")
        token, _ = await b.console.create_link(body.user)
        return ConsoleLoginResponse(f"{b.console.base_url}/admin/login/{token}", b.tailnet.clock() + LINK_LIFETIME)
