"""Webhooks: each event a webhook subscribes to is POSTed to its URL, signed (signature.py).

Delivery runs in the dispatcher's own supervised task, never in the path of the change:
``on_event`` (a hub listener) only queues. Per webhook:

- a bounded queue (MAX_QUEUED events; more are dropped, counted and logged);
- *lanes*: a node's events go in that node's lane, the rest in one lane of their own; a lane
  delivers one event at a time, in order, so a node's later event waits for its earlier one
  (node.offline never overtakes node.online), while other lanes go on (PARALLEL at a time);
- each attempt has a deadline (TIMEOUT); 5xx, 408, 429, timeouts and connection errors are
  retried after a backoff that doubles from BACKOFF_BASE up to BACKOFF_MAX, with jitter (half
  to all of it; a Retry-After is honoured up to BACKOFF_MAX), up to MAX_ATTEMPTS; any other
  answer but 2xx fails the delivery at once, as does a redirect (not followed);
- a delivery log in the database (status, attempts, last answer or error), written in batches
  every LOG_FLUSH seconds, each webhook's newest KEEP_LOG kept.

Queued events live in memory: a restart loses what was not yet delivered (its log rows say so).
"""

from __future__ import annotations

import json
import logging
import random
import secrets
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Awaitable, Callable

import trio

from .. import __version__, meters
from ..config.model import WebhookSettings
from ..errors import Forbidden, NotFound
from ..logthrottle import LogThrottle
from ..outbound import FetchError, Fetched, fetch_async
from ..storage import Store
from ..storage.store import StoreError
from ..storage.webhooks import (
    DeliveryRecord, WebhookRecord, abandon_unfinished, delete_webhook, insert_webhook, list_deliveries,
    list_webhooks, prune_deliveries, save_deliveries,
)
from .hub import Event
from .signature import HEADER, sign
from .types import ALL

log = logging.getLogger(__name__)
_limited = LogThrottle(log)

MAX_QUEUED = 1000
PARALLEL = 4
TIMEOUT = 10.0
MAX_ANSWER = 64 * 1024  # a receiver's answer is read no further
BACKOFF_BASE = 1.0
BACKOFF_MAX = 300.0
MAX_ATTEMPTS = 8  # about four minutes of retries, then failed
LOG_FLUSH = 1.0
KEEP_LOG = 1000
TENANT_LANE = -1  # the lane of events about no node

THREADS = 8  # deliveries in flight at once, all webhooks together
Sender = Callable[[str, bytes, dict[str, str]], Awaitable[Fetched]]
# Slow receivers hold threads for up to TIMEOUT each: they get their own few, never trio's shared
# pool that the policy compiler and the store's neighbours also draw from.
_threads = trio.CapacityLimiter(THREADS)


async def post(url: str, body: bytes, headers: dict[str, str]) -> Fetched:
    return await fetch_async(url, method="POST", data=body, headers=headers, timeout=TIMEOUT, limit=MAX_ANSWER,
                             follow_redirects=False, limiter=_threads)


@dataclass(frozen=True)
class Webhook:
    id: str  # "5" (added through the API) or "config-0" (config.yaml's first)
    url: str
    secret: str
    events: tuple[str, ...]
    source: str  # "api" or "config"
    created_at: datetime | None = None

    def wants(self, type_: str) -> bool:
        return ALL in self.events or type_ in self.events


class _Queue:
    """One webhook's pending events, by lane."""

    def __init__(self) -> None:
        self.lanes: dict[int, deque[Event]] = {}
        self.running: set[int] = set()  # lanes with a delivering task
        self.size = 0
        self.limiter = trio.CapacityLimiter(PARALLEL)


def new_secret() -> str:
    return "whsec_" + secrets.token_hex(24)


class Webhooks:
    def __init__(self, store: Store, clock: Callable[[], datetime], configured: tuple[WebhookSettings, ...] = (),
                 sender: Sender = post, backoff_base: float = BACKOFF_BASE) -> None:
        self.store = store
        self.clock = clock
        self.sender = sender
        self.backoff_base = backoff_base
        self.hooks: dict[str, Webhook] = {
            f"config-{i}": Webhook(f"config-{i}", w.url, w.secret, w.events, "config")
            for i, w in enumerate(configured)
        }
        self._queues: dict[str, _Queue] = {}
        self._log: dict[tuple[str, str], DeliveryRecord] = {}  # not yet written
        self._nursery: trio.Nursery | None = None
        self._log_wake = trio.Event()

    # --- the hooks ---------------------------------------------------------------------

    async def load(self) -> None:
        for rec in await self.store.run_sync(list_webhooks):
            self.hooks[str(rec.id)] = _of(rec)
        left = await self.store.run_sync(lambda c: abandon_unfinished(c, self.clock()))
        if left:
            log.warning("webhooks: %d deliveries were still pending when the server last stopped", left)

    def listed(self) -> list[Webhook]:
        return sorted(self.hooks.values(), key=lambda h: (h.source != "config", int(h.id.rpartition("-")[2])))

    def get(self, hook_id: str) -> Webhook:
        try:
            return self.hooks[hook_id]
        except KeyError:
            raise NotFound(f"webhook {hook_id!r} not found") from None

    async def create(self, url: str, events: tuple[str, ...], secret: str | None) -> tuple[Webhook, str]:
        secret = secret or new_secret()
        rec = await self.store.run_sync(lambda c: insert_webhook(c, url, secret, events, self.clock()))
        hook = self.hooks[str(rec.id)] = _of(rec)
        return hook, secret

    async def delete(self, hook_id: str) -> Webhook:
        hook = self.get(hook_id)
        if hook.source == "config":
            raise Forbidden("this webhook is in config.yaml's webhooks: remove it there")
        await self.store.run_sync(lambda c: delete_webhook(c, int(hook_id)))
        del self.hooks[hook_id]
        self._queues.pop(hook_id, None)
        self._log = {k: v for k, v in self._log.items() if k[0] != hook_id}
        return hook

    async def deliveries(self, hook_id: str, limit: int) -> list[DeliveryRecord]:
        self.get(hook_id)
        await self.flush_log()
        return await self.store.run_sync(lambda c: list_deliveries(c, hook_id, limit))

    # --- queueing (never blocks: called by the hub) -------------------------------------

    def on_event(self, e: Event) -> None:
        for hook in list(self.hooks.values()):
            if not hook.wants(e.type):
                continue
            q = self._queues.setdefault(hook.id, _Queue())
            if q.size >= MAX_QUEUED:
                meters.webhook_deliveries.inc("dropped")
                _limited.warning(f"webhook-full-{hook.id}", "webhook %s: %d events wait; %s dropped",
                                 hook.id, q.size, e.type)
                continue
            lane = e.node_id if e.node_id is not None else TENANT_LANE
            q.lanes.setdefault(lane, deque()).append(e)
            q.size += 1
            self._note(hook, e, "pending", 0, None, "")
            self._start_lane(hook.id, q, lane)

    def _start_lane(self, hook_id: str, q: _Queue, lane: int) -> None:
        if self._nursery is not None and lane not in q.running:
            q.running.add(lane)
            self._nursery.start_soon(self._drain, hook_id, q, lane)

    # --- delivering ---------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Deliver until cancelled; the delivery log is written every LOG_FLUSH."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for hook_id, q in self._queues.items():  # queued before the dispatcher (re)started
                q.running.clear()
                for lane in list(q.lanes):
                    self._start_lane(hook_id, q, lane)
            task_status.started()
            try:
                await self._write_log_forever()
            finally:
                self._nursery = None

    async def _write_log_forever(self) -> None:
        next_prune = 0.0
        while True:
            await self._log_wake.wait()
            await trio.sleep(LOG_FLUSH)
            try:
                await self.flush_log()
                if trio.current_time() >= next_prune:
                    next_prune = trio.current_time() + 3600
                    await self.store.run_sync(lambda c: prune_deliveries(c, KEEP_LOG))
            except StoreError as e:
                _limited.log(logging.ERROR, "webhook-log", "webhook delivery log not written: %s", e)

    async def flush_log(self) -> None:
        self._log_wake = trio.Event()
        rows, self._log = list(self._log.values()), {}
        if rows:
            try:
                await self.store.run_sync(lambda c: save_deliveries(c, rows))
            except BaseException:
                for r in rows:  # newer notes of the same delivery win
                    self._log.setdefault((r.webhook, r.event_id), r)
                raise

    def _note(self, hook: Webhook, e: Event, status: str, attempts: int, answer: int | None, error: str) -> None:
        key = (hook.id, e.id)
        now = self.clock()
        old = self._log.get(key)
        self._log[key] = DeliveryRecord(hook.id, e.id, e.type, e.node_id, status, attempts, answer, error[:500],
                                        old.created_at if old else now, now)
        self._log_wake.set()

    async def _drain(self, hook_id: str, q: _Queue, lane: int) -> None:
        """Deliver lane ``lane``'s events one after the other, each to its end."""
        try:
            while self.hooks.get(hook_id) is not None and q.lanes.get(lane):
                e = q.lanes[lane][0]
                async with q.limiter:
                    await self._deliver(self.hooks.get(hook_id), e)
                q.lanes[lane].popleft()
                q.size -= 1
                if not q.lanes[lane]:
                    del q.lanes[lane]
        finally:
            q.running.discard(lane)

    async def _deliver(self, hook: Webhook | None, e: Event) -> None:
        body = json.dumps(e.json(), separators=(",", ":")).encode()
        attempt = 0
        while hook is not None:
            attempt += 1
            headers = {
                "Content-Type": "application/json", "User-Agent": f"trioscale-webhooks/{__version__}",
                "X-Trioscale-Event": e.type, "X-Trioscale-Delivery": e.id,
                HEADER: sign(hook.secret, int(time.time()), body),
            }
            answer, error, retry_after = None, "", None
            try:
                got = await self.sender(hook.url, body, headers)
                answer = got.status
                retry_after = got.headers.get("retry-after")
                if 200 <= got.status < 300:
                    meters.webhook_deliveries.inc("delivered")
                    self._note(hook, e, "delivered", attempt, answer, "")
                    return
                error = f"HTTP {got.status}"
                again = got.status >= 500 or got.status in (408, 429)
            except FetchError as ex:
                error, again = str(ex), True
            if not again or attempt >= MAX_ATTEMPTS:
                meters.webhook_deliveries.inc("failed")
                self._note(hook, e, "failed", attempt, answer, error)
                _limited.warning(f"webhook-failed-{hook.id}", "webhook %s: %s %s not delivered after %d attempts: %s",
                                 hook.id, e.type, e.id, attempt, error)
                return
            meters.webhook_deliveries.inc("retry")
            self._note(hook, e, "retrying", attempt, answer, error)
            await trio.sleep(self.backoff(attempt, retry_after))
            hook = self.hooks.get(hook.id)  # deleted meanwhile: stop

    def backoff(self, attempt: int, retry_after: str | None = None) -> float:
        delay = min(self.backoff_base * 2 ** (attempt - 1), BACKOFF_MAX)
        delay *= 0.5 + random.random() / 2
        if retry_after and retry_after.strip().isdigit():
            delay = max(delay, min(float(retry_after), BACKOFF_MAX))
        return delay


def _of(rec: WebhookRecord) -> Webhook:
    return Webhook(str(rec.id), rec.url, rec.secret, rec.events, "api", rec.created_at)
