"""The SQLite store: one file, WAL, reached from Trio through one worker thread."""

from .store import Store, StoreError

__all__ = ["Store", "StoreError"]
