"""When to order a certificate: a pure state machine that is told the time.

The driver asks :meth:`RenewalSchedule.next_attempt_at` with ``now`` and the current
certificate, sleeps until then, tries, and reports the outcome with :meth:`record_success` or
:meth:`record_failure`. Nothing here reads a clock or sleeps, so tests drive it with numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from .tlsconfig import CertInfo


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Tunables of the schedule. The defaults suit a public CA such as Let's Encrypt."""

    # Renew after this fraction of the lifetime, as certbot and Caddy do: a 90-day
    # certificate renews with 30 days left, which leaves room for a month of failures.
    renew_fraction: float = 2 / 3
    # First wait after a failure, doubled each consecutive failure up to max_backoff.
    # Let's Encrypt allows 5 failed validations per hostname per hour; starting at one
    # minute and doubling stays under that.
    min_backoff: float = 60.0
    max_backoff: float = 6 * 3600.0
    # A Retry-After further out than this is treated as a server bug, not obeyed forever.
    max_retry_after: float = 8 * 24 * 3600.0


class RenewalSchedule:
    """Decides when the next issuance attempt should start."""

    def __init__(self, policy: RetryPolicy | None = None) -> None:
        self.policy = policy or RetryPolicy()
        self.failures = 0
        self._retry_at: float | None = None

    def renewal_time(self, info: CertInfo) -> float:
        """The moment renewal becomes due for this certificate."""
        lifetime = max(0.0, info.not_after - info.not_before)
        return info.not_before + lifetime * self.policy.renew_fraction

    def needs_certificate(self, now: float, info: CertInfo | None, hostname: str) -> bool:
        """True when info cannot be served as is: missing, expired or for another name."""
        return info is None or now >= info.not_after or not info.covers(hostname)

    def next_attempt_at(self, now: float, info: CertInfo | None, hostname: str) -> float:
        """When to start the next order; a value <= now means at once."""
        if self._retry_at is not None:
            return self._retry_at
        if self.needs_certificate(now, info, hostname):
            return now
        assert info is not None
        return self.renewal_time(info)

    def record_success(self) -> None:
        self.failures = 0
        self._retry_at = None

    def record_failure(self, now: float, retry_after: float | None = None) -> float:
        """Note a failed attempt at now; return when the next one should start.

        ``retry_after`` is the absolute time the server asked us to wait for (Retry-After);
        it is honoured when it is later than our own backoff.
        """
        self.failures += 1
        p = self.policy
        backoff = min(p.max_backoff, p.min_backoff * 2 ** min(self.failures - 1, 30))
        at = now + backoff
        if retry_after is not None:
            at = max(at, min(retry_after, now + p.max_retry_after))
        self._retry_at = at
        return at
