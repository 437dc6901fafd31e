"""The audit log's writer and reader.

A change is recorded after it is committed, into a bounded buffer in memory; a supervised task
writes the buffer in one transaction a moment later (``BATCH_DELAY``), and at shutdown. So an
audit write never makes a change fail or wait: a change costs an append, and a burst of changes
costs one transaction. What that gives up: a crash loses at most the last ``BATCH_DELAY`` of
entries, and a store too slow to keep up for ``MAX_PENDING`` entries loses the newest (counted
in ``dropped`` and logged), never the change itself. A read flushes first, so a client that
changed something and then lists the log sees its change.

Entries older than ``audit.retention_days`` are deleted every ``PRUNE_INTERVAL``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from datetime import datetime, timedelta
from typing import AsyncIterator, Callable

import trio

from ..logthrottle import LogThrottle
from ..storage import Store
from ..storage.audit import AuditEntry, AuditFilter, insert_entries, prune_entries, select_entries
from ..storage.store import StoreError

log = logging.getLogger(__name__)
_limited = LogThrottle(log)

BATCH_DELAY = 0.25  # seconds an entry may wait in memory (what a crash can lose)
MAX_PENDING = 10_000  # entries held while the store is slow; more are dropped, counted
PRUNE_INTERVAL = 3600.0
EXPORT_PAGE = 1000


class AuditLog:
    def __init__(self, store: Store, clock: Callable[[], datetime], retention: timedelta = timedelta(days=90)) -> None:
        self.store = store
        self.clock = clock
        self.retention = retention
        self._pending: deque[AuditEntry] = deque()
        self._wake = trio.Event()
        self._write_lock = trio.Lock()  # entries reach the table in the order they were made
        self.written = 0
        self.dropped = 0

    def add(self, entry: AuditEntry) -> None:
        """Record ``entry``; never waits, never raises."""
        if len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            _limited.log(logging.ERROR, "audit-dropped", "audit log: %d entries wait for the database; "
                         "entry dropped (%s by %s), %d dropped so far", len(self._pending), entry.operation,
                         entry.actor_kind, self.dropped)
            return
        self._pending.append(entry)
        self._wake.set()

    async def flush(self) -> int:
        """Write what is pending, in one transaction; on a store error it stays pending."""
        async with self._write_lock:
            batch = list(self._pending)
            if not batch:
                return 0
            await self.store.run_sync(lambda c: insert_entries(c, batch))
            for _ in batch:
                self._pending.popleft()
            self.written += len(batch)
            return len(batch)

    async def prune(self) -> int:
        cut = self.clock() - self.retention
        removed = await self.store.run_sync(lambda c: prune_entries(c, cut))
        if removed:
            log.info("audit log: %d entries older than %d days removed", removed, self.retention.days)
        return removed

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Write batches until cancelled (the caller flushes once more at shutdown)."""
        task_status.started()
        next_prune = trio.current_time()
        while True:
            with trio.move_on_at(next_prune):
                await self._wake.wait()
                await trio.sleep(BATCH_DELAY)
            self._wake = trio.Event()
            try:
                await self.flush()
                if trio.current_time() >= next_prune:
                    next_prune = trio.current_time() + PRUNE_INTERVAL
                    await self.prune()
            except StoreError as e:
                if self._pending:
                    self._wake.set()
                _limited.log(logging.ERROR, "audit-write", "audit log not written yet (%d waiting): %s",
                             len(self._pending), e)
                await trio.sleep(1.0)

    async def query(self, f: AuditFilter) -> list[AuditEntry]:
        await self.flush()
        return await self.store.run_sync(lambda c: select_entries(c, f))

    async def export(self, f: AuditFilter) -> AsyncIterator[AuditEntry]:
        """Every entry ``f`` selects (its limit ignored), newest first, a page at a time."""
        await self.flush()
        cursor = f.before_id
        while True:
            page_filter = dataclasses.replace(f, before_id=cursor, limit=EXPORT_PAGE)
            page = await self.store.run_sync(lambda c: select_entries(c, page_filter))
            for e in page:
                yield e
            if len(page) < EXPORT_PAGE:
                return
            cursor = page[-1].id
