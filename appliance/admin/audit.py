"""/api/v1/audit: the audit log, filtered and paged, and exported as JSON lines."""

from __future__ import annotations

import json
from typing import AsyncIterator

from ..errors import Invalid
from ..http.server import Streamed
from ..storage.audit import AuditEntry, AuditFilter
from .backend import Backend
from .router import Call, Router
from .schema import ID, Enum, Free, Int, List, Nullable, Str, Time, api_type, fld

MAX_PAGE = 1000
ACTOR = Str(max_len=200, pattern=r"^[a-z]+(:.{1,190})?$", example="apikey:3",
            doc="an actor kind (cli, apikey, console, oidc, preauthkey, node, server), or KIND:ID")
OPERATION = Str(min_len=1, max_len=64, pattern=r"^[A-Za-z][A-Za-z0-9]*$", example="renameNode",
                doc="an operation ID (renameNode, deleteNode, registerNode, ...)")
CURSOR = Str(min_len=1, max_len=19, pattern=r"^[0-9]{1,19}$", doc="nextCursor of the previous page")


@api_type
class AuditActor:
    """Who made the change, from where."""

    kind: str = fld(Str(max_len=32), doc="cli, apikey, console, oidc, preauthkey, node or server")
    id: str = fld(Str(max_len=200), doc="the API key's or user's ID; the server task's name")
    name: str = fld(Str(max_len=256), doc="the console user's name, the key's prefix")
    source: str = fld(Str(max_len=256), doc="the peer address; 'local' on the admin socket")


@api_type
class AuditTarget:
    kind: str = fld(Str(max_len=32), doc="node, user, preauthkey, apikey, policy, dns, derp; empty when "
                    "the operation changed nothing the log describes (a login rejected)")
    id: str = fld(Str(max_len=200))
    name: str = fld(Str(max_len=256))


@api_type
class AuditEntryInfo:
    """One change: before and after are the thing in this API's shapes (null: created or deleted)."""

    id: int = fld(ID())
    time: object = fld(Time())
    actor: AuditActor = fld(AuditActor.spec)
    operation: str = fld(Str(max_len=64))
    target: AuditTarget = fld(AuditTarget.spec)
    node_id: int | None = fld(Nullable(ID()), doc="the node concerned, if any")
    user_id: int | None = fld(Nullable(ID()), doc="the user concerned (a node's owner), if any")
    before: object = fld(Nullable(Free()))
    after: object = fld(Nullable(Free()))
    request: object = fld(Nullable(Free()), doc="the API request's body, if any")


@api_type
class AuditList:
    entries: tuple = fld(List(AuditEntryInfo.spec, max_items=MAX_PAGE), doc="newest first")
    next_cursor: str | None = fld(Nullable(Str(max_len=19)), doc="pass as cursor for older entries; "
                                  "null at the end")


def entry_of(e: AuditEntry) -> AuditEntryInfo:
    return AuditEntryInfo(
        id=e.id, time=e.at, actor=AuditActor(e.actor_kind, e.actor_id, e.actor_name, e.source),
        operation=e.operation, target=AuditTarget(e.target_kind, e.target_id, e.target_name),
        node_id=e.node_id, user_id=e.user_id, before=e.before, after=e.after, request=e.request,
    )


KIND = Enum("node", "user", "preauthkey", "apikey", "policy", "dns", "derp", "webhook",
            doc="what was changed (kind=policy: every saved or reloaded policy, with who and when)")
QUERY = {
    "actor": ACTOR, "operation": OPERATION, "kind": KIND,
    "node": ID(doc="entries about this node"),
    "user": Str(min_len=1, max_len=256, doc="entries about this user (ID or name) and its nodes and keys"),
    "since": Time(doc="entries at or after this time"), "until": Time(doc="entries before this time"),
}


def routes(r: Router, b: Backend) -> None:
    def audit_filter(actor, operation, kind, node, user, since, until, limit=100, cursor=None) -> AuditFilter:
        actor_kind, _, actor_id = (actor or "").partition(":")
        user_id = None
        if user is not None:
            user_id = int(user) if user.isdigit() else b.tailnet.find_user(user).id
        if since is not None and until is not None and since >= until:
            raise Invalid("since must be before until")
        return AuditFilter(actor_kind=actor_kind or None, actor_id=actor_id or None, operation=operation,
                           target_kind=kind, node_id=node, user_id=user_id, since=since, until=until,
                           before_id=int(cursor) if cursor else None, limit=limit)

    @r.get("/api/v1/audit", "listAudit", "List audit log entries", tag="Audit", response=AuditList,
           query={**QUERY, "limit": Int(minimum=1, maximum=MAX_PAGE, doc="entries per page (100)"),
                  "cursor": CURSOR},
           errors=(404,),
           description="Every change, newest first: who (actor), what (operation, target), before and "
                       "after, when, from where. Page with cursor=nextCursor.")
    async def list_audit(call: Call, actor=None, operation=None, kind=None, node=None, user=None, since=None,
                         until=None, limit=100, cursor=None) -> AuditList:
        f = audit_filter(actor, operation, kind, node, user, since, until, limit, cursor)
        entries = await b.audit.query(f)
        more = len(entries) == f.limit
        return AuditList(tuple(entry_of(e) for e in entries), str(entries[-1].id) if more and entries else None)

    @r.get("/api/v1/audit/export", "exportAudit", "Export audit log entries as JSON lines", tag="Audit",
           query=QUERY, errors=(404,), produces="application/x-ndjson",
           description="Every entry the filters select, newest first, one AuditEntryInfo JSON object a line "
                       "(application/x-ndjson), streamed.")
    async def export_audit(call: Call, actor=None, operation=None, kind=None, node=None, user=None, since=None,
                           until=None) -> Streamed:
        f = audit_filter(actor, operation, kind, node, user, since, until)

        async def lines() -> AsyncIterator[bytes]:
            batch = []
            async for e in b.audit.export(f):
                batch.append(json.dumps(AuditEntryInfo.spec.dump(entry_of(e)), separators=(",", ":")))
                if len(batch) >= 200:
                    yield ("\n".join(batch) + "\n").encode()
                    batch = []
            if batch:
                yield ("\n".join(batch) + "\n").encode()

        return Streamed(200, [("content-type", "application/x-ndjson")], lines())
