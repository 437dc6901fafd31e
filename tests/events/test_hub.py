"""The event hub and the server-sent-events encoding, without sockets: IDs, the ring a stream
resumes from, a slow subscriber dropped (not waited for), and the bytes of the stream."""

from __future__ import annotations

import json

import pytest
import trio

from appliance.events import hub as hubmod
from appliance.events import sse
from appliance.events.hub import EventHub, TooManySubscribers


def test_ids_and_resume_from_the_ring(monkeypatch):
    monkeypatch.setattr(hubmod, "RING_SIZE", 4)
    h = EventHub()
    h.ring = type(h.ring)(maxlen=4)
    events = [h.publish("node.online", {"n": i}, node_id=i) for i in range(6)]
    assert [e.id for e in events] == [f"{h.boot}-{i}" for i in range(1, 7)]
    assert [e.seq for e in h.since(events[3].id)] == [5, 6]
    assert h.since(events[-1].id) == []
    assert h.since(events[1].id) == [e for e in h.ring]  # the ring holds 3..6: seq 2 was its last
    assert h.since(events[0].id) is None  # seq 1: events 2 was lost
    assert h.since(f"{h.boot + 1}-3") is None  # another process's
    assert h.since("garbage") is None and h.since(f"{h.boot}-99") is None


async def test_a_slow_subscriber_is_dropped_and_the_others_are_not(monkeypatch):
    monkeypatch.setattr(hubmod, "SUBSCRIBER_QUEUE", 2)
    h = EventHub()
    slow, fast = h.subscribe(), h.subscribe(frozenset({"node.offline"}))
    for i in range(3):
        h.publish("node.online", {}, node_id=i)  # the third overflows slow's queue
    h.publish("node.offline", {}, node_id=1)
    assert slow.dropped and h.dropped_subscribers == 1 and h.subscribers == 1
    got = [await slow.receive.receive(), await slow.receive.receive()]  # what it had, then the end
    assert [e.seq for e in got] == [1, 2]
    with pytest.raises(trio.EndOfChannel):
        await slow.receive.receive()
    assert (await fast.receive.receive()).type == "node.offline"  # filtered, still there


def test_subscribers_are_bounded(monkeypatch):
    monkeypatch.setattr(hubmod, "MAX_SUBSCRIBERS", 2)
    h = EventHub()
    h.subscribe(), h.subscribe()
    with pytest.raises(TooManySubscribers):
        h.subscribe()


def test_a_listener_failing_does_not_stop_publishing():
    h = EventHub()
    h.listeners.append(lambda e: 1 / 0)
    seen = []
    h.listeners.append(seen.append)
    h.publish("user.created", {"user": {"id": "1"}})
    assert len(seen) == 1


def test_sse_bytes():
    h = EventHub()
    e = h.publish("node.online", {"node": {"id": "7", "givenName": "a\nb"}}, node_id=7)
    data = sse.encode(e)
    lines = data.decode().split("\n")
    assert lines[0] == f"id: {e.id}" and lines[1] == "event: node.online" and data.endswith(b"\n\n")
    assert lines[2].startswith("data: ") and len(lines) == 5  # one data line: JSON escapes newlines
    doc = json.loads(lines[2][6:])
    assert doc == {"id": e.id, "type": "node.online", "time": doc["time"], "data": e.data}
    assert doc["time"].endswith("Z")


async def test_stream_resumes_then_follows_then_heartbeats():
    h = EventHub()
    first = h.publish("node.online", {}, node_id=1)
    missed = h.publish("node.offline", {}, node_id=1)
    chunks = sse.stream(h, None, first.id, heartbeat=0.05)
    assert await chunks.__anext__() == b"retry: 2000\n\n"
    assert await chunks.__anext__() == sse.encode(missed)
    nxt = h.publish("user.created", {})
    assert await chunks.__anext__() == sse.encode(nxt)
    assert await chunks.__anext__() == b": keepalive\n\n"
    await chunks.aclose()
    assert h.subscribers == 0
    lost = sse.stream(h, None, "1-1")
    await lost.__anext__()
    assert b'"kind":"all"' in await lost.__anext__()
    await lost.aclose()
