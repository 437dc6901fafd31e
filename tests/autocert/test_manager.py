"""CertManager driven by a scripted ACME session and Trio's mock clock (virtual time)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from acme import messages

from autocert import CertManager, RateLimited
from autocert.cache import CertCache
from autocert.errors import AcmeUnreachable
from autocert.tlsconfig import new_private_key_pem
from acme import crypto_util

from .fakeacme import FakeAcme

T0 = 1_800_000_000.0
HOST = "ts.example.net"
HOUR = 3600.0


@pytest.fixture
def clock(mock_clock: trio.testing.MockClock) -> Callable[[], float]:
    # Tests must also take mock_clock themselves: pytest-trio runs the test under a clock
    # only when the test function names it. Jump virtual time only after a short real idle, so worker threads (cache writes, the
    # fake session) finish before the clock moves past their deadlines.
    mock_clock.autojump_threshold = 0.02
    # Read from worker threads too, so it cannot be trio.current_time().
    return lambda: T0 + mock_clock.current_time()


def make(tmp_path: Path, clock: Callable[[], float], fake: FakeAcme,
         challenge: str = "TLS-ALPN-01", directory: str = "https://ca/dir") -> CertManager:
    return CertManager(HOST, tmp_path / "cache", directory, "ops@example.net", challenge,
                       clock=clock, session_factory=fake.factory)


def seed_cache(tmp_path: Path, fake: FakeAcme, not_before: float, lifetime: float,
               directory: str = "https://ca/dir") -> int:
    key = new_private_key_pem()
    chain = fake.ca.issue(crypto_util.make_csr(key, [HOST]), not_before, lifetime)
    CertCache(tmp_path / "cache").store_certificate(HOST, chain, key, directory)
    from cryptography import x509
    return x509.load_pem_x509_certificate(chain).serial_number


def errors_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_obtains_then_renews_at_two_thirds(tmp_path: Path, mock_clock, clock, caplog) -> None:
    fake = FakeAcme(clock, lifetime=3 * HOUR)
    mgr = make(tmp_path, clock, fake)
    with trio.fail_after(30 * 24 * HOUR):  # virtual time: a hang fails fast
        async with trio.open_nursery() as nursery:
            await nursery.start(mgr.run)
            assert mgr.current_context() is None
            await mgr.wait_certificate()
            first = mgr.status()
            assert first["names"] == [HOST] and first["issuer"] == "CN=Fake ACME CA"
            while len(fake.order_times) < 2:
                await trio.sleep(60)
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
    assert fake.answered == ["tls-alpn-01", "tls-alpn-01"]
    # the renewal started 2 hours (two thirds of 3 h) after the first certificate's notBefore
    assert fake.order_times[1] - fake.order_times[0] == pytest.approx(2 * HOUR, abs=2)
    assert mgr.status()["serial"] != first["serial"]
    assert not errors_in(caplog)


async def test_status_reports_next_renewal(tmp_path: Path, mock_clock, clock) -> None:
    fake = FakeAcme(clock, lifetime=90 * 24 * HOUR)
    mgr = make(tmp_path, clock, fake)
    with trio.fail_after(30 * 24 * HOUR):  # virtual time: a hang fails fast
        async with trio.open_nursery() as nursery:
            await nursery.start(mgr.run)
            await mgr.wait_certificate()
            status = mgr.status()
            nursery.cancel_scope.cancel()
    import datetime
    nb = datetime.datetime.fromisoformat(status["not_before"])
    assert datetime.datetime.fromisoformat(status["next_renewal"]) - nb == datetime.timedelta(days=60)
    assert status["expired"] is False and status["failures"] == 0
    assert status["source"] == "acme" and status["challenge_type"] == "tls-alpn-01"


async def test_rate_limited_waits_for_retry_after(tmp_path: Path, mock_clock, clock, caplog) -> None:
    fake = FakeAcme(clock)
    fake.failures = [RateLimited("ACME server refused: rateLimited: too many certificates",
                                 problem_type="urn:ietf:params:acme:error:rateLimited",
                                 detail="too many certificates", status=429,
                                 retry_after=clock() + 5 * HOUR)]
    mgr = make(tmp_path, clock, fake)
    with trio.fail_after(30 * 24 * HOUR):  # virtual time: a hang fails fast
        async with trio.open_nursery() as nursery:
            await nursery.start(mgr.run)
            await mgr.wait_certificate()
            nursery.cancel_scope.cancel()
    assert len(fake.order_times) == 2
    assert fake.order_times[1] - fake.order_times[0] == pytest.approx(5 * HOUR, abs=1)
    [line] = errors_in(caplog)
    assert "rateLimited" in line and "Retry-After" in line and "limits how often" in line
    assert mgr.status()["failures"] == 0 and mgr.status()["last_error"] is None


async def test_challenge_failure_keeps_last_good_certificate(tmp_path: Path, mock_clock, clock, caplog) -> None:
    fake = FakeAcme(clock)
    # a cached certificate already past its renewal time (2 h of 3 h), still valid
    serial = seed_cache(tmp_path, fake, clock() - 2.5 * HOUR, 3 * HOUR)
    fake.failures = [messages.Error(typ="urn:ietf:params:acme:error:connection",
                                    detail="Connection refused")] * 3
    mgr = make(tmp_path, clock, fake)
    with trio.fail_after(30 * 24 * HOUR):  # virtual time: a hang fails fast
        async with trio.open_nursery() as nursery:
            await nursery.start(mgr.run)
            assert mgr.current_context() is not None  # served from the cache before any order
            while mgr.status()["failures"] < 3:
                await trio.sleep(1)
            status = mgr.status()
            nursery.cancel_scope.cancel()
    assert status["serial"] == format(serial, "x")
    assert "Connection refused" in status["last_error"]
    lines = errors_in(caplog)
    assert len(lines) == 3  # one line per failed attempt
    assert "port 443" in lines[0] and "still serving the current certificate" in lines[0]
    # backoff: 60 s, then 120 s
    assert fake.order_times[1] - fake.order_times[0] == pytest.approx(60, abs=1)
    assert fake.order_times[2] - fake.order_times[1] == pytest.approx(120, abs=1)


async def test_expired_cached_certificate(tmp_path: Path, mock_clock, clock, caplog) -> None:
    fake = FakeAcme(clock)
    seed_cache(tmp_path, fake, clock() - 4 * HOUR, 3 * HOUR)
    fake.failures = [AcmeUnreachable("cannot reach ACME server https://ca/dir: refused")]
    mgr = make(tmp_path, clock, fake)
    with trio.fail_after(30 * 24 * HOUR):  # virtual time: a hang fails fast
        async with trio.open_nursery() as nursery:
            await nursery.start(mgr.run)
            assert mgr.status()["expired"] is True
            while mgr.status()["failures"] == 0:
                await trio.sleep(1)
            nursery.cancel_scope.cancel()
    [line] = errors_in(caplog)
    assert "EXPIRED" in line and "acme_url" in line and "next attempt at" in line
    assert any("expired at" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


async def test_cache_reused_without_order_until_renewal(tmp_path: Path, mock_clock, clock) -> None:
    fake = FakeAcme(clock)
    serial = seed_cache(tmp_path, fake, clock() - HOUR, 3 * HOUR)
    mgr = make(tmp_path, clock, fake)
    with trio.fail_after(30 * 24 * HOUR):  # virtual time: a hang fails fast
        async with trio.open_nursery() as nursery:
            await nursery.start(mgr.run)
            await trio.sleep(HOUR - 10)
            assert fake.order_times == []
            assert mgr.status()["serial"] == format(serial, "x")
            await trio.sleep(20)
            assert len(fake.order_times) == 1
            nursery.cancel_scope.cancel()


async def test_cache_from_another_directory_is_not_used(tmp_path: Path, mock_clock, clock) -> None:
    fake = FakeAcme(clock)
    seed_cache(tmp_path, fake, clock(), 3 * HOUR, directory="https://staging/dir")
    mgr = make(tmp_path, clock, fake)
    with trio.fail_after(30 * 24 * HOUR):  # virtual time: a hang fails fast
        async with trio.open_nursery() as nursery:
            await nursery.start(mgr.run)
            assert mgr.current_context() is None
            await mgr.wait_certificate()
            nursery.cancel_scope.cancel()
    assert len(fake.order_times) == 1


async def test_http01_token_served_only_during_validation(tmp_path: Path, mock_clock, clock) -> None:
    fake = FakeAcme(clock)
    mgr = make(tmp_path, clock, fake, challenge="HTTP-01")
    seen: list[bytes | None] = []
    orig = fake.factory

    def factory(*a, **kw):
        session = orig(*a, **kw)
        answer = session.answer_challenge

        def spy(challb):
            seen.append(mgr.http01_response("httpTOKEN0123456789abcde"))
            answer(challb)
        session.answer_challenge = spy
        return session
    mgr._session_factory = factory
    with trio.fail_after(30 * 24 * HOUR):  # virtual time: a hang fails fast
        async with trio.open_nursery() as nursery:
            await nursery.start(mgr.run)
            await mgr.wait_certificate()
            nursery.cancel_scope.cancel()
    assert seen == [b"httpTOKEN0123456789abcde.thumb"]
    assert mgr.http01_response("httpTOKEN0123456789abcde") is None


async def test_unexpected_exception_is_logged_and_retried(tmp_path: Path, mock_clock, clock, caplog) -> None:
    fake = FakeAcme(clock)
    fake.failures = [ZeroDivisionError("bug")]
    mgr = make(tmp_path, clock, fake)
    with trio.fail_after(30 * 24 * HOUR):  # virtual time: a hang fails fast
        async with trio.open_nursery() as nursery:
            await nursery.start(mgr.run)
            await mgr.wait_certificate()
            nursery.cancel_scope.cancel()
    assert len(fake.order_times) == 2
    assert any("internal error" in line for line in errors_in(caplog))


async def test_shutdown_not_held_up_by_a_stuck_acme_call(tmp_path: Path) -> None:
    fake = FakeAcme(time.time)
    fake.connect_hook = lambda: time.sleep(3)  # a hung HTTP request in the worker thread
    mgr = CertManager(HOST, tmp_path / "cache", "https://ca/dir", None, "HTTP-01",
                      session_factory=fake.factory)
    start = time.monotonic()
    with trio.fail_after(30 * 24 * HOUR):  # virtual time: a hang fails fast
        async with trio.open_nursery() as nursery:
            await nursery.start(mgr.run)
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
    assert time.monotonic() - start < 1.5


async def test_cache_write_failure_still_serves(tmp_path: Path, mock_clock, clock, caplog,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from autocert.errors import CacheError

    def refuse(*args: object) -> None:
        raise CacheError("cannot write /cache/ts.example.net.key: No space left on device")
    monkeypatch.setattr(CertCache, "store_certificate", refuse)
    fake = FakeAcme(clock)
    mgr = make(tmp_path, clock, fake)
    with trio.fail_after(HOUR):
        async with trio.open_nursery() as nursery:
            await nursery.start(mgr.run)
            await mgr.wait_certificate()
            await trio.sleep(60)
            nursery.cancel_scope.cancel()
    assert len(fake.order_times) == 1 and mgr.status()["failures"] == 0
    [line] = errors_in(caplog)
    assert "No space left" in line and "restart will order another" in line
