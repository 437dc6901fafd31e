"""The event hub: every event gets an ID and goes to each live subscriber (the SSE streams) and
listener (the webhook dispatcher), and into a bounded ring that a reconnecting stream resumes from.

A subscriber has a bounded queue; one that does not keep up is dropped (its stream ends and its
client reconnects with Last-Event-ID), never waited for: publishing never blocks.

Event IDs are ``BOOT-SEQ``: BOOT is the process's start in milliseconds, SEQ counts from 1. They
are unique across restarts (webhook receivers may deduplicate on them) and ordered within one
process; an ID from another process (or older than the ring) cannot be resumed from, and the
stream says so with a ``changed`` notice of kind ``all``: the client refetches what it shows.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import trio

log = logging.getLogger(__name__)

# Besides the event types (types.py), a notice that something the console shows changed (kind,
# id, operation): refetch it.
CHANGED = "changed"
RING_SIZE = 1024  # events a reconnecting stream can catch up on
SUBSCRIBER_QUEUE = 256  # events a stream may fall behind before it is dropped
MAX_SUBSCRIBERS = 256  # open streams (each holds a connection)


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    seq: int
    type: str
    time: datetime
    data: dict[str, Any]
    node_id: int | None = None  # webhooks deliver a node's events in order

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "time": _stamp(self.time), "data": self.data}


def _stamp(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class TooManySubscribers(Exception):
    pass


class Subscription:
    def __init__(self, hub: "EventHub", types: frozenset[str] | None) -> None:
        self.hub = hub
        self.types = types
        self.send, self.receive = trio.open_memory_channel[Event](SUBSCRIBER_QUEUE)
        self.dropped = False

    def wants(self, e: Event) -> bool:
        return self.types is None or e.type in self.types

    def close(self) -> None:
        self.hub._subscribers.discard(self)
        self.send.close()


class EventHub:
    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self.boot = int(time.time() * 1000)
        self._seq = itertools.count(1)
        self.clock = clock or (lambda: datetime.now(timezone.utc).replace(microsecond=0))
        self.ring: deque[Event] = deque(maxlen=RING_SIZE)
        self._subscribers: set[Subscription] = set()
        self.listeners: list[Callable[[Event], None]] = []
        self.published = 0
        self.dropped_subscribers = 0

    def publish(self, type_: str, data: dict[str, Any], node_id: int | None = None) -> Event:
        """Never blocks, never raises for a subscriber's or listener's sake."""
        seq = next(self._seq)
        e = Event(f"{self.boot}-{seq}", seq, type_, self.clock(), data, node_id)
        self.ring.append(e)
        self.published += 1
        for sub in list(self._subscribers):
            if not sub.wants(e):
                continue
            try:
                sub.send.send_nowait(e)
            except trio.WouldBlock:
                sub.dropped = True
                self.dropped_subscribers += 1
                log.warning("event stream dropped: %d events behind", SUBSCRIBER_QUEUE)
                sub.close()
            except trio.ClosedResourceError:
                self._subscribers.discard(sub)
        for listener in self.listeners:
            try:
                listener(e)
            except Exception:  # noqa: BLE001
                log.exception("event listener failed for %s", e.type)
        return e

    def subscribe(self, types: frozenset[str] | None = None) -> Subscription:
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            raise TooManySubscribers(f"{MAX_SUBSCRIBERS} event streams are open")
        sub = Subscription(self, types)
        self._subscribers.add(sub)
        return sub

    def since(self, last_id: str) -> list[Event] | None:
        """The ring's events after ``last_id``, or None when it cannot say (another process's
        ID, older than the ring, not an ID)."""
        boot, _, seq = last_id.partition("-")
        if not (boot.isdigit() and seq.isdigit()) or int(boot) != self.boot:
            return None
        n = int(seq)
        if n > self.published:
            return None
        if self.ring and n < self.ring[0].seq - 1:
            return None
        return [e for e in self.ring if e.seq > n]

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
