"""The web console's HTTP side: /admin pages, sign-in and sign-out, its static files, and
/admin/api/v1/..., the admin API's operations for the signed-in person.

Every page and API call needs a session (the cookie is HttpOnly, SameSite=Strict, path /admin).
Every change (any method but GET and HEAD) also needs the session's CSRF token (X-CSRF-Token
header, or a ``csrf`` form field for sign-out) and an Origin header naming this server; the
router then checks the person's role against the operation (admin/permissions.py). The pages
call the reading operations in-process (Router.read_now) and the browser calls them by fetch(), so
the console can do nothing the API cannot.
"""

from __future__ import annotations

import logging
from importlib import resources
from urllib.parse import parse_qs, urlsplit

import h11

from ..admin.problem import problem
from ..admin.router import Router
from ..http.pages import message, page
from ..http.server import Answer, header, peer_host
from ..logthrottle import LogThrottle
from . import pages
from .sessions import LinkRefused, Sessions, SignedIn, cookie_value, same_origin

log = logging.getLogger(__name__)

PREFIX = "/admin"
API_PREFIX = "/admin/api/v1/"
STATIC = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}
# Everything the page loads comes from here; no inline script, nothing from elsewhere.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
MAX_FORM = 4096


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


class Console:
    """Args: the admin API's router (its operations), the sessions, and the OIDC sign-in
    (None without oidc.issuer: then only one-time links sign in)."""

    def __init__(self, router: Router, sessions: Sessions, sign_in=None) -> None:
        self.router = router
        self.sessions = sessions
        self.sign_in = sign_in
        self.assets = {name: _static(name) for name in STATIC}
        self.throttle = LogThrottle(log)
        if sign_in is not None:
            sign_in.console_signed_in = self.oidc_signed_in

    async def route(self, req: h11.Request, body: bytes) -> Answer | None:
        target = urlsplit(req.target.decode("latin-1"))
        path = target.path
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            return None
        method = req.method.decode("latin-1")
        if path == PREFIX:
            return _redirect(PREFIX + "/")
        if path.startswith(PREFIX + "/static/"):
            return self._asset(path.rsplit("/", 1)[-1], method)
        if path == PREFIX + "/login" and method in ("GET", "HEAD"):
            return self._login_page()
        if path.startswith(PREFIX + "/login/"):
            return await self._link(req, method, path.rsplit("/", 1)[-1])
        if path == PREFIX + "/oidc" and method in ("GET", "HEAD"):
            if self.sign_in is None:
                return message(404, "Not found", "Sign-in through an identity provider is not configured "
                               "(oidc: in config.yaml).", "Run `trioscale admin login` on the server for a one-time link.")
            if not self.sign_in.provider.ready:
                return message(503, "Sign-in unavailable", "Sign-in through the identity provider is not "
                               "available now.", "Run `trioscale admin login` on the server for a one-time link.")
            return await self.sign_in.begin_console()
        signed = await self.sessions.lookup(cookie_value(header(req, b"cookie")))
        if path == PREFIX + "/logout":
            return await self._logout(req, method, body, signed)
        if path.startswith(API_PREFIX):
            return await self._api(req, method, body, signed, target)
        if signed is None:
            return _redirect(PREFIX + "/login")
        name = path[len(PREFIX) + 1:].rstrip("/")
        if name not in pages.PAGES:
            return page(404, "Not found", "<p>No such page. <a href='/admin/'>Back to the console</a></p>")
        if method not in ("GET", "HEAD"):
            return problem(405, "use GET", headers=(("allow", "GET"),))
        html = await pages.render(name, self.router, signed, peer_host.get(), target.query)
        return 200, _html_headers(), html.encode()

    # --- sign-in and sign-out -----------------------------------------------------------

    def _login_page(self) -> Answer:
        oidc = self.sign_in is not None
        return 200, _html_headers(), pages.login(oidc).encode()

    async def _link(self, req: h11.Request, method: str, token: str) -> Answer:
        """A one-time link: GET shows a button (so a link preview that fetches it does not use
        it up), POST from this page signs in."""
        if method in ("GET", "HEAD"):
            return 200, _html_headers(), pages.confirm_link().encode()
        if method != "POST":
            return problem(405, "use GET or POST", headers=(("allow", "GET, POST"),))
        if not self._same_origin(req):
            return message(403, "Sign-in refused", "This sign-in did not come from this server's page.",
                           "Open the link again and press the button.")
        source = peer_host.get()
        try:
            secret = await self.sessions.redeem_link(token, source)
        except LinkRefused as e:
            self.throttle.warning("console-link", "console: login link refused from %s: %s", source, e)
            return message(403, "Sign-in refused", str(e), "Run `trioscale admin login` on the server for a new one.")
        log.info("console: signed in with a one-time link from %s", source)
        return 303, [("location", PREFIX + "/"), ("cache-control", "no-store"), self.sessions.set_cookie(secret)], b""

    async def oidc_signed_in(self, user) -> Answer:
        """Called by the OIDC sign-in once the provider vouched for ``user``."""
        secret = await self.sessions.start(user.id, "oidc", peer_host.get())
        log.info("console: user %d (%s) signed in through the identity provider", user.id, user.name)
        # The provider's redirect is a cross-site navigation, which does not carry a
        # SameSite=Strict cookie even to the next hop: the page continues from our own origin.
        return 200, [*_html_headers(), self.sessions.set_cookie(secret)], pages.continue_page().encode()

    async def _logout(self, req: h11.Request, method: str, body: bytes, signed: SignedIn | None) -> Answer:
        if method != "POST":
            return problem(405, "use POST", headers=(("allow", "POST"),))
        if signed is not None:
            form = {k: v[-1] for k, v in parse_qs(body[:MAX_FORM].decode("utf-8", "replace")).items()}
            if not self._same_origin(req) or form.get("csrf") != signed.csrf:
                return message(403, "Sign-out refused", "This request did not come from the console's page.")
            await self.sessions.end(signed.secret)
        return 303, [("location", PREFIX + "/login"), ("cache-control", "no-store"), self.sessions.clear_cookie()], b""

    # --- the API for the signed-in person -----------------------------------------------

    async def _api(self, req: h11.Request, method: str, body: bytes, signed: SignedIn | None, target) -> Answer:
        path = target.path[len(PREFIX):]
        if signed is None:
            return problem(401, "sign in to the console first", instance=path[:200])
        if method not in ("GET", "HEAD"):
            if not self._same_origin(req):
                return problem(403, "cross-origin request refused (the Origin header must name this server)",
                               instance=path[:200])
            if header(req, b"x-csrf-token") != signed.csrf:
                return problem(403, "missing or wrong CSRF token (X-CSRF-Token)", instance=path[:200])
        raw = req.target.decode("latin-1")[len(PREFIX):]
        # The operation sees the request's headers (Last-Event-ID for the event stream) but not
        # the session's cookie.
        headers = [(k, v) for k, v in req.headers if k not in (b"cookie", b"authorization")]
        inner = h11.Request(method=req.method, target=raw.encode("latin-1"), headers=headers or [("host", "console")])
        return await self.router.serve(inner, body, signed.actor(peer_host.get()))

    def _same_origin(self, req: h11.Request) -> bool:
        return same_origin(header(req, b"origin"), header(req, b"host"), self.sessions.secure)

    def _asset(self, name: str, method: str) -> Answer:
        if name not in self.assets or method not in ("GET", "HEAD"):
            return 404, [("content-type", "text/plain")], b"not found\n"
        return 200, [("content-type", STATIC[name]), ("cache-control", "no-cache"),
                     ("x-content-type-options", "nosniff")], self.assets[name]


def _html_headers() -> list[tuple[str, str]]:
    return [("content-type", "text/html; charset=utf-8"), ("cache-control", "no-store"),
            ("x-frame-options", "DENY"), ("content-security-policy", CSP), ("referrer-policy", "same-origin"),
            ("x-content-type-options", "nosniff")]


def _redirect(to: str) -> Answer:
    return 303, [("location", to), ("cache-control", "no-store")], b""
