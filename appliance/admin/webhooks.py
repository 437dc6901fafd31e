"""/api/v1/webhook: webhooks (config.yaml's are listed, read only) and their delivery logs."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlsplit

from ..errors import Invalid
from ..events.types import ALL, EVENT_TYPES
from ..storage.webhooks import DeliveryRecord
from ..tailnet.journal import Document
from .backend import Backend
from .router import Call, Router
from .schema import ID, Enum, Int, List, Nullable, Str, Time, api_type, fld
from .types import Empty

HOOK_ID = Str(min_len=1, max_len=32, pattern=r"^([0-9]{1,19}|config-[0-9]{1,4})$", example="1",
              doc="an ID from the list: digits (added through the API) or config-N (config.yaml's)")


def _check_url(text: str) -> None:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise Invalid("not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in text):
        raise Invalid("an http:// or https:// URL is required")


URL = Str(min_len=1, max_len=2048, check=_check_url, pattern=r"^https?://[^\s]+$",
          example="https://hooks.example.com/trioscale")
EVENT = Enum(ALL, *EVENT_TYPES)
SECRET = Str(min_len=16, max_len=256, pattern=r"^[\x21-\x7e]{16,256}$",
             doc="the HMAC key (16-256 printable ASCII characters); made for you when left out")


@api_type
class WebhookInfo:
    """A webhook. Its secret is never shown after creation."""

    id: str = fld(Str(max_len=32))
    url: str = fld(Str(max_len=2048))
    events: tuple = fld(List(EVENT, max_items=16), doc="event types, or '*' for all")
    source: str = fld(Enum("api", "config"), doc="config: from config.yaml's webhooks (change it there)")
    created_at: datetime | None = fld(Nullable(Time()))


@api_type
class CreateWebhookBody:
    url: str = fld(URL)
    events: tuple = fld(List(EVENT, max_items=16), default=(ALL,), doc="event types, or '*' for all (default)")
    secret: str | None = fld(Nullable(SECRET), default=None, secret=True)


@api_type
class CreateWebhookResponse:
    webhook: WebhookInfo = fld(WebhookInfo.spec)
    secret: str = fld(Str(max_len=256), doc="the signing secret: shown this once")


@api_type
class WebhookResponse:
    webhook: WebhookInfo = fld(WebhookInfo.spec)


@api_type
class WebhookList:
    webhooks: tuple = fld(List(WebhookInfo.spec, max_items=1 << 16))


@api_type
class Delivery:
    """One event's delivery to one webhook."""

    event_id: str = fld(Str(max_len=64))
    event_type: str = fld(Str(max_len=64))
    node_id: int | None = fld(Nullable(ID()))
    status: str = fld(Enum("pending", "retrying", "delivered", "failed"))
    attempts: int = fld(Int(minimum=0, maximum=1000))
    response_status: int | None = fld(Nullable(Int(minimum=0, maximum=999)), doc="the last answer's HTTP status")
    last_error: str = fld(Str(max_len=1024), doc="why the last attempt failed, if it did")
    created_at: datetime = fld(Time())
    updated_at: datetime = fld(Time())


@api_type
class DeliveryList:
    deliveries: tuple = fld(List(Delivery.spec, max_items=1000), doc="newest first")


def info_of(h) -> WebhookInfo:
    return WebhookInfo(h.id, h.url, tuple(h.events), h.source, h.created_at)


def delivery_of(d: DeliveryRecord) -> Delivery:
    return Delivery(d.event_id, d.event_type, d.node_id, d.status, d.attempts, d.response_status, d.last_error,
                    d.created_at, d.updated_at)


def routes(r: Router, b: Backend) -> None:
    def doc(h) -> Document:
        return Document("webhook", {"url": h.url, "events": list(h.events)}, h.id, h.url)

    @r.get("/api/v1/webhook", "listWebhooks", "List webhooks", tag="Events", response=WebhookList)
    async def list_webhooks(call: Call) -> WebhookList:
        return WebhookList(tuple(info_of(h) for h in b.webhooks.listed()))

    @r.post("/api/v1/webhook", "createWebhook", "Add a webhook", tag="Events", body=CreateWebhookBody,
            response=CreateWebhookResponse, changes=True,
            description="Events it subscribes to are POSTed to url as JSON (id, type, time, data), signed: "
                        "X-Trioscale-Signature: t=TIMESTAMP,v1=HMAC-SHA256(secret, TIMESTAMP.BODY) in hex. The "
                        "answer holds the secret, the only time it is shown.")
    async def create_webhook(call: Call, body: CreateWebhookBody) -> CreateWebhookResponse:
        events = (ALL,) if ALL in body.events or not body.events else tuple(sorted(set(body.events)))
        hook, secret = await b.webhooks.create(body.url, events, body.secret)
        b.journal.change("createWebhook", None, doc(hook))
        return CreateWebhookResponse(info_of(hook), secret)

    @r.get("/api/v1/webhook/{id}", "getWebhook", "Get a webhook", tag="Events", params={"id": HOOK_ID},
           response=WebhookResponse)
    async def get_webhook(call: Call, id: str) -> WebhookResponse:
        return WebhookResponse(info_of(b.webhooks.get(id)))

    @r.delete("/api/v1/webhook/{id}", "deleteWebhook", "Delete a webhook", tag="Events", params={"id": HOOK_ID},
              response=Empty, errors=(403,), changes=True,
              description="Its queued events are dropped and its delivery log deleted. config.yaml's cannot be "
                          "deleted here (403).")
    async def delete_webhook(call: Call, id: str) -> Empty:
        hook = await b.webhooks.delete(id)
        b.journal.change("deleteWebhook", doc(hook), None)
        return Empty()

    @r.get("/api/v1/webhook/{id}/deliveries", "listWebhookDeliveries", "A webhook's delivery log", tag="Events",
           params={"id": HOOK_ID}, query={"limit": Int(minimum=1, maximum=1000, doc="how many (100)")},
           response=DeliveryList)
    async def list_deliveries(call: Call, id: str, limit: int = 100) -> DeliveryList:
        return DeliveryList(tuple(delivery_of(d) for d in await b.webhooks.deliveries(id, limit)))
