"""Talking to the identity provider: discovery, the signing keys, the code exchange, the ID
token's verification and UserInfo (OpenID Connect), or GitHub's OAuth 2.0 and APIs.

Signatures and claims are checked by joserfc (a maintained JOSE library), never by hand. The
provider's keys are cached and fetched again when a token names a key we do not have (the
provider rotated them), at most once per KEY_REFETCH_INTERVAL so that tokens with made-up key
IDs cannot make us hammer the provider.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

import trio
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from ..outbound import FetchError, Fetched, fetch_async
from ..tailnet.names import provider_groups
from .settings import OIDCSettings

log = logging.getLogger(__name__)

CLOCK_SKEW = 60  # seconds of leeway on exp/iat/nbf, as go-oidc allows
KEY_REFETCH_INTERVAL = 2.0  # seconds between two fetches of the keys for unknown key IDs
KEY_MAX_AGE = 3600.0  # the keys are fetched again after this long anyway
# Asymmetric algorithms only: "none" and HS* (the client secret as key) are never accepted.
SIGNING_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
RETRY_MIN, RETRY_MAX = 2.0, 300.0  # discovery retry backoff while the provider is down
MAX_SUBJECT = 255  # OpenID Connect Core 2: sub is at most 255 ASCII characters
MAX_CLAIM_TEXT = 1024  # an email, name or username claim; the user record's rules cut further
_PICTURE = re.compile(r"https?://[\x21-\x7e]{1,2040}")  # the admin API's picture URL rule


class ProviderError(Exception):
    """The provider is unreachable or answered something we cannot use. The text is for the
    log and names no secret."""


class TokenRejected(ProviderError):
    """The ID token failed verification (signature, issuer, audience, expiry, nonce)."""


@dataclass(frozen=True, slots=True)
class Metadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str = ""
    userinfo_endpoint: str = ""
    algorithms: tuple[str, ...] = ("RS256",)
    token_auth_methods: tuple[str, ...] = ("client_secret_basic",)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who signed in, from the ID token and UserInfo (or GitHub's APIs)."""

    issuer: str
    subject: str
    email: str = ""
    email_verified: bool = False
    name: str = ""
    username: str = ""
    picture: str = ""
    groups: tuple[str, ...] = ()
    organizations: tuple[str, ...] = ()  # GitHub
    expiry: datetime | None = None  # the ID token's

    @property
    def provider_id(self) -> str:
        # Headscale's provider identifier: issuer + "/" + subject, so an imported Headscale
        # database keeps matching its users.
        return self.issuer.rstrip("/") + "/" + self.subject.lstrip("/")


def parse_metadata(body: bytes, issuer: str) -> Metadata:
    """A discovery document; its issuer must be exactly the configured one (OIDC Discovery
    4.3: otherwise a document could speak for another issuer)."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise ProviderError("the discovery document is not JSON") from None
    if not isinstance(doc, dict):
        raise ProviderError("the discovery document is not a JSON object")
    if doc.get("issuer") != issuer:
        raise ProviderError(f"the discovery document is for issuer {str(doc.get('issuer'))[:100]!r}, "
                            f"not {issuer!r} (oidc.issuer must match it exactly)")

    def url(name: str, required: bool = True) -> str:
        v = doc.get(name)
        if isinstance(v, str) and v.startswith(("https://", "http://")):
            return v
        if required:
            raise ProviderError(f"the discovery document has no {name}")
        return ""

    def strings(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        v = doc.get(name)
        return tuple(x for x in v if isinstance(x, str)) if isinstance(v, list) else default

    algs = tuple(a for a in strings("id_token_signing_alg_values_supported", ("RS256",)) if a in SIGNING_ALGORITHMS)
    if not algs:
        raise ProviderError("the provider signs ID tokens with no algorithm we accept (RS256, ES256, EdDSA, ...)")
    return Metadata(
        issuer=issuer, authorization_endpoint=url("authorization_endpoint"), token_endpoint=url("token_endpoint"),
        jwks_uri=url("jwks_uri"), userinfo_endpoint=url("userinfo_endpoint", False), algorithms=algs,
        token_auth_methods=strings("token_endpoint_auth_methods_supported", ("client_secret_basic",)),
    )


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def pkce_challenge(verifier: str, method: str) -> str:
    if method == "plain":
        return verifier
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _json(got: Fetched, what: str) -> Any:
    try:
        return json.loads(got.body)
    except (ValueError, RecursionError):
        raise ProviderError(f"{what}: HTTP {got.status}, not JSON") from None


def _str_list(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        return (v,)
    if isinstance(v, list):
        return tuple(x for x in v if isinstance(x, str))
    return ()


def _text(v: Any) -> str:
    """A claim meant as a short text (email, name, username); anything else or longer is none
    (the user record's own rules apply after this)."""
    return v if isinstance(v, str) and len(v) <= MAX_CLAIM_TEXT else ""


def _picture(v: Any) -> str:
    """A picture claim worth keeping: an http(s) URL of printable ASCII within the API's limit."""
    return v if isinstance(v, str) and _PICTURE.fullmatch(v) else ""


def _bool(v: Any) -> bool:
    # Some providers (AWS Cognito, older ADFS) send "true" as a string; Headscale accepts it.
    return v is True or (isinstance(v, str) and v.lower() == "true")


class OIDCProvider:
    """An OpenID Connect provider, found by discovery."""

    def __init__(self, settings: OIDCSettings, redirect_uri: str) -> None:
        self.settings = settings
        self.redirect_uri = redirect_uri
        self.metadata: Metadata | None = None
        self.last_error = ""
        self._keys: KeySet | None = None
        self._keys_at = float("-inf")
        self._keys_lock = trio.Lock()

    @property
    def ready(self) -> bool:
        return self.metadata is not None

    async def discover(self) -> Metadata:
        url = discovery_url(self.settings.issuer)
        try:
            got = await fetch_async(url, headers={"Accept": "application/json"})
        except FetchError as e:
            raise ProviderError(f"cannot reach the provider: {e}") from None
        if got.status != 200:
            raise ProviderError(f"{url}: HTTP {got.status}")
        self.metadata = parse_metadata(got.body, self.settings.issuer)
        return self.metadata

    async def keep_discovering(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Retry discovery with backoff until it works (the provider was down at start)."""
        task_status.started()
        delay = RETRY_MIN
        while self.metadata is None:
            await trio.sleep(delay)
            try:
                await self.discover()
            except ProviderError as e:
                self.last_error = str(e)
                log.warning("OIDC provider %s still unavailable (next try in %.0f s): %s",
                            self.settings.issuer, min(delay * 2, RETRY_MAX), e)
                delay = min(delay * 2, RETRY_MAX)
            else:
                log.info("OIDC provider %s is available again: sign-in works", self.settings.issuer)

    def authorization_url(self, state: str, nonce: str, verifier: str | None) -> str:
        assert self.metadata is not None
        s = self.settings
        params = {
            "response_type": "code", "client_id": s.client_id, "redirect_uri": self.redirect_uri,
            "scope": " ".join(s.scope), "state": state, "nonce": nonce,
        }
        if verifier is not None:
            params["code_challenge"] = pkce_challenge(verifier, s.pkce_method)
            params["code_challenge_method"] = s.pkce_method
        params.update(s.extra_params)
        sep = "&" if "?" in self.metadata.authorization_endpoint else "?"
        return self.metadata.authorization_endpoint + sep + urlencode(params)

    async def _exchange(self, token_endpoint: str, code: str, verifier: str | None,
                        auth_methods: tuple[str, ...]) -> dict:
        s = self.settings
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri}
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        if verifier is not None:
            form["code_verifier"] = verifier
        if not s.client_secret:
            form["client_id"] = s.client_id  # a public client (PKCE)
        elif "client_secret_basic" in auth_methods or "client_secret_post" not in auth_methods:
            from urllib.parse import quote

            pair = f"{quote(s.client_id, safe='')}:{quote(s.client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form.update({"client_id": s.client_id, "client_secret": s.client_secret})
        try:
            got = await fetch_async(token_endpoint, method="POST", data=urlencode(form).encode(), headers=headers)
        except FetchError as e:
            raise ProviderError(f"token request failed: {e}") from None
        doc = _json(got, "token endpoint")
        if got.status != 200 or not isinstance(doc, dict) or doc.get("error"):
            err = doc.get("error", "") if isinstance(doc, dict) else ""
            desc = doc.get("error_description", "") if isinstance(doc, dict) else ""
            raise ProviderError(f"the provider refused the code: HTTP {got.status} {str(err)[:80]} {str(desc)[:200]}".rstrip())
        return doc

    async def _keyset(self, refresh: bool) -> KeySet:
        assert self.metadata is not None
        async with self._keys_lock:
            now = time.monotonic()
            stale = now - self._keys_at > KEY_MAX_AGE
            if self._keys is None or stale or (refresh and now - self._keys_at > KEY_REFETCH_INTERVAL):
                try:
                    got = await fetch_async(self.metadata.jwks_uri, headers={"Accept": "application/json"})
                except FetchError as e:
                    if self._keys is None:
                        raise ProviderError(f"cannot fetch the provider's keys: {e}") from None
                    log.warning("OIDC: cannot refresh the provider's keys, keeping the cached ones: %s", e)
                    return self._keys
                try:
                    self._keys = KeySet.import_key_set(_json(got, "jwks_uri"))
                except (JoseError, ValueError, TypeError, KeyError) as e:
                    raise ProviderError(f"the provider's keys (jwks_uri) are unusable: {e}") from None
                self._keys_at = now
            return self._keys

    async def verify_id_token(self, id_token: str, nonce: str, now: datetime) -> dict:
        """The ID token's claims, after checking its signature against the provider's keys and
        its issuer, audience, expiry (with CLOCK_SKEW) and nonce. Raises TokenRejected."""
        assert self.metadata is not None
        algorithms = list(self.metadata.algorithms)
        keys = await self._keyset(refresh=False)
        try:
            try:
                token = jwt.decode(id_token, keys, algorithms=algorithms)
            except InvalidKeyIdError:
                # A key we do not know: the provider may have rotated; fetch its keys again.
                keys = await self._keyset(refresh=True)
                token = jwt.decode(id_token, keys, algorithms=algorithms)
        except InvalidKeyIdError:
            raise TokenRejected("the ID token is signed by a key the provider does not publish") from None
        except (JoseError, ValueError, TypeError) as e:
            raise TokenRejected(f"the ID token's signature does not verify ({type(e).__name__})") from None
        claims = token.claims
        registry = jwt.JWTClaimsRegistry(
            now=int(now.timestamp()), leeway=CLOCK_SKEW,
            iss={"essential": True, "value": self.settings.issuer},
            aud={"essential": True, "value": self.settings.client_id},
            exp={"essential": True}, sub={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise TokenRejected("the ID token has expired") from None
        except JoseError as e:
            raise TokenRejected(f"the ID token's claims are wrong: {e.description or e.error}") from None
        iat = claims.get("iat")
        if isinstance(iat, (int, float)) and iat > now.timestamp() + CLOCK_SKEW:
            raise TokenRejected("the ID token was issued in the future")
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") not in (None, self.settings.client_id):
            raise TokenRejected("the ID token was issued to another client (azp)")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not 0 < len(sub) <= MAX_SUBJECT:
            raise TokenRejected(f"the ID token's sub is not a string of 1 to {MAX_SUBJECT} characters")
        return claims

    async def userinfo(self, access_token: str) -> dict | None:
        """The UserInfo claims, or None (the provider has none, or it failed: the ID token's
        claims are used alone, as Headscale does)."""
        assert self.metadata is not None
        if not self.metadata.userinfo_endpoint or not access_token:
            return None
        try:
            got = await fetch_async(self.metadata.userinfo_endpoint,
                                    headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"})
            doc = _json(got, "userinfo") if got.status == 200 else None
        except (FetchError, ProviderError) as e:
            log.warning("OIDC: UserInfo failed, using the ID token's claims only: %s", e)
            return None
        return doc if isinstance(doc, dict) else None

    async def login(self, code: str, verifier: str | None, nonce: str, now: datetime) -> Identity:
        """The authorization code → a verified Identity. Raises ProviderError/TokenRejected."""
        if self.metadata is None:
            raise ProviderError("the provider has not been reached yet")
        tokens = await self._exchange(self.metadata.token_endpoint, code, verifier, self.metadata.token_auth_methods)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise ProviderError("the token answer has no id_token")
        claims = await self.verify_id_token(id_token, nonce, now)
        info = await self.userinfo(tokens.get("access_token") if isinstance(tokens.get("access_token"), str) else "")
        if info is not None and info.get("sub") == claims.get("sub"):
            # UserInfo wins where it has a value (it is often fuller than the ID token).
            claims = {**claims, **{k: v for k, v in info.items() if v not in (None, "", [])}}
        groups_claim = self.settings.groups_claim
        exp = claims.get("exp")
        return Identity(
            issuer=self.settings.issuer, subject=claims["sub"],
            email=_text(claims.get("email")),
            email_verified=_bool(claims.get("email_verified")),
            name=_text(claims.get("name")),
            username=_text(claims.get("preferred_username")),
            picture=_picture(claims.get("picture")),
            groups=provider_groups(_str_list(claims.get(groups_claim))),
            expiry=datetime.fromtimestamp(exp, timezone.utc) if isinstance(exp, (int, float)) else None,
        )


class GitHubProvider(OIDCProvider):
    """GitHub speaks OAuth 2.0 without OpenID Connect: the person is read from its APIs (user,
    emails, organisations; teams become groups as ``org/team``)."""

    async def discover(self) -> Metadata:
        base = self.settings.issuer.rstrip("/")
        # Reaching the API is GitHub's discovery: it says whether the configured URLs work.
        try:
            got = await fetch_async(self.settings.github_api + "/", headers={"Accept": "application/json"})
        except FetchError as e:
            raise ProviderError(f"cannot reach GitHub's API: {e}") from None
        if got.status >= 500:
            raise ProviderError(f"GitHub's API answers HTTP {got.status}")
        self.metadata = Metadata(issuer=base, authorization_endpoint=base + "/login/oauth/authorize",
                                 token_endpoint=base + "/login/oauth/access_token",
                                 token_auth_methods=("client_secret_post",))
        return self.metadata

    def authorization_url(self, state: str, nonce: str, verifier: str | None) -> str:
        assert self.metadata is not None
        s = self.settings
        scope = [x for x in s.scope if x not in ("openid", "profile", "email")] or []
        scope = sorted(set(scope) | {"read:user", "user:email", "read:org"})
        params = {"client_id": s.client_id, "redirect_uri": self.redirect_uri, "scope": " ".join(scope),
                  "state": state}
        if verifier is not None:
            params["code_challenge"] = pkce_challenge(verifier, "S256")
            params["code_challenge_method"] = "S256"
        params.update(s.extra_params)
        return self.metadata.authorization_endpoint + "?" + urlencode(params)

    async def _api(self, token: str, path: str) -> Any:
        try:
            got = await fetch_async(self.settings.github_api + path, headers={
                "Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json"})
        except FetchError as e:
            raise ProviderError(f"GitHub API {path}: {e}") from None
        if got.status != 200:
            raise ProviderError(f"GitHub API {path}: HTTP {got.status}")
        return _json(got, f"GitHub API {path}")

    async def login(self, code: str, verifier: str | None, nonce: str, now: datetime) -> Identity:
        if self.metadata is None:
            raise ProviderError("GitHub has not been reached yet")
        tokens = await self._exchange(self.metadata.token_endpoint, code, verifier, ("client_secret_post",))
        token = tokens.get("access_token")
        if not isinstance(token, str) or not token:
            raise ProviderError("GitHub's token answer has no access_token")
        user = await self._api(token, "/user")
        if not isinstance(user, dict) or not isinstance(user.get("id"), int) or not isinstance(user.get("login"), str):
            raise ProviderError("GitHub's /user answer has no id and login")
        emails = await self._api(token, "/user/emails")
        primary = next((e for e in emails if isinstance(e, dict) and e.get("primary")), None) if isinstance(emails, list) else None
        orgs = await self._api(token, "/user/orgs")
        org_names = tuple(o["login"].lower() for o in orgs if isinstance(o, dict) and isinstance(o.get("login"), str)) \
            if isinstance(orgs, list) else ()
        teams = await self._api(token, "/user/teams")
        groups = tuple(
            f"{t['organization']['login'].lower()}/{t['slug']}" for t in teams
            if isinstance(t, dict) and isinstance(t.get("slug"), str)
            and isinstance(t.get("organization"), dict) and isinstance(t["organization"].get("login"), str)
        ) if isinstance(teams, list) else ()
        return Identity(
            issuer=self.settings.issuer, subject=str(user["id"]),
            email=_text(primary.get("email")) if primary else "",
            email_verified=bool(primary and primary.get("verified") is True),
            name=_text(user.get("name")),
            username=_text(user["login"]),
            picture=_picture(user.get("avatar_url")),
            groups=provider_groups(groups), organizations=org_names,
        )


def make_provider(settings: OIDCSettings, redirect_uri: str) -> OIDCProvider:
    cls = GitHubProvider if settings.provider == "github" else OIDCProvider
    return cls(settings, redirect_uri)
