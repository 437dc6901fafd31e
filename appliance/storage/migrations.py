"""Forward-only schema migrations, applied at start.

Append a new entry to MIGRATIONS for every schema change, never edit an old one, and keep
schema.sql equal to the result. ``PRAGMA user_version`` holds how many have been applied.
"""

from __future__ import annotations

from importlib import resources

# Migration 1 is the first schema itself.
MIGRATIONS: list[str] = [
    resources.files(__package__).joinpath("schema.sql").read_text(),
]

# Once a second migration exists, migration 1 must stop reading schema.sql: freeze its text here.
assert len(MIGRATIONS) == 1, "freeze migration 1's SQL before appending migration 2"

LATEST = len(MIGRATIONS)
