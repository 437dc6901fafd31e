"""The renewal schedule, driven with numbers for time."""

from __future__ import annotations

from autocert.schedule import RenewalSchedule, RetryPolicy
from autocert.tlsconfig import CertInfo

DAY = 86400.0
T0 = 1_800_000_000.0
HOST = "ts.example.net"


def cert(not_before: float = T0, days: float = 90, names: tuple[str, ...] = (HOST,)) -> CertInfo:
    return CertInfo(names=names, issuer="CN=test", serial=1, not_before=not_before,
                    not_after=not_before + days * DAY)


def test_no_certificate_means_now() -> None:
    s = RenewalSchedule()
    assert s.next_attempt_at(T0, None, HOST) == T0


def test_renews_at_two_thirds_of_lifetime() -> None:
    s = RenewalSchedule()
    c = cert()
    assert s.next_attempt_at(T0 + DAY, c, HOST) == T0 + 60 * DAY
    # the same answer whatever "now" is, until it is due
    assert s.next_attempt_at(T0 + 59 * DAY, c, HOST) == T0 + 60 * DAY


def test_expired_or_wrong_name_means_now() -> None:
    s = RenewalSchedule()
    assert s.next_attempt_at(T0 + 91 * DAY, cert(), HOST) == T0 + 91 * DAY
    assert s.next_attempt_at(T0 + DAY, cert(names=("other.example",)), HOST) == T0 + DAY


def test_backoff_doubles_and_caps_then_success_resets() -> None:
    s = RenewalSchedule(RetryPolicy(min_backoff=60, max_backoff=3600))
    now = T0
    delays = []
    for _ in range(8):
        at = s.record_failure(now)
        delays.append(at - now)
        assert s.next_attempt_at(now, cert(), HOST) == at  # the retry wins over the renewal date
        now = at
    assert delays == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert s.failures == 8
    s.record_success()
    assert s.failures == 0
    assert s.next_attempt_at(now, cert(), HOST) == T0 + 60 * DAY


def test_retry_after_is_honoured_when_later_than_backoff() -> None:
    s = RenewalSchedule(RetryPolicy(min_backoff=60))
    assert s.record_failure(T0, retry_after=T0 + 3 * 3600) == T0 + 3 * 3600
    # an earlier Retry-After does not shorten our own backoff
    assert s.record_failure(T0, retry_after=T0 + 1) == T0 + 120


def test_absurd_retry_after_is_capped() -> None:
    s = RenewalSchedule(RetryPolicy(max_retry_after=8 * DAY))
    assert s.record_failure(T0, retry_after=T0 + 400 * DAY) == T0 + 8 * DAY


def test_short_lived_certificate() -> None:
    s = RenewalSchedule()
    c = CertInfo((HOST,), "CN=x", 1, T0, T0 + 9)
    assert s.renewal_time(c) == T0 + 6
