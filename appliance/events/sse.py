"""Server-sent events (the WHATWG ``text/event-stream`` format) from the event hub.

Each event is ``id``, ``event`` (its type) and one ``data`` line of JSON (the event as webhooks
get it). A comment line every HEARTBEAT keeps proxies from closing an idle stream and finds a
client that is gone. A client that reconnects with ``Last-Event-ID`` gets what it missed from
the hub's ring; when the ring cannot say (another process's ID, too old), it gets a ``changed``
notice of kind ``all`` instead: refetch everything.
"""

from __future__ import annotations

import json
from typing import AsyncIterator

import trio

from .hub import CHANGED, Event, EventHub, TooManySubscribers

HEARTBEAT = 15.0
RETRY_MS = 2000  # how soon an EventSource reconnects after the stream ends


def encode(e: Event) -> bytes:
    """One event's lines; ``data`` is one line (JSON has no raw newlines)."""
    data = json.dumps(e.json(), separators=(",", ":"))
    return f"id: {e.id}\nevent: {e.type}\ndata: {data}\n\n".encode()


def _resync(hub: EventHub) -> bytes:
    doc = {"type": CHANGED, "data": {"kind": "all", "id": "", "operation": ""}}
    return f"event: {CHANGED}\ndata: {json.dumps(doc, separators=(',', ':'))}\n\n".encode()


async def stream(hub: EventHub, types: frozenset[str] | None, last_id: str | None,
                 heartbeat: float = HEARTBEAT) -> AsyncIterator[bytes]:
    """The stream's chunks until the subscriber is dropped (it fell too far behind) or the
    consumer stops iterating. Subscribes when first iterated (the route checked there was room;
    a stream that lost the race for the last place ends at once, and its client retries)."""
    try:
        sub = hub.subscribe(types)
    except TooManySubscribers:
        return
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        sent = 0
        if last_id:
            missed = hub.since(last_id)
            if missed is None:
                yield _resync(hub)
            else:
                for e in missed:
                    if sub.wants(e):
                        sent = e.seq
                        yield encode(e)
        while True:
            with trio.move_on_after(heartbeat) as idle:
                try:
                    e = await sub.receive.receive()
                except trio.EndOfChannel:
                    return  # dropped: the client reconnects and resumes from the ring
            if idle.cancelled_caught:
                yield b": keepalive\n\n"
            elif e.seq > sent:  # the ring's replay may have sent it already
                sent = e.seq
                yield encode(e)
    finally:
        sub.close()
