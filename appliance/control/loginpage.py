"""The page an interactive login's AuthURL opens: it tells an admin how to approve it."""

from __future__ import annotations

import html

import h11

from ..http.server import Answer
from .service import ControlService


def login_page_route(control: ControlService):
    async def route(req: h11.Request, body: bytes) -> Answer | None:
        path = req.target.decode("latin-1").split("?", 1)[0]
        if not path.startswith("/register/"):
            return None
        token = path[len("/register/"):]
        pending = control.logins.get(token)
        if pending is None:
            return 404, [("content-type", "text/html; charset=utf-8")], (
                b"<!doctype html><title>trioscale</title><p>This login link is unknown or has "
                b"expired. Run <code>tailscale up</code> again.</p>\n"
            )
        host = html.escape(pending.hostinfo.hostname or "this machine")
        cmd = html.escape(f"trioscale nodes register --user USERNAME --key {token}")
        page = (
            "<!doctype html><meta charset=utf-8><title>trioscale: approve a machine</title>"
            f"<h1>Machine registration</h1><p>To add <b>{host}</b> to the tailnet, an admin "
            f"runs on the server:</p><pre>{cmd}</pre>\n"
        )
        return 200, [("content-type", "text/html; charset=utf-8")], page.encode()

    return route
