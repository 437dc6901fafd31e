"""The audit log's, the webhooks' and the samples' SQL on both engines (SQLite and a real
PostgreSQL): written, read back with filters, upserted, pruned, and carried by a snapshot."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from appliance.audit.log import AuditLog
from appliance.stats.samples import SampleSources, Sampler
from appliance.storage.audit import AuditEntry, AuditFilter
from appliance.storage.webhooks import (
    DeliveryRecord, abandon_unfinished, delete_webhook, insert_webhook, list_deliveries, list_webhooks,
    prune_deliveries, save_deliveries,
)
from tests.stores import new_store, open_store_again, pg_database, store_engine  # noqa: F401

T0 = datetime(2030, 1, 1, 10, 0, 1, tzinfo=timezone.utc)


async def test_audit_rows(new_store):
    log = AuditLog(new_store, lambda: T0, timedelta(days=90))
    for i, (kind, op, at) in enumerate([("cli", "createUser", T0 - timedelta(days=100)), ("apikey", "renameUser", T0),
                                        ("server", "deleteNode", T0 + timedelta(seconds=1))]):
        log.add(AuditEntry(0, at, kind, str(i), "", "10.0.0.1", op, "user", "7", "alice", 3 if kind == "server" else None,
                           7, {"name": "a"} if i else None, {"name": "b", "n": [1, {"x": None}]}, {"r": i}))
    await log.flush()
    got = await log.query(AuditFilter())
    assert [e.operation for e in got] == ["deleteNode", "renameUser", "createUser"]
    assert got[0].at == T0 + timedelta(seconds=1) and got[0].after == {"name": "b", "n": [1, {"x": None}]}
    assert [e.operation for e in await log.query(AuditFilter(actor_kind="apikey", actor_id="1"))] == ["renameUser"]
    assert [e.operation for e in await log.query(AuditFilter(node_id=3))] == ["deleteNode"]
    assert [e.operation for e in await log.query(AuditFilter(since=T0, until=T0 + timedelta(seconds=1)))] == [
        "renameUser"]
    assert [e.operation for e in await log.query(AuditFilter(before_id=got[0].id, limit=1))] == ["renameUser"]
    assert await log.prune() == 1


async def test_webhook_rows_and_snapshot(new_store):
    s = new_store
    hook = await s.run_sync(lambda c: insert_webhook(c, "https://h.example/x", "k" * 20, ("node.created",), T0))
    assert (await s.run_sync(list_webhooks)) == [hook] and hook.created_at == T0.replace(microsecond=0)
    rows = [DeliveryRecord(str(hook.id), f"e-{i}", "node.created", i, "pending", 0, None, "", T0, T0) for i in range(5)]
    await s.run_sync(lambda c: save_deliveries(c, rows))
    rows[0].status, rows[0].attempts, rows[0].response_status = "delivered", 2, 200
    await s.run_sync(lambda c: save_deliveries(c, rows[:1]))  # an update of the same delivery
    got = await s.run_sync(lambda c: list_deliveries(c, str(hook.id), 10))
    assert [d.event_id for d in got] == [f"e-{i}" for i in reversed(range(5))]
    assert (got[-1].status, got[-1].attempts, got[-1].response_status) == ("delivered", 2, 200)
    assert await s.run_sync(lambda c: abandon_unfinished(c, T0)) == 4
    assert await s.run_sync(lambda c: prune_deliveries(c, 2)) == 3
    snap = await s.export_snapshot()
    assert snap.webhooks == (hook,)
    await s.run_sync(lambda c: delete_webhook(c, hook.id))
    assert await s.run_sync(list_webhooks) == [] and await s.run_sync(lambda c: list_deliveries(c, str(hook.id), 9)) == []


async def test_sample_rows(new_store):
    now = [T0]
    counts = {"relayed": 0}
    sampler = Sampler(new_store, lambda: now[0], SampleSources(lambda: 2, lambda: 5, lambda: 3,
                                                                lambda: counts["relayed"], lambda: 0))
    await sampler.take(ended=False)
    counts["relayed"] = 10
    now[0] += timedelta(minutes=5)
    await sampler.take()  # replaces the first interval's sample
    counts["relayed"] = 25
    now[0] += timedelta(minutes=5)
    await sampler.take()
    step, day = await sampler.series("day")
    assert [(p.at.minute, p.relayed_bytes) for p in day] == [(0, 10), (5, 15)]
    (hour,) = (await sampler.series("week"))[1]
    assert (hour.nodes_online, hour.nodes_total, hour.relayed_bytes) == (2, 5, 25)
