"""Token buckets per key (a source address, a reason), with a bound on the keys kept.

Used at the edges against floods: per-source limits on unauthenticated work, and the log
throttle. Memory is bounded by ``max_keys``: the least recently used key is forgotten first,
and a forgotten key starts again with a full bucket, which costs an attacker nothing he could
not get from a fresh address anyway.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable, Hashable


class TokenBuckets:
    """``rate`` tokens per second up to ``burst``, one bucket per key."""

    def __init__(self, rate: float, burst: float, *, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate > 0, burst >= 1 and max_keys >= 1 are needed")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()  # key → (tokens, at)

    def allow(self, key: Hashable, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket; False (taking nothing) when it has too few."""
        now = self.clock()
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def exhausted(self, key: Hashable, cost: float = 1.0) -> bool:
        """True when ``key``'s bucket holds fewer than ``cost`` tokens now; takes nothing (for a
        check before work whose cost is only charged when it fails)."""
        got = self._buckets.get(key)
        if got is None:
            return False
        tokens, at = got
        return min(self.burst, tokens + (self.clock() - at) * self.rate) < cost

    def __len__(self) -> int:
        return len(self._buckets)

    def available(self, key: Hashable) -> float:
        """The tokens ``key`` has now, taking none (a full bucket for a key not seen)."""
        now = self.clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)
