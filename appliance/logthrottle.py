"""Log lines rate-limited per reason, so that a flood of bad requests cannot fill the disk.

Each reason (a short fixed string such as "bad-register-body", never text from the peer) gets
a few lines in a burst and then one per interval; the next line that passes says how many of
that reason were held back.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from .ratelimit import TokenBuckets

BURST = 5  # lines of one reason that pass at once
INTERVAL = 10.0  # then one line per reason per this many seconds
MAX_REASONS = 1024  # reasons are fixed strings; this only bounds memory against a bug


class LogThrottle:
    def __init__(self, logger: logging.Logger, *, burst: int = BURST, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self._buckets = TokenBuckets(1.0 / interval, burst, max_keys=MAX_REASONS, clock=clock)
        self._held: dict[str, int] = {}

    def log(self, level: int, reason: str, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` under ``reason`` unless that reason is over its rate; True if logged."""
        if not self.logger.isEnabledFor(level):
            return False
        if not self._buckets.allow(reason):
            if len(self._held) < MAX_REASONS or reason in self._held:
                self._held[reason] = self._held.get(reason, 0) + 1
            return False
        held = self._held.pop(reason, 0)
        if held:
            msg += " (%d more like this held back)"
            args = (*args, held)
        self.logger.log(level, msg, *args)
        return True

    def warning(self, reason: str, msg: str, *args: Any) -> bool:
        return self.log(logging.WARNING, reason, msg, *args)

    def info(self, reason: str, msg: str, *args: Any) -> bool:
        return self.log(logging.INFO, reason, msg, *args)
