"""/api/v1/stats: the coarse samples the console's charts draw (stats/samples.py)."""

from __future__ import annotations

from datetime import datetime

from ..stats.samples import RANGES
from ..storage.samples import Sample
from .backend import Backend
from .router import Call, Router
from .schema import Enum, Int, List, Time, api_type, fld

COUNT = Int(minimum=0, maximum=(1 << 63) - 1)


@api_type
class StatsSample:
    """Gauges at the sample (an hourly one: the hour's highest), counts in its interval."""

    time: datetime = fld(Time(), doc="the interval's start")
    nodes_online: int = fld(COUNT)
    nodes_total: int = fld(COUNT)
    map_sessions: int = fld(COUNT, doc="open map streams (a node may hold more than one)")
    relayed_bytes: int = fld(COUNT, doc="bytes the embedded DERP relay passed on in the interval")
    registrations: int = fld(COUNT, doc="nodes registered in the interval (new, or logging in again)")


@api_type
class StatsResponse:
    range: str = fld(Enum(*RANGES))
    step: int = fld(Int(minimum=1, maximum=86400), doc="seconds between samples: 300 for a day, 3600 for a week")
    samples: tuple = fld(List(StatsSample.spec, max_items=4096), doc="oldest first; intervals without a "
                         "sample (the server was down) are absent")
    current: StatsSample = fld(StatsSample.spec, doc="now: the gauges, and the counts since the last sample")


def sample_of(s: Sample) -> StatsSample:
    return StatsSample(s.at, s.nodes_online, s.nodes_total, s.map_sessions, s.relayed_bytes, s.registrations)


def routes(r: Router, b: Backend) -> None:
    @r.get("/api/v1/stats", "getStats", "Samples for charts", tag="Events", response=StatsResponse,
           query={"range": Enum(*RANGES, doc="day: 5-minute samples; week: hourly ones")},
           description="Nodes online and in all, map sessions, relayed bytes and registrations over the last "
                       "day (5-minute samples) or week (hourly: the hour's highest gauges and summed counts).")
    async def get_stats(call: Call, range: str = "day") -> StatsResponse:
        step, samples = await b.stats.series(range)
        return StatsResponse(range, step, tuple(sample_of(s) for s in samples), sample_of(b.stats.current()))
