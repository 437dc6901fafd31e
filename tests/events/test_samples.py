"""Coarse samples for the charts on a real SQLite store: the interval a sample belongs to,
counts per interval from cumulative counters (a reset counter too), hourly rows of peaks and
sums, retention, and the series the API draws; and the audit log's retention."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from appliance.audit.log import AuditLog
from appliance.stats.samples import COARSE_KEEP, FINE_KEEP, SampleSources, Sampler
from appliance.storage import Store
from appliance.storage.audit import AuditEntry, AuditFilter

T0 = datetime(2030, 1, 1, 10, 0, 1, tzinfo=timezone.utc)


class World:
    def __init__(self) -> None:
        self.now = T0
        self.online, self.total, self.sessions, self.relayed, self.registered = 0, 0, 0, 0, 0

    def sources(self) -> SampleSources:
        return SampleSources(lambda: self.online, lambda: self.total, lambda: self.sessions,
                             lambda: self.relayed, lambda: self.registered)


async def test_samples_intervals_counts_hours_and_retention(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    w = World()
    s = Sampler(store, lambda: w.now, w.sources())
    w.total, w.online = 3, 1
    first = await s.take(ended=False)  # at start: the interval that holds now
    assert first.at == datetime(2030, 1, 1, 10, 0, tzinfo=timezone.utc) and first.relayed_bytes == 0
    w.online, w.sessions, w.relayed, w.registered = 2, 3, 5000, 2
    w.now = T0 + timedelta(minutes=5)  # just after the first interval's end
    ended = await s.take()
    assert (ended.at, ended.nodes_online, ended.relayed_bytes, ended.registrations) == (first.at, 2, 5000, 2)
    w.relayed, w.registered = 7000, 3
    w.now += timedelta(minutes=5)
    second = await s.take()
    assert (second.relayed_bytes, second.registrations) == (2000, 1)
    w.relayed = 100  # the relay's counter was reset (a worker restarted): all of it is new
    w.now += timedelta(minutes=5)
    assert (await s.take()).relayed_bytes == 100

    step, day = await s.series("day")
    assert step == 300 and [p.at.minute for p in day] == [0, 5, 10]
    step, week = await s.series("week")
    (hour,) = week
    assert step == 3600 and hour.at == datetime(2030, 1, 1, 10, tzinfo=timezone.utc)
    assert (hour.nodes_online, hour.map_sessions, hour.relayed_bytes, hour.registrations) == (2, 3, 7100, 3)
    assert s.current().relayed_bytes == 0  # since the last sample

    w.now += FINE_KEEP + timedelta(minutes=5)
    await s.take()
    assert [p.at for p in (await s.series("day"))[1]] == [datetime(2030, 1, 3, 10, 15, tzinfo=timezone.utc)]
    w.now += COARSE_KEEP
    await s.take()
    assert len((await s.series("week"))[1]) == 1
    store.close()


def entry(at: datetime, op: str) -> AuditEntry:
    return AuditEntry(0, at, "cli", "", "", "local", op, "user", "1", "alice", None, 1, None, {"name": "alice"}, None)


async def test_audit_retention(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    now = [T0]
    log = AuditLog(store, lambda: now[0], timedelta(days=90))
    log.add(entry(T0 - timedelta(days=91), "old"))
    log.add(entry(T0 - timedelta(days=89), "kept"))
    await log.flush()
    assert await log.prune() == 1
    assert [e.operation for e in await log.query(AuditFilter())] == ["kept"]
    store.close()
