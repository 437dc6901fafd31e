"""The audit log's rows: written in batches, read newest first with filters, pruned by age.

Sync functions taking the transaction (``Store.run_sync``), in the SQL both engines run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

_COLUMNS = ("at", "actor_kind", "actor_id", "actor_name", "source", "operation", "target_kind", "target_id",
            "target_name", "node_id", "user_id", "before", "after", "request")


def stamp(t: datetime) -> str:
    """The stored form of a time: UTC, to the second, so that text order is time order
    (SQLite; PostgreSQL reads it into a timestamptz)."""
    return t.astimezone(timezone.utc).replace(microsecond=0).isoformat()


def unstamp(value: str | datetime) -> datetime:
    """A stored time as SQLite (text) or PostgreSQL (timestamptz) gives it back."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc)
    return datetime.fromisoformat(value)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int  # 0 until written
    at: datetime
    actor_kind: str
    actor_id: str
    actor_name: str
    source: str
    operation: str
    target_kind: str
    target_id: str
    target_name: str
    node_id: int | None
    user_id: int | None
    before: Any
    after: Any
    request: Any


@dataclass(frozen=True, slots=True)
class AuditFilter:
    actor_kind: str | None = None
    actor_id: str | None = None
    operation: str | None = None
    target_kind: str | None = None
    node_id: int | None = None
    user_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_id: int | None = None  # the cursor: entries older than this one
    limit: int = 100


def _dumped(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def insert_entries(c: Any, entries: list[AuditEntry]) -> None:
    c.executemany(
        f"INSERT INTO audit_log ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
        [(stamp(e.at), e.actor_kind, e.actor_id, e.actor_name, e.source, e.operation, e.target_kind, e.target_id,
          e.target_name, e.node_id, e.user_id, _dumped(e.before), _dumped(e.after), _dumped(e.request))
         for e in entries],
    )


def _loaded(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None  # a damaged cell hides that value, not the entry


def _entry(r: Any) -> AuditEntry:
    return AuditEntry(
        id=r["id"], at=unstamp(r["at"]), actor_kind=r["actor_kind"], actor_id=r["actor_id"],
        actor_name=r["actor_name"], source=r["source"], operation=r["operation"], target_kind=r["target_kind"],
        target_id=r["target_id"], target_name=r["target_name"], node_id=r["node_id"], user_id=r["user_id"],
        before=_loaded(r["before"]), after=_loaded(r["after"]), request=_loaded(r["request"]),
    )


def select_entries(c: Any, f: AuditFilter) -> list[AuditEntry]:
    """Newest first, at most ``f.limit``."""
    where, args = [], []
    for column, value in (("actor_kind", f.actor_kind), ("actor_id", f.actor_id), ("operation", f.operation),
                          ("target_kind", f.target_kind), ("node_id", f.node_id), ("user_id", f.user_id)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if f.since is not None:
        where.append("at >= ?")
        args.append(stamp(f.since))
    if f.until is not None:
        where.append("at < ?")
        args.append(stamp(f.until))
    if f.before_id is not None:
        where.append("id < ?")
        args.append(f.before_id)
    sql = "SELECT * FROM audit_log" + (" WHERE " + " AND ".join(where) if where else "")
    rows = c.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, f.limit)).fetchall()
    out = []
    for r in rows:
        try:
            out.append(_entry(r))
        except (ValueError, TypeError):
            continue  # an unreadable time: not shown rather than failing the page
    return out


def prune_entries(c: Any, older_than: datetime) -> int:
    return c.execute("DELETE FROM audit_log WHERE at < ?", (stamp(older_than),)).rowcount
