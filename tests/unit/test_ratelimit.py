import logging

from appliance.logthrottle import LogThrottle
from appliance.ratelimit import TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_bucket_allows_burst_then_refills_at_rate():
    clock = Clock()
    b = TokenBuckets(rate=2, burst=3, clock=clock)
    assert [b.allow("a") for _ in range(4)] == [True, True, True, False]
    assert b.allow("b")  # other keys are independent
    clock.t = 0.5  # one token back at 2/s
    assert b.allow("a") and not b.allow("a")
    clock.t = 100
    assert [b.allow("a") for _ in range(4)] == [True, True, True, False]  # capped at burst


def test_bucket_memory_is_bounded_least_recent_first():
    b = TokenBuckets(rate=1, burst=1, max_keys=3, clock=Clock())
    for k in "abcd":
        assert b.allow(k)
    assert len(b) == 3
    assert b.allow("a")  # "a" was forgotten: it starts full again
    assert not b.allow("d")  # "d" is still remembered and empty


def test_log_throttle_counts_what_it_held_back(caplog):
    clock = Clock()
    throttle = LogThrottle(logging.getLogger("t"), burst=2, interval=10, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t"):
        results = [throttle.warning("bad-body", "bad body from %s", "1.2.3.4") for _ in range(5)]
        assert results == [True, True, False, False, False]
        assert throttle.warning("other", "another reason")
        clock.t = 10
        assert throttle.warning("bad-body", "bad body from %s", "1.2.3.4")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[-1] == "bad body from 1.2.3.4 (3 more like this held back)"
    assert len(lines) == 4
