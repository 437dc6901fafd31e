"""The pages an AuthURL opens without OIDC: /register/ID shows the waiting machine and the
command that approves it (Headscale 0.28's page), /auth/ID the SSH check waiting for approval.
With OIDC configured, ``sign_in`` takes the person to their identity provider instead."""

from __future__ import annotations

from typing import Awaitable, Callable

import h11

from ..http.pages import esc, message, page
from ..http.server import Answer
from .authrequests import AuthRequest, parse_auth_id
from .service import ControlService
from ..errors import Invalid

SignIn = Callable[[h11.Request, AuthRequest], Awaitable[Answer]]


def fingerprint(key: str) -> str:
    """A key's type and first 16 hex digits: enough for a person to compare by eye."""
    kind, _, hexpart = key.partition(":")
    return f"{kind}:{hexpart[:16]}" if hexpart else key


def _registration(req: AuthRequest) -> Answer:
    hi = req.hostinfo
    os_text = " ".join(x for x in (hi.os, hi.os_version) if x) or "unknown"
    rows = [
        ("Machine", hi.hostname or "(no name)"),
        ("Operating system", os_text),
        ("Node key", fingerprint(req.node_key)),
        ("Machine key", fingerprint(req.machine_key)),
        ("Expires", req.expires.strftime("%Y-%m-%d %H:%M:%S UTC")),
    ]
    info = "".join(f"<dt>{esc(k)}</dt><dd><code>{esc(v)}</code></dd>" for k, v in rows)
    body = (
        "<p>A machine asks to join this tailnet. Check that the name and node key are those "
        "of your machine (<code>tailscale status --json</code> shows its key), then an "
        f"administrator approves it on the server:</p><dl>{info}</dl>"
        f"<pre>trioscale auth register --auth-id {esc(req.auth_id)} --user USERNAME</pre>"
        f"<p>or refuses it:</p><pre>trioscale auth reject --auth-id {esc(req.auth_id)}</pre>"
    )
    return page(200, "Machine registration", body)


def _ssh_check(req: AuthRequest) -> Answer:
    body = (
        f"<p>An SSH connection from node {esc(req.src_node_id)} to node {esc(req.dst_node_id)} as "
        f"<code>{esc(req.local_user or '?')}</code> waits for a check. An administrator allows it "
        f"with:</p><pre>trioscale auth approve --auth-id {esc(req.auth_id)}</pre>"
        f"<p>or refuses it:</p><pre>trioscale auth reject --auth-id {esc(req.auth_id)}</pre>"
    )
    return page(200, "SSH check", body)


def login_page_route(control: ControlService, sign_in: Callable[[], SignIn | None] = lambda: None):
    async def route(req: h11.Request, body: bytes) -> Answer | None:
        path = req.target.decode("latin-1").split("?", 1)[0]
        kind, _, raw_id = path.lstrip("/").partition("/")
        if kind not in ("register", "auth") or not raw_id:
            return None
        gone = message(404, "Link expired", "This login link is unknown or has expired.",
                       "Run `tailscale up` (or connect again) for a new one.")
        try:
            auth_id = parse_auth_id(raw_id)
        except Invalid:
            return gone
        pending = control.auth.get(auth_id, control.tailnet.clock())
        if pending is None or pending.is_registration != (kind == "register"):
            return gone
        if pending.verdict is not None:
            done = "approved" if pending.verdict.accepted else "refused"
            return message(200, "Already decided", f"This request was {done}.", "You can close this page.")
        handler = sign_in()
        if handler is not None:
            return await handler(req, pending)
        return _registration(pending) if pending.is_registration else _ssh_check(pending)

    return route
