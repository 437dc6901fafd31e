"""The browser side of sign-in: /register/ID and /auth/ID send the person to their identity
provider, /oidc/callback takes them back, /oidc/confirm adds the machine once they say so.

State, nonce and PKCE verifier live here, in a bounded table keyed by the state, and are used
once: a replayed callback (or its code) finds nothing. The state is also bound to the browser
by a cookie, so a callback carried to another browser (login CSRF) is refused. A registration
ends at a confirmation page rather than at once: with silent single sign-on, a link sent by
someone else would otherwise add their machine to your account without a click (Headscale
added the same interstitial).
"""

from __future__ import annotations

import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Awaitable, Callable
from datetime import datetime, timedelta
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs, urlsplit

import h11
import trio

from ..audit.actors import Actor, acting
from ..http.server import peer_host
from ..control.authrequests import AuthRequest, Verdict
from ..control.service import ControlService
from ..http.pages import esc, message, page
from ..http.server import Answer, header
from ..logthrottle import LogThrottle
from ..storage.records import UserRecord
from .provider import OIDCProvider, ProviderError, TokenRejected
from .rules import Refusal, check_allowed
from .settings import CALLBACK_PATH, OIDCSettings

log = logging.getLogger(__name__)

CONFIRM_PATH = "/oidc/confirm"
STATE_LIFETIME = timedelta(minutes=15)
MAX_STATES = 1024  # as Headscale: unauthenticated GETs of /register/ID mint these
STATE_COOKIE = "trioscale_oidc_state"
CONFIRM_COOKIE = "trioscale_oidc_confirm"
PROVIDER_TIMEOUT = 30.0  # the whole code exchange, keys and UserInfo
# A callback's query and a confirmation's form come from anyone's browser: a few short fields.
MAX_FIELDS = 16
MAX_FIELD = 8192  # an authorization code or state; providers' codes are far shorter


@dataclass(frozen=True, slots=True)
class LoginState:
    auth_id: str  # empty for a sign-in to the web console
    nonce: str
    verifier: str | None
    created: datetime


@dataclass(frozen=True, slots=True)
class Confirmation:
    auth_id: str
    user_id: int
    node_expiry: datetime | None
    created: datetime


class _Bounded(OrderedDict):
    """Oldest out first past ``limit``; entries older than STATE_LIFETIME are never returned."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: str, value) -> None:
        self[key] = value
        while len(self) > self.limit:
            self.popitem(last=False)

    def take(self, key: str, now: datetime):
        value = self.pop(key, None)
        if value is None or now - value.created > STATE_LIFETIME:
            return None
        return value


def _fields(text: str) -> dict[str, str] | None:
    """A query string or urlencoded form, the last of repeated fields winning; None when it
    has too many fields or one too long."""
    try:
        fields = parse_qs(text, max_num_fields=MAX_FIELDS)
    except ValueError:
        return None
    out = {k: v[-1] for k, v in fields.items()}
    return None if any(len(v) > MAX_FIELD for v in out.values()) else out


def _cookies(req: h11.Request) -> dict[str, str]:
    jar = SimpleCookie()
    try:
        jar.load(header(req, b"cookie") or "")
    except CookieError:
        return {}
    return {k: m.value for k, m in jar.items()}


class SignIn:
    def __init__(self, settings: OIDCSettings, provider: OIDCProvider, control: ControlService, server_url: str) -> None:
        self.settings = settings
        self.provider = provider
        self.control = control
        self.tailnet = control.tailnet
        self.secure = server_url.startswith("https://")
        self._states = _Bounded(MAX_STATES)
        self._confirmations = _Bounded(MAX_STATES)
        self.throttle = LogThrottle(log)
        # The web console's hook: (user) -> the answer that starts their session.
        self.console_signed_in: Callable[[UserRecord], Awaitable[Answer]] | None = None

    def _cookie(self, name: str, value: str, path: str, max_age: int) -> tuple[str, str]:
        attrs = f"{name}={value}; Path={path}; HttpOnly; SameSite=Lax; Max-Age={max_age}"
        return "set-cookie", attrs + ("; Secure" if self.secure else "")

    def handler(self):
        """The login page's hook: the person goes to the provider, unless it is unreachable
        (then the page with the admin's command is shown, so nobody is locked out)."""
        return self.begin if self.provider.ready else None

    async def begin(self, req: h11.Request | None, auth: AuthRequest | None) -> Answer:
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48) if self.settings.pkce_enabled else None
        self._states.put(state, LoginState(auth.auth_id if auth else "", nonce, verifier, self.tailnet.clock()))
        url = self.provider.authorization_url(state, nonce, verifier)
        return 302, [("location", url), ("cache-control", "no-store"),
                     self._cookie(STATE_COOKIE, state, "/oidc/", int(STATE_LIFETIME.total_seconds()))], b""

    async def begin_console(self) -> Answer:
        """Sign in to the web console: the same flow as a machine's login, without one."""
        return await self.begin(None, None)

    async def route(self, req: h11.Request, body: bytes) -> Answer | None:
        target = urlsplit(req.target.decode("latin-1"))
        if target.path == CALLBACK_PATH and req.method == b"GET":
            fields = _fields(target.query)
        elif target.path == CONFIRM_PATH and req.method == b"POST":
            fields = _fields(body.decode("utf-8", "replace"))
        else:
            return None
        if fields is None:
            return self._refuse(400, "Bad request", "This request is not one a sign-in sends.",
                                "Run `tailscale up` again for a new sign-in link.", "malformed %s", target.path)
        if target.path == CALLBACK_PATH:
            return await self.callback(req, fields)
        return await self.confirm(req, fields)

    def _refuse(self, status: int, title: str, text: str, hint: str, reason: str, *args) -> Answer:
        # Anyone can send these: one line per kind of refusal a while, never a flood.
        self.throttle.warning(reason, "OIDC sign-in refused: " + reason, *args)
        return message(status, title, text, hint)

    async def callback(self, req: h11.Request, q: dict[str, str]) -> Answer:
        now = self.tailnet.clock()
        again = "Run `tailscale up` again (or connect again) to get a new sign-in link."
        if "error" in q:
            self._states.take(q.get("state", ""), now)
            return self._refuse(400, "Sign-in failed", "Your identity provider did not sign you in: "
                                f"{q.get('error_description') or q['error']}.", again,
                                "the provider answered %s", q["error"][:80])
        st = self._states.take(q.get("state", ""), now)
        if st is None or not q.get("code"):
            return self._refuse(400, "Sign-in link expired", "This sign-in has expired or was already used.",
                                again, "unknown, expired or replayed state")
        if _cookies(req).get(STATE_COOKIE) != q["state"]:
            return self._refuse(400, "Sign-in link expired",
                                "This sign-in was started in another browser, or your browser refused our cookie.",
                                again, "the state cookie is missing or different (auth request %s)", st.auth_id)
        console = not st.auth_id
        if console:
            if self.console_signed_in is None:
                return message(404, "Not found", "The web console is not served here.")
            again = "Open /admin/login again to sign in to the console."
        else:
            auth = self.control.auth.get(st.auth_id, now)
            if auth is None or auth.verdict is not None:
                return message(410, "Sign-in link expired", "The machine's login request has expired or was "
                                                            "already decided.", again)
        try:
            with trio.fail_after(PROVIDER_TIMEOUT):
                who = await self.provider.login(q["code"], st.verifier, st.nonce, now)
        except TokenRejected as e:
            return self._refuse(502, "Sign-in failed", "Your identity provider's answer could not be verified, "
                                "so you were not signed in.", "Try again; if it keeps failing, tell your "
                                "administrator.", "%s (auth request %s)", e, st.auth_id)
        except (ProviderError, trio.TooSlowError) as e:
            return self._refuse(502, "Sign-in failed", "Your identity provider could not complete the sign-in.",
                                "Try again in a minute; if it keeps failing, tell your administrator.",
                                "provider error: %s (auth request %s)", e or "timed out", st.auth_id)
        try:
            check_allowed(self.settings, who)
        except Refusal as r:
            return self._refuse(403, "Sign-in refused", r.text, "Ask your administrator if you should have access.",
                                "%s for %s (%s)", r.kind, who.email or who.username, who.provider_id)
        trusted_email = who.email if who.email_verified or not self.settings.email_verified_required else ""
        with acting(Actor("oidc", who.provider_id, peer_host.get(), who.email or who.username)):
            user = await self.tailnet.sign_in_user(
                provider="oidc", provider_id=who.provider_id,
                name_hint=who.username or (trusted_email.partition("@")[0] if trusted_email else "") or "user",
                display_name=who.name, email=trusted_email, picture=who.picture, groups=who.groups,
            )
        if console:
            assert self.console_signed_in is not None
            return await self.console_signed_in(user)
        log.info("OIDC: %s signed in as user %d (%s) for auth request %s", who.provider_id, user.id, user.name,
                 auth.auth_id)
        if auth.is_registration:
            expiry = who.expiry if self.settings.use_expiry_from_token else None
            token = secrets.token_urlsafe(32)
            self._confirmations.put(token, Confirmation(auth.auth_id, user.id, expiry, now))
            return self._confirm_page(auth, user, token)
        return self._ssh_check(auth, user)

    def _confirm_page(self, auth: AuthRequest, user, token: str) -> Answer:
        hi = auth.hostinfo
        name = hi.hostname or "this machine"
        os_text = " ".join(x for x in (hi.os, hi.os_version) if x) or "unknown OS"
        body = (
            f"<p>You are signed in as <b>{esc(user.email or user.name)}</b>.</p>"
            f"<p>Add the machine <b>{esc(name)}</b> ({esc(os_text)}) to the tailnet as yours? Only do this "
            "if you just ran <code>tailscale up</code> on it yourself.</p>"
            f"<form method=post action={CONFIRM_PATH}><input type=hidden name=token value='{esc(token)}'>"
            "<button name=action value=add id=add>Add this machine</button>"
            "<button name=action value=cancel id=cancel>Cancel</button></form>"
        )
        return page(200, "Add this machine?", body,
                    [self._cookie(CONFIRM_COOKIE, token, CONFIRM_PATH, int(STATE_LIFETIME.total_seconds()))])

    async def confirm(self, req: h11.Request, form: dict[str, str]) -> Answer:
        now = self.tailnet.clock()
        token = form.get("token", "")
        c = self._confirmations.take(token, now)
        if c is None or _cookies(req).get(CONFIRM_COOKIE) != token:
            return self._refuse(400, "Confirmation expired", "This confirmation has expired or was already used.",
                                "Run `tailscale up` again for a new sign-in link.", "unknown or replayed confirmation")
        auth = self.control.auth.get(c.auth_id, now)
        user = self.tailnet.users.get(c.user_id)
        if auth is None or auth.verdict is not None or user is None:
            return message(410, "Sign-in link expired", "The machine's login request has expired or was already "
                                                        "decided.", "Run `tailscale up` again.")
        if form.get("action") != "add":
            self.control.auth.decide(auth, Verdict(False, reason="the login was cancelled in the browser"))
            return message(200, "Cancelled", "The machine was not added.", "You can close this page.")
        with acting(Actor("oidc", str(user.id), peer_host.get(), user.name)):
            node = await self.control.register_pending(auth.auth_id, user.id, method="oidc", expiry=c.node_expiry)
        if not node.authorized:
            return message(200, "Machine added", f"{node.given_name} is registered as {user.email or user.name}'s "
                                                 "and waits for an administrator's approval.", "You can close this page.")
        return message(200, "Machine added", f"{node.given_name} is now on the tailnet as "
                                             f"{user.email or user.name}'s.", "You can close this page.")

    def _ssh_check(self, auth: AuthRequest, user) -> Answer:
        """Only the person who owns the connecting node may pass its SSH check (otherwise any
        tailnet member could approve a stolen node's connection)."""
        src = self.tailnet.nodes.get(auth.src_node_id or 0)
        if src is None or src.tags or src.user_id != user.id:
            return self._refuse(403, "SSH check refused", "You are not the owner of the device this SSH "
                                "connection comes from.", "Sign in with the account that owns that device.",
                                "user %d is not the owner of SSH source node %s", user.id, auth.src_node_id)
        self.control.auth.decide(auth, Verdict(True))
        log.info("OIDC: SSH check %s passed by user %d", auth.auth_id, user.id)
        return message(200, "SSH connection allowed", "Your SSH connection goes through now.",
                       "You can close this page.")
