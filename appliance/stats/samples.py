"""Every STEP (5 minutes) the server keeps a coarse sample of the tailnet in its database: nodes
online and in all, open map sessions (gauges), relayed bytes and registrations in the interval
(counts); and an hourly row of the hour's peaks and sums. 5-minute rows are kept FINE_KEEP (two
days), hourly rows COARSE_KEEP (30 days): a few thousand rows at most, whatever the tailnet.

The console draws them: a day of 5-minute samples, a week of hourly ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

import trio

from ..storage import Store
from ..storage.samples import Sample, prune_samples, read_samples, write_sample
from ..storage.store import StoreError

log = logging.getLogger(__name__)

STEP = 300
HOUR = 3600
FINE_KEEP = timedelta(days=2)
COARSE_KEEP = timedelta(days=30)
RANGES = {"day": (STEP, timedelta(days=1)), "week": (HOUR, timedelta(days=7))}


@dataclass
class SampleSources:
    """Where the numbers come from. Counters are cumulative since the process started; the
    sampler stores their growth per interval."""

    nodes_online: Callable[[], int]
    nodes_total: Callable[[], int]
    map_sessions: Callable[[], int]
    relayed_bytes: Callable[[], int]  # 0 without the embedded relay
    registrations: Callable[[], int]
    refresh: Callable[[], object] | None = None  # async: fresh relay counters (worker processes)


def sources_of(tailnet, relayed_bytes: Callable[[], int] = lambda: 0, refresh=None) -> SampleSources:
    """The tailnet's gauges, the registrations counter and the relay's byte counter."""
    from .. import meters

    return SampleSources(
        nodes_online=lambda: len(tailnet.online), nodes_total=lambda: len(tailnet.nodes),
        map_sessions=lambda: sum(tailnet.online.values()), relayed_bytes=relayed_bytes,
        registrations=lambda: int(meters.registrations.total()), refresh=refresh,
    )


def interval_start(t: datetime, step: int) -> datetime:
    epoch = int(t.timestamp())
    return datetime.fromtimestamp(epoch - epoch % step, timezone.utc)


class Sampler:
    def __init__(self, store: Store, clock: Callable[[], datetime], sources: SampleSources, step: int = STEP) -> None:
        self.store = store
        self.clock = clock
        self.src = sources
        self.step = step
        self._relayed = 0  # the counters at the last sample
        self._registrations = 0

    def current(self, at: datetime | None = None) -> Sample:
        """The gauges now, and the counts since the last sample."""
        relayed, registered = self.src.relayed_bytes(), self.src.registrations()
        return Sample(
            at=at or self.clock(), nodes_online=self.src.nodes_online(), nodes_total=self.src.nodes_total(),
            map_sessions=self.src.map_sessions(),
            # A counter that went down was reset (a relay worker restarted): all of it is new.
            relayed_bytes=relayed - self._relayed if relayed >= self._relayed else relayed,
            registrations=registered - self._registrations if registered >= self._registrations else registered,
        )

    async def take(self, *, ended: bool = True) -> Sample:
        """Store a sample for the interval that just ended (``ended``, a moment after its end)
        or, at start, for the one that holds now (the next sample of it replaces it)."""
        if self.src.refresh is not None:
            await self.src.refresh()
        now = self.clock()
        at = interval_start(now - timedelta(seconds=2) if ended else now, self.step)
        s = self.current(at)
        self._relayed, self._registrations = self.src.relayed_bytes(), self.src.registrations()
        hour = interval_start(at, HOUR)

        def fn(c) -> None:
            write_sample(c, self.step, s, hour)
            prune_samples(c, self.step, now - FINE_KEEP)
            prune_samples(c, HOUR, now - COARSE_KEEP)

        await self.store.run_sync(fn)
        return s

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """A sample at start (the charts have a point at once), then one at the end of every
        interval, until cancelled."""
        task_status.started()
        ended = False
        while True:
            try:
                await self.take(ended=ended)
            except StoreError as e:
                log.error("stats sample not stored: %s", e)
            ended = True
            now = self.clock().timestamp()
            await trio.sleep(self.step - now % self.step + 1)

    async def series(self, range_: str) -> tuple[int, list[Sample]]:
        step, span = RANGES[range_]
        since = self.clock() - span
        return step, await self.store.run_sync(lambda c: read_samples(c, step, since))
