"""Webhook delivery against a real HTTP receiver on 127.0.0.1 (a thread of the test) and a real
SQLite store: signatures verify, a 500 is retried with backoff, a node's events arrive in order
even when an earlier one must be retried, other nodes' events are not held up, and the delivery
log says what happened."""

from __future__ import annotations

import json
import time

import trio

from appliance.events.hub import EventHub
from appliance.events.signature import verify
from appliance.events.webhooks import MAX_ATTEMPTS, Webhooks
from appliance.config.model import WebhookSettings
from appliance.storage import Store
from appliance.tailnet.model import utcnow
from tests.events.receiver import Receiver

SECRET = "s3cret-for-the-tests-0123456789"


async def wait_for(cond, timeout=15.0):
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.02)


async def test_signed_retried_and_in_order_per_node(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    hub = EventHub()
    with Receiver(fail_first={"node.created": 2}) as rx:
        hooks = Webhooks(store, utcnow, (WebhookSettings(rx.url, SECRET, ("node.created", "node.online")),),
                         backoff_base=0.05)
        await hooks.load()
        hub.listeners.append(hooks.on_event)
        async with trio.open_nursery() as nursery:
            await nursery.start(hooks.run)
            created = hub.publish("node.created", {"node": {"id": "1"}}, node_id=1)
            online = hub.publish("node.online", {"node": {"id": "1"}}, node_id=1)
            other = hub.publish("node.online", {"node": {"id": "2"}}, node_id=2)
            hub.publish("user.created", {"user": {"id": "9"}})  # not subscribed
            await wait_for(lambda: len(rx.delivered()) == 3)
            nursery.cancel_scope.cancel()
    got = [e["id"] for e in rx.delivered()]
    # Node 1's online waited for its created (retried twice); node 2's did not wait.
    assert got.index(created.id) < got.index(online.id)
    assert got[0] == other.id
    assert [r["status"] for r in rx.requests if json.loads(r["body"])["id"] == created.id] == [500, 500, 200]
    for r in rx.requests:
        h = r["headers"]
        assert verify(SECRET, h["x-trioscale-signature"], r["body"].encode(), int(time.time()))
        assert not verify("another-secret-000000", h["x-trioscale-signature"], r["body"].encode(), int(time.time()))
        doc = json.loads(r["body"])
        assert h["x-trioscale-event"] == doc["type"] and h["x-trioscale-delivery"] == doc["id"]
        assert set(doc) == {"id", "type", "time", "data"} and doc["time"].endswith("Z")
    log = {d.event_id: d for d in await hooks.deliveries("config-0", 10)}
    assert log[created.id].status == "delivered" and log[created.id].attempts == 3
    assert log[created.id].response_status == 200
    assert log[other.id].attempts == 1
    store.close()


async def test_a_receiver_that_keeps_failing_is_given_up_on(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    hub = EventHub()
    with Receiver(fail_first={"node.deleted": 100}) as rx:
        hooks = Webhooks(store, utcnow, (WebhookSettings(rx.url, SECRET, ("*",)),), backoff_base=0.01)
        await hooks.load()
        hub.listeners.append(hooks.on_event)
        async with trio.open_nursery() as nursery:
            await nursery.start(hooks.run)
            e = hub.publish("node.deleted", {"node": {"id": "3"}}, node_id=3)
            await wait_for(lambda: len(rx.requests) == MAX_ATTEMPTS)
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
    assert len(rx.requests) == MAX_ATTEMPTS  # and no more
    (d,) = await hooks.deliveries("config-0", 10)
    assert (d.event_id, d.status, d.attempts, d.last_error) == (e.id, "failed", MAX_ATTEMPTS, "HTTP 500")
    store.close()


async def test_backoff_bounds(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    hooks = Webhooks(store, utcnow)
    # Exponential, jittered (half to all of it), capped; Retry-After honoured up to the cap.
    for attempt in range(1, 12):
        d = hooks.backoff(attempt)
        assert min(2 ** (attempt - 1), 300) / 2 <= d <= min(2 ** (attempt - 1), 300)
    assert hooks.backoff(1, "120") == 120
    assert hooks.backoff(1, "99999") == 300
    store.close()
