"""Errors raised by autocert.

Every error derives from :class:`AutocertError`, so the appliance can catch the package's
failures in one place. Errors that end an issuance attempt carry ``hint``: one sentence that
tells the operator what to do, which the manager puts on the same log line as the cause.
"""

from __future__ import annotations


class AutocertError(Exception):
    """Base class of every autocert error."""

    #: What the operator should do about it; shown on the log line next to the cause.
    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class ConfigError(AutocertError):
    """The configuration cannot work (unknown challenge type, missing hostname, bad path)."""


class ClientHelloError(AutocertError):
    """The bytes a client sent are not a TLS ClientHello we can route."""


class CertificateError(AutocertError):
    """A certificate or key is unreadable, mismatched, expired or not for our name."""


class CacheError(AutocertError):
    """The cache directory cannot be read or written."""

    hint = "check that the cache directory exists and is writable by this process"


class AcmeError(AutocertError):
    """An issuance attempt failed.

    ``retry_after`` is an absolute time (seconds since the epoch, the manager's clock) before
    which the server asked us not to come back, or None when it did not say.
    """

    retry_after: float | None = None


class AcmeUnreachable(AcmeError):
    """The ACME directory could not be reached (DNS, TCP, TLS or HTTP failure)."""

    hint = ("check acme_url, outbound HTTPS from this host, and the CA bundle "
            "if the ACME server uses a private CA")


class AcmeProblem(AcmeError):
    """The ACME server answered with an RFC 8555 problem document."""

    def __init__(self, message: str, *, problem_type: str, detail: str,
                 status: int | None = None, retry_after: float | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problem_type = problem_type
        self.detail = detail
        self.status = status
        self.retry_after = retry_after

    @property
    def code(self) -> str:
        """The short ACME error code, e.g. ``rateLimited`` for ``urn:...:rateLimited``."""
        return self.problem_type.rsplit(":", 1)[-1]


class RateLimited(AcmeProblem):
    """urn:ietf:params:acme:error:rateLimited: wait for Retry-After before the next order."""

    hint = ("the ACME server limits how often certificates can be issued; autocert waits "
            "as asked and retries; avoid deleting the cache directory, which forces new orders")


class ChallengeFailed(AcmeProblem):
    """The ACME server tried to validate our challenge response and failed."""


class IssuanceTimeout(AcmeError):
    """The order did not complete within the time allowed for one attempt."""

    hint = "the ACME server is slow or stuck; autocert retries with backoff"
