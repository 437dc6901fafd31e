"""CertManager: obtains a certificate over ACME, caches it, renews it in the background.

The Trio driver around three sans-IO or synchronous parts: the schedule (when), the ACME
session (blocking, in a worker thread) and the cache (blocking, in a worker thread).
"""

from __future__ import annotations

import datetime
import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import Any, TypeVar

import trio
from acme import crypto_util, messages

from .acmeclient import (CHALLENGE_HTTP, CHALLENGE_TLS_ALPN, AcmeSession, challenge_token,
                         challenge_type)
from .cache import CertCache
from .errors import (AcmeError, AutocertError, CacheError, CertificateError, ConfigError,
                     IssuanceTimeout)
from .schedule import RenewalSchedule, RetryPolicy
from .tlsconfig import DEFAULT_ALPN, CertInfo, challenge_context, load_pair, new_private_key_pem

log = logging.getLogger(__name__)

T = TypeVar("T")

LETSENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
# One whole order (account, order, validation, finalize, download). Let's Encrypt usually
# takes seconds; a stuck order is abandoned and retried with backoff.
ISSUANCE_TIMEOUT = 300.0
# Polling bounds: never faster than once a second (be polite even if Retry-After says 0),
# never slower than this, whatever Retry-After says, since the order deadline still runs.
MIN_POLL = 1.0
MAX_POLL = 15.0
# Sleep in naps no longer than this and re-read the clock: the clock is wall time, which can
# jump (suspend/resume, NTP), while trio.sleep runs on a monotonic clock.
MAX_NAP = 300.0

_CHALLENGE_ALIASES = {
    "tls-alpn-01": CHALLENGE_TLS_ALPN,
    "http-01": CHALLENGE_HTTP,
}


def normalize_challenge_type(value: str) -> str:
    """Accept Headscale's spellings (``TLS-ALPN-01``, ``HTTP-01``) and ACME's."""
    try:
        return _CHALLENGE_ALIASES[value.strip().lower()]
    except KeyError:
        raise ConfigError(f"unknown tls_letsencrypt_challenge_type {value!r}",
                          hint="use TLS-ALPN-01 or HTTP-01") from None


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).isoformat(timespec="seconds")


class CertManager:
    """Keeps a valid certificate for one hostname, obtained and renewed over ACME.

    Args:
        hostname: the name to certify (Headscale's ``tls_letsencrypt_hostname``).
        cache_dir: directory for the account key and certificate (``tls_letsencrypt_cache_dir``);
            created 0700 when missing.
        directory_url: ACME directory URL (``acme_url``).
        email: contact address for the account (``acme_email``); may be empty.
        challenge_type: ``"TLS-ALPN-01"`` or ``"HTTP-01"`` (any case).
        ca_bundle: path of a PEM bundle to trust for the ACME server's HTTPS (for a private
            CA such as pebble); None uses the system store.
        clock: wall-clock time in seconds since the epoch; tests pass a fake.
        policy: renewal and retry tunables.
        alpn_protocols: ALPN protocols the served certificate's context offers.

    Use: ``await nursery.start(manager.run)`` returns once the cache is loaded (the TLS
    listener must be up before an order can be validated over TLS-ALPN-01); then hand the
    manager to :class:`~autocert.TLSAcceptor` and, for HTTP-01 or the port-80 redirect, to
    :func:`~autocert.serve_http01`.
    """

    source = "acme"

    def __init__(self, hostname: str, cache_dir: str | os.PathLike[str],
                 directory_url: str = LETSENCRYPT_DIRECTORY, email: str | None = None,
                 challenge_type: str = "TLS-ALPN-01", *, ca_bundle: str | None = None,
                 clock: Callable[[], float] = time.time, policy: RetryPolicy | None = None,
                 alpn_protocols: tuple[str, ...] = DEFAULT_ALPN,
                 session_factory: Callable[..., Any] | None = None) -> None:
        hostname = hostname.strip().rstrip(".").lower()
        if not hostname:
            raise ConfigError("tls_letsencrypt_hostname is empty",
                              hint="set it to the public DNS name of this server")
        self.hostname = hostname
        self.directory_url = directory_url
        self.email = email or None
        self.challenge_type = normalize_challenge_type(challenge_type)
        self.ca_bundle = ca_bundle
        self.alpn_protocols = alpn_protocols
        self._clock = clock
        self._cache = CertCache(cache_dir)
        self._schedule = RenewalSchedule(policy)
        # Tests replace the ACME session with a fake of the same shape.
        self._session_factory = session_factory or AcmeSession
        self._session: Any = None
        # One thread at a time talks to the ACME server: the session is not thread-safe, and
        # a thread abandoned by a cancel keeps its token until it really finishes.
        self._limiter = trio.CapacityLimiter(1)
        self._context: ssl.SSLContext | None = None
        self._info: CertInfo | None = None
        self._http01: dict[str, bytes] = {}
        self._alpn: dict[str, ssl.SSLContext] = {}
        self._last_error: str | None = None
        self._have_cert = trio.Event()
        self.orders_placed = 0
        self.obtained = 0  # issuance attempts that got a certificate (first one or renewal)
        self.failures = 0  # and those that did not

    # -- what the listeners call ---------------------------------------------------------------

    def current_context(self) -> ssl.SSLContext | None:
        """The SSLContext for ordinary connections, or None before the first certificate."""
        return self._context

    def challenge_context(self, server_name: str | None) -> ssl.SSLContext | None:
        """The acme-tls/1 context for a pending TLS-ALPN-01 validation of server_name."""
        if server_name is None:
            return None
        return self._alpn.get(server_name.lower())

    def http01_response(self, token: str) -> bytes | None:
        """The body to serve at /.well-known/acme-challenge/<token>, or None if unknown."""
        return self._http01.get(token)

    async def wait_certificate(self) -> None:
        """Return once a certificate is being served (at once if one already is)."""
        await self._have_cert.wait()

    def status(self) -> dict[str, Any]:
        """Facts for ``trioscale certs``: names, issuer, validity, next renewal, last error.

        Times are ISO 8601 UTC strings; absent values are None.
        """
        info = self._info
        now = self._clock()
        next_at = self._schedule.next_attempt_at(now, info, self.hostname)
        return {
            "source": self.source,
            "hostname": self.hostname,
            "directory_url": self.directory_url,
            "challenge_type": self.challenge_type,
            "names": list(info.names) if info else [],
            "issuer": info.issuer if info else None,
            "serial": format(info.serial, "x") if info else None,
            "not_before": _iso(info.not_before) if info else None,
            "not_after": _iso(info.not_after) if info else None,
            "expired": bool(info and now >= info.not_after),
            "next_renewal": _iso(max(next_at, now)),
            "failures": self._schedule.failures,
            "last_error": self._last_error,
        }

    # -- the service ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the cache, then obtain and renew forever; cancel to stop.

        Calls ``task_status.started()`` after the cache is read, before any order, so that the
        caller can start the listeners that answer validation. Issuance failures are logged
        and retried; this returns only by cancellation.
        """
        await self._load_cached()
        task_status.started()
        while True:
            at = self._schedule.next_attempt_at(self._clock(), self._info, self.hostname)
            await self._sleep_until(at)
            await self._attempt()

    async def _sleep_until(self, at: float) -> None:
        while True:
            remaining = at - self._clock()
            if remaining <= 0:
                return
            await trio.sleep(min(remaining, MAX_NAP))

    async def _load_cached(self) -> None:
        try:
            cached = await trio.to_thread.run_sync(self._cache.load_certificate, self.hostname)
        except AutocertError as exc:
            log.error("autocert: %s; %s", exc, exc.hint)
            return
        if cached is None:
            log.info("autocert: no cached certificate for %s in %s", self.hostname,
                     self._cache.directory)
            return
        if cached.directory_url not in (None, self.directory_url):
            log.info("autocert: cached certificate for %s came from %s, not %s; ordering anew",
                     self.hostname, cached.directory_url, self.directory_url)
            return
        try:
            ctx, info = load_pair(cached.chain_pem, cached.key_pem, hostname=self.hostname,
                                  alpn_protocols=self.alpn_protocols)
        except CertificateError as exc:
            log.warning("autocert: ignoring cached certificate for %s: %s; ordering a new one",
                        self.hostname, exc)
            return
        self._install(ctx, info)
        now = self._clock()
        if now >= info.not_after:
            log.warning("autocert: cached certificate for %s expired at %s; serving it until a "
                        "new one is obtained", self.hostname, _iso(info.not_after))
        else:
            log.info("autocert: using cached certificate for %s, valid until %s, renewal at %s",
                     self.hostname, _iso(info.not_after),
                     _iso(self._schedule.next_attempt_at(now, info, self.hostname)))

    def _install(self, ctx: ssl.SSLContext, info: CertInfo) -> None:
        self._context = ctx
        self._info = info
        self._have_cert.set()

    async def _attempt(self) -> None:
        """One issuance attempt; never raises except Cancelled."""
        try:
            try:
                with trio.fail_after(ISSUANCE_TIMEOUT):
                    await self._issue()
            except trio.TooSlowError:
                raise IssuanceTimeout(
                    f"order for {self.hostname} did not complete within {ISSUANCE_TIMEOUT:.0f} s"
                ) from None
        except AutocertError as exc:
            self._failed(exc, str(exc), exc.hint, getattr(exc, "retry_after", None))
        except Exception as exc:  # a bug of ours: log it loudly and keep serving
            log.exception("autocert: internal error while obtaining a certificate")
            self._failed(exc, f"internal error: {type(exc).__name__}: {exc}",
                         "report this bug; autocert retries", None)
        else:
            self._schedule.record_success()
            self._last_error = None
            self.obtained += 1

    def _failed(self, exc: BaseException, what: str, hint: str, retry_after: float | None) -> None:
        # A session whose thread may have been abandoned mid-request is not reused.
        self._session = None
        self.failures += 1
        now = self._clock()
        next_at = self._schedule.record_failure(now, retry_after)
        self._last_error = what
        info = self._info
        if info is None:
            serving = "no certificate to serve yet, so TLS connections are refused"
        elif now >= info.not_after:
            serving = (f"the served certificate EXPIRED at {_iso(info.not_after)} and clients "
                       f"reject it until this is fixed")
        else:
            serving = f"still serving the current certificate, valid until {_iso(info.not_after)}"
        # One line per failure: what failed, what to do, what is served, when we retry.
        log.error("autocert: could not obtain a certificate for %s: %s. To fix: %s. Meanwhile %s; "
                  "next attempt at %s%s", self.hostname, what, hint, serving, _iso(next_at),
                  " (server's Retry-After)" if retry_after and retry_after >= next_at else "")

    # -- issuance -------------------------------------------------------------------------------

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        # abandon_on_cancel: shutdown must not wait for a slow ACME server; the limiter keeps
        # the abandoned thread's slot until it finishes, so calls never overlap.
        return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True,
                                             limiter=self._limiter)

    async def _ensure_session(self) -> Any:
        if self._session is None:
            key_pem = await self._in_thread(self._cache.load_or_create_account_key)
            session = self._session_factory(
                self.directory_url, key_pem, self.email, hostname=self.hostname,
                challenge=self.challenge_type, ca_bundle=self.ca_bundle, clock=self._clock)
            await self._in_thread(session.connect)
            self._session = session
        return self._session

    async def _issue(self) -> None:
        log.info("autocert: ordering a certificate for %s from %s (%s)", self.hostname,
                 self.directory_url, self.challenge_type)
        session = await self._ensure_session()
        key_pem = new_private_key_pem()  # a fresh key per certificate
        csr_pem = crypto_util.make_csr(key_pem, [self.hostname])
        orderr = await self._in_thread(session.new_order, csr_pem)
        self.orders_placed += 1
        for authzr in orderr.authorizations:
            await self._authorize(session, authzr)
        order = await self._in_thread(session.finalize, orderr)
        order = await self._wait_order(session, orderr.uri, order)
        chain_pem = await self._in_thread(session.download_certificate, order.certificate)
        ctx, info = load_pair(chain_pem, key_pem, hostname=self.hostname,
                              alpn_protocols=self.alpn_protocols)
        self._install(ctx, info)
        try:
            await trio.to_thread.run_sync(self._cache.store_certificate, self.hostname,
                                          chain_pem, key_pem, self.directory_url)
        except CacheError as exc:
            # The new certificate is served anyway; only the next restart would re-order.
            log.error("autocert: %s; %s; the new certificate is served but a restart will "
                      "order another", exc, exc.hint)
        log.info("autocert: certificate for %s obtained from %s, valid until %s, renewal at %s",
                 self.hostname, info.issuer, _iso(info.not_after),
                 _iso(self._schedule.renewal_time(info)))

    async def _authorize(self, session: Any, authzr: messages.AuthorizationResource) -> None:
        authz = authzr.body
        if authz.status == messages.STATUS_VALID:
            return  # the CA reused an earlier validation
        domain = authz.identifier.value
        challb = next((c for c in authz.challenges if challenge_type(c) == self.challenge_type),
                      None)
        if challb is None:
            offered = sorted({challenge_type(c) for c in authz.challenges})
            raise AcmeError(f"ACME server offers no {self.challenge_type} challenge for {domain} "
                            f"(offered: {', '.join(offered)})",
                            hint="set tls_letsencrypt_challenge_type to one it offers")
        token = challenge_token(challb)
        key_auth = session.key_authorization(token)
        if self.challenge_type == CHALLENGE_HTTP:
            self._http01[token] = key_auth.encode("ascii")
        else:
            self._alpn[domain.lower()] = challenge_context(domain, key_auth, now=self._clock())
        try:
            await self._in_thread(session.answer_challenge, challb)
            await self._wait_authorization(session, authzr.uri)
        finally:
            self._http01.pop(token, None)
            self._alpn.pop(domain.lower(), None)

    async def _poll_pause(self, retry_after: float | None) -> None:
        delay = MIN_POLL
        if retry_after is not None:
            delay = min(MAX_POLL, max(MIN_POLL, retry_after - self._clock()))
        await trio.sleep(delay)

    async def _wait_authorization(self, session: Any, url: str) -> None:
        while True:
            polled = await self._in_thread(session.fetch_authorization, url)
            authz = polled.body
            if authz.status == messages.STATUS_VALID:
                return
            if authz.status in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                await self._poll_pause(polled.retry_after)
                continue
            for chall in authz.challenges:
                if chall.error is not None:
                    raise session.challenge_error(chall.error)
            raise AcmeError(f"authorization for {authz.identifier.value} is {authz.status} "
                            f"without an error", hint="retry later; autocert does")

    async def _wait_order(self, session: Any, url: str, order: messages.Order) -> messages.Order:
        retry_after: float | None = None
        while True:
            if order.status == messages.STATUS_VALID and order.certificate:
                return order
            if order.status == messages.STATUS_INVALID:
                if order.error is not None:
                    raise session.challenge_error(order.error)
                raise AcmeError("the order became invalid without an error",
                                hint="retry later; autocert does")
            await self._poll_pause(retry_after)
            polled = await self._in_thread(session.fetch_order, url)
            order, retry_after = polled.body, polled.retry_after
