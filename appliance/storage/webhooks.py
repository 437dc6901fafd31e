"""Rows of webhooks (those added through the API; config.yaml's are not stored) and of their
delivery log. The secret is kept as given: it keys the HMAC of every delivery, so it cannot be
hashed; the database file is 0600, and the API never shows it after creation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .audit import stamp, unstamp
from .records import WebhookRecord


@dataclass(slots=True)
class DeliveryRecord:
    webhook: str
    event_id: str
    event_type: str
    node_id: int | None
    status: str  # pending, retrying, delivered, failed
    attempts: int
    response_status: int | None
    last_error: str
    created_at: datetime
    updated_at: datetime


def _webhook(r: Any) -> WebhookRecord:
    return WebhookRecord(r["id"], r["url"], r["secret"], tuple(json.loads(r["events"])), unstamp(r["created_at"]))


def list_webhooks(c: Any) -> list[WebhookRecord]:
    return [_webhook(r) for r in c.execute("SELECT * FROM webhooks ORDER BY id")]


def insert_webhook(c: Any, url: str, secret: str, events: tuple[str, ...], now: datetime) -> WebhookRecord:
    return _webhook(c.execute("INSERT INTO webhooks (url, secret, events, created_at) VALUES (?, ?, ?, ?) RETURNING *",
                              (url, secret, json.dumps(list(events)), stamp(now))).fetchone())


def delete_webhook(c: Any, webhook_id: int) -> None:
    c.execute("DELETE FROM webhooks WHERE id = ?", (webhook_id,))
    c.execute("DELETE FROM webhook_deliveries WHERE webhook = ?", (str(webhook_id),))


def save_deliveries(c: Any, rows: list[DeliveryRecord]) -> None:
    c.executemany(
        "INSERT INTO webhook_deliveries (webhook, event_id, event_type, node_id, status, attempts, response_status,"
        " last_error, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (webhook, event_id) DO UPDATE SET status = excluded.status, attempts = excluded.attempts,"
        " response_status = excluded.response_status, last_error = excluded.last_error,"
        " updated_at = excluded.updated_at",
        [(d.webhook, d.event_id, d.event_type, d.node_id, d.status, d.attempts, d.response_status, d.last_error,
          stamp(d.created_at), stamp(d.updated_at)) for d in rows],
    )


def list_deliveries(c: Any, webhook: str, limit: int) -> list[DeliveryRecord]:
    rows = c.execute("SELECT * FROM webhook_deliveries WHERE webhook = ? ORDER BY id DESC LIMIT ?", (webhook, limit))
    return [DeliveryRecord(r["webhook"], r["event_id"], r["event_type"], r["node_id"], r["status"], r["attempts"],
                           r["response_status"], r["last_error"], unstamp(r["created_at"]),
                           unstamp(r["updated_at"])) for r in rows]


def abandon_unfinished(c: Any, now: datetime) -> int:
    """Deliveries a stopped process left pending: failed (the queue lived in its memory)."""
    return c.execute("UPDATE webhook_deliveries SET status = 'failed', last_error = ?, updated_at = ?"
                     " WHERE status IN ('pending', 'retrying')",
                     ("the server stopped before it was delivered", stamp(now))).rowcount


def prune_deliveries(c: Any, keep: int) -> int:
    """Keep each webhook's newest ``keep`` deliveries."""
    return c.execute(
        "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER"
        " (PARTITION BY webhook ORDER BY id DESC) AS n FROM webhook_deliveries) AS ranked WHERE n > ?)",
        (keep,)).rowcount
