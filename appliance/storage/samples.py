"""Rows of stats_samples: one per step (300 s or 3600 s) and interval start.

Gauges (nodes online, nodes total, map sessions) are the value at the sample; an hourly row
keeps the hour's highest. Counts (relayed bytes, registrations) are what happened in the
interval; an hourly row keeps the hour's sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .audit import stamp, unstamp


@dataclass(frozen=True, slots=True)
class Sample:
    at: datetime  # the interval's start
    nodes_online: int
    nodes_total: int
    map_sessions: int
    relayed_bytes: int
    registrations: int


def write_sample(c: Any, step: int, s: Sample, hour: datetime) -> None:
    """The ``step`` sample (a repeat of the same interval, after a restart, replaces it) and
    its contribution to the hourly row starting at ``hour``."""
    values = (s.nodes_online, s.nodes_total, s.map_sessions, s.relayed_bytes, s.registrations)
    c.execute(
        "INSERT INTO stats_samples (step, at, nodes_online, nodes_total, map_sessions, relayed_bytes, registrations)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (step, at) DO UPDATE SET nodes_online = excluded.nodes_online,"
        " nodes_total = excluded.nodes_total, map_sessions = excluded.map_sessions,"
        " relayed_bytes = excluded.relayed_bytes, registrations = excluded.registrations",
        (step, stamp(s.at), *values),
    )
    # The highest of two, written so that both engines run it (SQLite's max(a, b) is
    # PostgreSQL's greatest).
    peak = "CASE WHEN excluded.{0} > stats_samples.{0} THEN excluded.{0} ELSE stats_samples.{0} END"
    c.execute(
        "INSERT INTO stats_samples (step, at, nodes_online, nodes_total, map_sessions, relayed_bytes, registrations)"
        " VALUES (3600, ?, ?, ?, ?, ?, ?) ON CONFLICT (step, at) DO UPDATE SET"
        f" nodes_online = {peak.format('nodes_online')}, nodes_total = {peak.format('nodes_total')},"
        f" map_sessions = {peak.format('map_sessions')},"
        " relayed_bytes = stats_samples.relayed_bytes + excluded.relayed_bytes,"
        " registrations = stats_samples.registrations + excluded.registrations",
        (stamp(hour), *values),
    )


def read_samples(c: Any, step: int, since: datetime) -> list[Sample]:
    rows = c.execute("SELECT * FROM stats_samples WHERE step = ? AND at >= ? ORDER BY at", (step, stamp(since)))
    return [Sample(unstamp(r["at"]), r["nodes_online"], r["nodes_total"], r["map_sessions"],
                   r["relayed_bytes"], r["registrations"]) for r in rows]


def prune_samples(c: Any, step: int, older_than: datetime) -> int:
    return c.execute("DELETE FROM stats_samples WHERE step = ? AND at < ?", (step, stamp(older_than))).rowcount
