"""Console sign-in: one-time login links and sessions, with their cookie and CSRF token.

Secrets (a link's token, a session's ID) are 256 random bits; only their SHA-256 is stored,
so a copy of the database signs nobody in. A link is used once and lives LINK_LIFETIME; a
session lives SESSION_LIFETIME from sign-in, survives restarts (it is in the database) and ends
at logout. A session's CSRF token is derived from its secret (a keyed hash), so it needs no
storage and only the holder of the cookie can know it.

The signed-in person's role is read from the user at every request, so a role change (or the
user's deletion, which deletes their sessions) counts at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.cookies import CookieError, SimpleCookie
from urllib.parse import urlsplit

from ..admin.router import Actor
from ..storage.records import ConsoleSession
from ..tailnet.model import Tailnet

LINK_LIFETIME = timedelta(minutes=10)
SESSION_LIFETIME = timedelta(hours=12)
COOKIE = "trioscale_console"
COOKIE_PATH = "/admin"
# A session without a user: a CLI link made without --user, by whoever runs the CLI on the
# server (the admin socket already gives them every right).
OPERATOR_ROLE = "owner"
OPERATOR_NAME = "operator"
_SECRET = re.compile(r"^[A-Za-z0-9_-]{20,100}$")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def csrf_token(secret: str) -> str:
    """The CSRF token of the session whose secret is ``secret``."""
    return hmac.new(secret.encode(), b"trioscale console csrf", hashlib.sha256).hexdigest()[:40]


def well_formed(secret: str | None) -> bool:
    return bool(secret) and _SECRET.match(secret) is not None


class LinkRefused(Exception):
    """A login link that is unknown, used or expired; the text is for the page."""


@dataclass(frozen=True)
class SignedIn:
    secret: str
    session: ConsoleSession
    user_id: int | None
    name: str  # the user's name (the Actor's)
    login: str  # how the page names them: their email, else their name
    role: str

    @property
    def csrf(self) -> str:
        return csrf_token(self.secret)

    def actor(self, source: str) -> Actor:
        return Actor("console", "" if self.user_id is None else str(self.user_id), source, self.name, self.role)


def cookie_value(header_value: str | None) -> str | None:
    jar = SimpleCookie()
    try:
        jar.load(header_value or "")
    except CookieError:
        return None
    m = jar.get(COOKIE)
    return m.value if m is not None and well_formed(m.value) else None


def same_origin(origin: str | None, host: str | None, secure: bool) -> bool:
    """Whether a changing request's Origin is this server as the browser reached it (Host).
    A page on another site cannot forge Origin; a request without one is refused."""
    if not origin or not host or origin == "null":
        return False
    o = urlsplit(origin)
    return o.scheme == ("https" if secure else "http") and o.netloc.lower() == host.lower() and not o.path


class Sessions:
    def __init__(self, tailnet: Tailnet, base_url: str) -> None:
        self.tailnet = tailnet
        self.store = tailnet.store
        self.base_url = base_url.rstrip("/")  # server_url: where links point
        self.secure = base_url.startswith("https://")  # cookies get Secure

    # --- links --------------------------------------------------------------------------

    async def create_link(self, user_ref: str | None) -> tuple[str, int | None]:
        """A one-time login token for ``user_ref`` (ID, name or email; None: the operator).
        Raises NotFound for an unknown user. Returns (token, user ID)."""
        user_id = self.tailnet.find_user(user_ref).id if user_ref else None
        token = secrets.token_urlsafe(32)
        now = self.tailnet.clock()
        await self.store.create_console_link(digest(token), user_id, now, now + LINK_LIFETIME)
        return token, user_id

    async def redeem_link(self, token: str, source: str) -> str:
        """A new session's secret for a link used now; raises LinkRefused."""
        if not well_formed(token):
            raise LinkRefused("This is not a login link.")
        found, user_id = await self.store.take_console_link(digest(token), self.tailnet.clock())
        if not found:
            raise LinkRefused("This login link is unknown, was already used or has expired.")
        return await self.start(user_id, "link", source)

    # --- sessions -----------------------------------------------------------------------

    async def start(self, user_id: int | None, method: str, source: str) -> str:
        secret = secrets.token_urlsafe(32)
        now = self.tailnet.clock()
        await self.store.create_console_session(
            ConsoleSession(digest(secret), user_id, method, source[:64], now, now + SESSION_LIFETIME))
        return secret

    async def lookup(self, secret: str | None) -> SignedIn | None:
        if not well_formed(secret):
            return None
        s = await self.store.get_console_session(digest(secret))
        if s is None or s.expires_at <= self.tailnet.clock():
            return None
        if s.user_id is None:
            return SignedIn(secret, s, None, OPERATOR_NAME, OPERATOR_NAME, OPERATOR_ROLE)
        user = self.tailnet.users.get(s.user_id)
        if user is None:
            return None
        role = self.tailnet.roles().get(user.id, "member")
        return SignedIn(secret, s, user.id, user.name, user.email or user.name, role)

    async def end(self, secret: str) -> None:
        if well_formed(secret):
            await self.store.delete_console_session(digest(secret))

    # --- cookies ------------------------------------------------------------------------

    def set_cookie(self, secret: str) -> tuple[str, str]:
        return "set-cookie", self._cookie(secret, int(SESSION_LIFETIME.total_seconds()))

    def clear_cookie(self) -> tuple[str, str]:
        return "set-cookie", self._cookie("", 0)

    def _cookie(self, value: str, max_age: int) -> str:
        attrs = f"{COOKIE}={value}; Path={COOKIE_PATH}; HttpOnly; SameSite=Strict; Max-Age={max_age}"
        return attrs + ("; Secure" if self.secure else "")

