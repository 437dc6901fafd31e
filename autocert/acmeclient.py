"""A synchronous ACME session over the `acme` library, with errors translated to ours.

Every method blocks on the network: the manager runs them in worker threads, one at a time,
and does all waiting between polls in Trio. Nothing here sleeps.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import josepy as jose
import requests
from acme import client as acme_client
from acme import errors as acme_errors
from acme import messages
from cryptography.hazmat.primitives import hashes, serialization

from .errors import AcmeError, AcmeProblem, AcmeUnreachable, ChallengeFailed, RateLimited

log = logging.getLogger(__name__)

CHALLENGE_TLS_ALPN = "tls-alpn-01"
CHALLENGE_HTTP = "http-01"
# One HTTP request to the ACME server; the whole order has its own deadline in the manager.
NETWORK_TIMEOUT = 30
USER_AGENT = "trioscale-autocert"

T = TypeVar("T")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Turn a Retry-After header (delta-seconds or HTTP-date, RFC 9110 10.2.3) into an
    absolute time; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return now + int(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return when.timestamp()


def problem_hint(code: str, detail: str, hostname: str, challenge: str) -> str:
    """What the operator should do about an ACME problem, in one sentence."""
    port = 443 if challenge == CHALLENGE_TLS_ALPN else 80
    lowered = detail.lower()
    if code == "rateLimited":
        return RateLimited.hint
    if code == "dns" or "resolv" in lowered or "nxdomain" in lowered or "no valid ip" in lowered:
        return (f"make {hostname} resolve in public DNS (A/AAAA record) to this server's "
                f"address, then wait for the retry")
    # Let's Encrypt sends type "connection"; pebble says "unauthorized: Failed to connect".
    if code == "connection" or any(w in lowered for w in (
            "failed to connect", "connection refused", "timeout", "no route to host",
            "connection reset")):
        return (f"the ACME server could not reach {hostname} on port {port}: open TCP {port} in "
                f"the firewall/NAT and check that {hostname} resolves to this server")
    if code in ("unauthorized", "incorrectResponse", "tls"):
        return (f"something other than this process answered for {hostname} on port {port}: "
                f"point {hostname}'s A and AAAA records here and remove any proxy in front")
    if code == "caa":
        return f"a CAA record on {hostname} forbids this CA: add the CA to it or remove it"
    if code in ("rejectedIdentifier", "unsupportedIdentifier"):
        return f"the CA will not issue for {hostname}: use a public, fully qualified name"
    if code in ("accountDoesNotExist", "unauthorized", "externalAccountRequired"):
        return "the ACME account was refused: check acme_url and acme_email"
    if code == "badNonce":
        return "transient protocol error; autocert retries"
    return "the ACME server refused the request; read its detail above, fix it and autocert retries"


def problem_to_error(problem: messages.Error, *, hostname: str, challenge: str,
                     status: int | None, retry_after: float | None,
                     during_validation: bool = False) -> AcmeProblem:
    """Build our exception from an ACME problem document."""
    problem_type = str(problem.typ or "about:blank")
    code = problem_type.rsplit(":", 1)[-1]
    detail = str(problem.detail or problem.title or "")
    for sub in problem.subproblems or ():
        if sub.detail:
            detail += f"; {sub.detail}"
    hint = problem_hint(code, detail, hostname, challenge)
    cls: type[AcmeProblem]
    if code == "rateLimited":
        cls = RateLimited
    elif during_validation:
        cls = ChallengeFailed
    else:
        cls = AcmeProblem
    what = f"{challenge} validation of {hostname} failed" if during_validation else "ACME server refused"
    return cls(f"{what}: {code}: {detail}".rstrip(": "), problem_type=problem_type,
               detail=detail, status=status, retry_after=retry_after, hint=hint)


class _Network(acme_client.ClientNetwork):
    """ClientNetwork that remembers the last response: the library raises messages.Error
    without it, and the Retry-After of a rateLimited answer is only in its headers."""

    last_response: requests.Response | None = None

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        self.last_response = None
        response = super()._send_request(method, url, *args, **kwargs)
        self.last_response = response
        return response


@dataclass(frozen=True, slots=True)
class Polled:
    """A polled resource and the server's Retry-After (absolute), if any."""

    body: Any
    retry_after: float | None


class AcmeSession:
    """One account at one ACME directory. Not thread-safe: call from one thread at a time."""

    def __init__(self, directory_url: str, account_key_pem: bytes, email: str | None, *,
                 hostname: str, challenge: str, ca_bundle: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        key = serialization.load_pem_private_key(account_key_pem, password=None)
        self.jwk = jose.JWKEC(key=key)
        self.directory_url = directory_url
        self.email = email
        self.hostname = hostname
        self.challenge = challenge
        self._clock = clock
        # requests takes a CA bundle path where a bool would go; that is how a private ACME
        # server such as pebble is trusted without touching the system store.
        verify: Any = ca_bundle if ca_bundle else True
        self.net = _Network(self.jwk, alg=jose.ES256, verify_ssl=verify,
                            user_agent=USER_AGENT, timeout=NETWORK_TIMEOUT)
        self.client: acme_client.ClientV2 | None = None

    # -- error translation -------------------------------------------------------------------

    def _call(self, fn: Callable[..., T], *args: Any, during_validation: bool = False) -> T:
        try:
            return fn(*args)
        except messages.Error as problem:
            resp = self.net.last_response
            raise problem_to_error(
                problem, hostname=self.hostname, challenge=self.challenge,
                status=resp.status_code if resp is not None else None,
                retry_after=parse_retry_after(
                    resp.headers.get("Retry-After") if resp is not None else None, self._clock()),
                during_validation=during_validation) from None
        except requests.exceptions.RequestException as exc:
            raise AcmeUnreachable(f"cannot reach ACME server {self.directory_url}: "
                                  f"{_short(exc)}") from None
        except (acme_errors.Error, jose.DeserializationError, ValueError, KeyError) as exc:
            raise AcmeError(f"unexpected answer from ACME server {self.directory_url}: "
                            f"{_short(exc)}",
                            hint="check that acme_url is an ACME v2 directory") from None

    # -- protocol steps ------------------------------------------------------------------------

    def connect(self) -> None:
        """Fetch the directory and register (or find) the account for our key."""
        def go() -> None:
            directory = acme_client.ClientV2.get_directory(self.directory_url, self.net)
            self.client = acme_client.ClientV2(directory, self.net)
            reg = messages.NewRegistration.from_data(
                email=self.email or None, terms_of_service_agreed=True)
            try:
                self.client.new_account(reg)
            except acme_errors.ConflictError as exc:
                # RFC 8555 7.3.1: the key already has an account; the server answered with
                # its URL, which is all later requests need (as "kid").
                self.net.account = messages.RegistrationResource(
                    uri=exc.location, body=messages.Registration())
        self._call(go)

    def _client(self) -> acme_client.ClientV2:
        assert self.client is not None, "connect() first"
        return self.client

    def key_authorization(self, token: str) -> str:
        """RFC 8555 8.1: token || '.' || base64url(JWK thumbprint of the account key)."""
        thumb = self.jwk.public_key().thumbprint(hash_function=hashes.SHA256)
        return f"{token}.{jose.b64encode(thumb).decode()}"

    def new_order(self, csr_pem: bytes) -> messages.OrderResource:
        return self._call(self._client().new_order, csr_pem)

    def _post_as_get(self, url: str) -> requests.Response:
        return self.net.post(url, None, new_nonce_url=self._client().directory["newNonce"])

    def fetch_authorization(self, url: str) -> Polled:
        def go() -> Polled:
            resp = self._post_as_get(url)
            body = messages.Authorization.from_json(resp.json())
            return Polled(body, parse_retry_after(resp.headers.get("Retry-After"), self._clock()))
        return self._call(go)

    def answer_challenge(self, challb: messages.ChallengeBody) -> None:
        # RFC 8555 7.5.1: the response to any challenge is an empty JSON object. acme 5.x
        # has no response class for tls-alpn-01, so send {} ourselves.
        self._call(lambda: self.net.post(challb.uri, _EmptyObject(),
                                         new_nonce_url=self._client().directory["newNonce"]))

    def finalize(self, orderr: messages.OrderResource) -> messages.Order:
        return self._call(lambda: self._client().begin_finalization(orderr).body)

    def fetch_order(self, url: str) -> Polled:
        def go() -> Polled:
            resp = self._post_as_get(url)
            body = messages.Order.from_json(resp.json())
            return Polled(body, parse_retry_after(resp.headers.get("Retry-After"), self._clock()))
        return self._call(go)

    def download_certificate(self, url: str) -> bytes:
        return self._call(lambda: self._post_as_get(url).content)

    def challenge_error(self, problem: messages.Error) -> AcmeProblem:
        """Translate the error a failed challenge carries."""
        return problem_to_error(problem, hostname=self.hostname, challenge=self.challenge,
                                status=None, retry_after=None, during_validation=True)


class _EmptyObject(jose.JSONDeSerializable):
    def to_partial_json(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_json(cls, jobj: Any) -> "_EmptyObject":
        return cls()


def challenge_type(challb: messages.ChallengeBody) -> str:
    """The challenge's type string. acme 5.x parses tls-alpn-01 as UnrecognizedChallenge,
    whose class-level typ is unset, so read it from the JSON when needed."""
    typ = getattr(challb.chall, "typ", None)
    if isinstance(typ, str):
        return typ
    return str(challb.chall.to_partial_json().get("type", ""))


def challenge_token(challb: messages.ChallengeBody) -> str:
    """The token of a token-based challenge, whatever class acme parsed it into."""
    token = challb.chall.to_partial_json().get("token")
    if not isinstance(token, str) or not token:
        raise AcmeError("challenge without a token", hint="the ACME server is not RFC 8555")
    return token


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.replace("\n", " ")[:300]
