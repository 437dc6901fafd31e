"""The store's errors: one base class, StoreError."""

from __future__ import annotations


class StoreError(Exception):
    """The database cannot be used (newer schema, unreadable file, unreachable server)."""


class Conflict(StoreError):
    """A write would break a uniqueness rule (name taken, address taken)."""


class StoreFailed(StoreError):
    """The database failed while the server ran: the file is corrupt, unreadable, read-only or
    gone, the disk reports I/O errors, or PostgreSQL reports corrupt data or a schema that is no
    longer ours. Nothing more can be acknowledged, so the server stops and says why (``serve``);
    a full disk, a busy lock or a dropped connection is not this: that write fails alone."""


class LeaseLost(StoreError):
    """This process does not (or no longer) hold the database's active lease (PostgreSQL with
    standbys): its writes are refused, by PostgreSQL itself once the lease has passed to
    another process. The server steps down to standby."""


class KeyMismatch(StoreError):
    """This server's Noise key is not the one the database's tailnet is served with."""
