"""Who is the active server of a database (see postgres.py for the lease itself)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Lease:
    """This process is the active one. ``epoch`` counts the times the role changed hands
    (PostgreSQL; always 0 with SQLite, where the one process is always active)."""

    epoch: int
    name: str
    since: datetime


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """Who is active on the database, as any process sharing it sees it."""

    active: str  # the active process's name; "" while none holds the lease
    since: datetime | None
    epoch: int
