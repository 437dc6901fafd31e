"""/api/v1/events: the live event stream (server-sent events) for the console and other UIs.

Authenticated like every operation (the router's ``authenticate``: a Bearer API key; a browser's
EventSource cannot set headers: the web console reaches it at /admin/api/v1/events with its
session cookie, console/web.py).
"""

from __future__ import annotations

from ..errors import Invalid
from ..events import sse
from ..events.hub import CHANGED, MAX_SUBSCRIBERS
from ..events.types import EVENT_TYPES
from ..http.server import Streamed
from .backend import Backend
from .problem import Unavailable
from .router import Call, Router
from .schema import Str

STREAM_TYPES = (*EVENT_TYPES, CHANGED)
TYPES = Str(max_len=512, pattern=r"^[a-z._,]*$", example="node.online,node.offline",
            doc=f"comma-separated event types to receive (default all): {', '.join(STREAM_TYPES)}")
LAST_ID = Str(max_len=64, doc="resume after this event ID (what the Last-Event-ID header says; for "
              "clients that cannot set it)")


def routes(r: Router, b: Backend) -> None:
    @r.get("/api/v1/events", "streamEvents", "Live events (server-sent events)", tag="Events",
           query={"types": TYPES, "lastEventId": LAST_ID}, errors=(503,), produces="text/event-stream",
           description="A text/event-stream: each event has id, event (its type) and data (JSON: id, type, "
                       "time, data), as webhooks get it; 'changed' notices (data: kind, id, operation) say "
                       "what to refetch, kind 'all' when events were missed. A comment every 15 s keeps it "
                       "open. Reconnect with Last-Event-ID to get what was missed (the last 1024 events).")
    async def stream_events(call: Call, types: str | None = None, last_event_id: str | None = None) -> Streamed:
        wanted = None
        if types:
            wanted = frozenset(t for t in types.split(",") if t)
            unknown = wanted - set(STREAM_TYPES)
            if unknown:
                raise Invalid(f"unknown event types: {', '.join(sorted(unknown))[:200]}")
        if b.events.subscribers >= MAX_SUBSCRIBERS:
            raise Unavailable(f"{MAX_SUBSCRIBERS} event streams are open; retry later",
                              headers=(("retry-after", "5"),))
        last = call.header(b"last-event-id") or last_event_id
        return Streamed(200, [("content-type", "text/event-stream"), ("cache-control", "no-store"),
                              ("x-accel-buffering", "no")], sse.stream(b.events, wanted, last))
