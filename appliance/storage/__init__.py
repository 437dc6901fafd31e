"""The store: the tailnet's state in SQLite (one file, the default) or PostgreSQL (shared by an
active server and its standbys)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import Conflict, KeyMismatch, LeaseLost, StoreError, StoreFailed
from .store import ClusterStatus, Lease, Store

if TYPE_CHECKING:
    from ..config.model import DatabaseConfig

__all__ = ["Store", "StoreError", "Conflict", "StoreFailed", "LeaseLost", "KeyMismatch", "Lease", "ClusterStatus", "open_store"]


def open_store(db: "DatabaseConfig", *, migrate: bool = True, name: str = "trioscale") -> Store:
    """The store the configuration names (``database.type``), opened and migrated. ``name``
    tells PostgreSQL who is connected (its application_name). Raises StoreError when it cannot
    be used."""
    if db.type == "postgres":
        from .postgres import PostgresEngine

        return Store(PostgresEngine(db.postgres, migrate=migrate, name=name))
    return Store(db.sqlite_path)
