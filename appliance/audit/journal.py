"""The server's Journal: each change the tailnet reports becomes an audit entry (with who, from
where, before and after, in the API's shapes), a ``changed`` notice on the event stream, and the
events it implies (node.created, node.deleted, route.approved, user.created, policy.changed)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..admin.apikeys import masked
from ..admin.shapes import node_of, preauth_of, user_of
from ..admin.schema import Time
from ..admin.types import Node, PreAuthKey, User
from ..events.hub import CHANGED, EventHub
from ..storage.audit import AuditEntry
from ..storage.records import ApiKeyRecord, NodeRecord, PreAuthKeyRecord, UserRecord
from ..tailnet.journal import Document, Journal
from ..tailnet.model import Tailnet
from .actors import Actor, current_operation, who
from .log import AuditLog

log = logging.getLogger(__name__)

# Node fields that move without anyone changing the node (the client reports its OS, version
# and home relay as they change): not part of before/after.
_VOLATILE = ("online", "lastSeen", "discoKey", "os", "clientVersion", "derpRegion")


@dataclass(frozen=True, slots=True)
class Target:
    kind: str
    id: str
    name: str
    node_id: int | None = None
    user_id: int | None = None


def actor_json(a: Actor) -> dict[str, str]:
    return {"kind": a.kind, "id": a.id, "name": a.name, "source": a.source}


class ServerJournal(Journal):
    def __init__(self, tailnet: Tailnet, audit: AuditLog, hub: EventHub) -> None:
        self.tailnet = tailnet
        self.audit = audit
        self.hub = hub

    # --- what things look like -------------------------------------------------------------

    def view(self, thing: Any) -> Any:
        t = self.tailnet
        if thing is None:
            return None
        if isinstance(thing, NodeRecord):
            doc = Node.spec.dump(node_of(t, thing))
            for k in _VOLATILE:
                doc.pop(k, None)
            return doc
        if isinstance(thing, UserRecord):
            return User.spec.dump(user_of(t, thing))
        if isinstance(thing, PreAuthKeyRecord):
            return PreAuthKey.spec.dump(preauth_of(t, thing))
        if isinstance(thing, ApiKeyRecord):
            return {"id": str(thing.id), "prefix": masked(thing.prefix),
                    "createdAt": _time(thing.created_at), "expiration": _time(thing.expiration)}
        if isinstance(thing, Document):
            return thing.value
        raise TypeError(f"cannot describe {type(thing).__name__}")

    @staticmethod
    def target(thing: Any) -> Target:
        if isinstance(thing, NodeRecord):
            return Target("node", str(thing.id), thing.given_name, thing.id, thing.user_id)
        if isinstance(thing, UserRecord):
            return Target("user", str(thing.id), thing.name, None, thing.id)
        if isinstance(thing, PreAuthKeyRecord):
            return Target("preauthkey", str(thing.id), thing.prefix, None, thing.user_id)
        if isinstance(thing, ApiKeyRecord):
            return Target("apikey", str(thing.id), thing.prefix)
        if isinstance(thing, Document):
            return Target(thing.kind, thing.id, thing.name)
        raise TypeError(f"cannot describe {type(thing).__name__}")

    # --- Journal -------------------------------------------------------------------------

    def change(self, operation: str, before: Any, after: Any) -> None:
        try:
            self._change(operation, before, after)
        except Exception:  # noqa: BLE001 - the change is made; its record must not undo it
            log.exception("could not record the change %s", operation)

    def fact(self, operation: str, thing: Any, before: dict[str, Any], after: dict[str, Any]) -> None:
        try:
            self._record(operation, self.target(thing), before, after)
        except Exception:  # noqa: BLE001
            log.exception("could not record %s", operation)

    def _change(self, operation: str, before: Any, after: Any) -> None:
        old, new = self.view(before), self.view(after)
        if old == new and before is not None:
            return  # nothing anyone can see changed (a client's hostinfo only)
        target = self.target(after if after is not None else before)
        actor = self._record(operation, target, old, new)
        by = actor_json(actor)
        if target.kind == "node":
            if before is None:
                self.hub.publish("node.created", {"node": new, "actor": by}, target.node_id)
            elif after is None:
                self.hub.publish("node.deleted", {"node": old, "actor": by}, target.node_id)
            else:
                added = sorted(set(new["approvedRoutes"]) - set(old["approvedRoutes"]))
                if added:
                    self.hub.publish("route.approved", {"node": new, "routes": added, "actor": by}, target.node_id)
        elif target.kind == "user" and before is None:
            self.hub.publish("user.created", {"user": new, "actor": by})
        elif target.kind == "policy":
            self.hub.publish("policy.changed", {"actor": by})

    def _record(self, operation: str, target: Target, old: Any, new: Any) -> Actor:
        actor, api_operation = who()
        scope = current_operation.get()
        if scope is not None:
            scope.touched += 1
        entry = AuditEntry(
            id=0, at=self.tailnet.clock(), actor_kind=actor.kind, actor_id=actor.id, actor_name=actor.name,
            source=actor.source, operation=api_operation or operation, target_kind=target.kind,
            target_id=target.id, target_name=target.name, node_id=target.node_id, user_id=target.user_id,
            # A request that says what ``after`` says (a policy saved) is not kept twice.
            before=old, after=new, request=scope.request if scope is not None and scope.request != new else None,
        )
        self.audit.add(entry)
        self.hub.publish(CHANGED, {"kind": target.kind, "id": target.id, "operation": entry.operation},
                         target.node_id)
        return actor

    def summary(self, n: NodeRecord) -> dict[str, Any]:
        """Who a node is, for the events that are not changes (online, offline, expiry): cheap,
        since a reconnect storm makes thousands of them; the whole node is one GET away."""
        u = self.tailnet.users.get(n.user_id) if n.user_id is not None else None
        return {"id": str(n.id), "givenName": n.given_name, "name": n.hostname,
                "user": {"id": str(u.id), "name": u.name} if u is not None else None,
                "ipAddresses": [a for a in (n.ipv4, n.ipv6) if a], "tags": list(n.tags),
                "expiry": _time(n.expiry)}

    def event(self, type_: str, data: dict[str, Any], node_id: int | None = None) -> None:
        try:
            if node_id is not None and "node" not in data:
                n = self.tailnet.nodes.get(node_id)
                if n is None:
                    return
                data = {**data, "node": self.summary(n)}
            self.hub.publish(type_, data, node_id)
        except Exception:  # noqa: BLE001
            log.exception("could not publish %s", type_)

    def operation_done(self, actor: Actor, operation: str, target: dict[str, Any], request: Any,
                       touched: int) -> None:
        """An API operation that changed something the model does not describe (an SSH check
        approved, a login rejected) is still recorded, with its request."""
        if touched:
            return
        first = next(iter(target.values()), "")
        entry = AuditEntry(
            id=0, at=self.tailnet.clock(), actor_kind=actor.kind, actor_id=actor.id, actor_name=actor.name,
            source=actor.source, operation=operation, target_kind="", target_id=str(first), target_name="",
            node_id=None, user_id=None, before=None, after=None, request=request,
        )
        self.audit.add(entry)
        self.hub.publish(CHANGED, {"kind": "", "id": str(first), "operation": operation})


_time = Time().dump


def install_journal(tailnet: Tailnet, retention_days: int = 90) -> ServerJournal:
    """Give ``tailnet`` the server's journal, with a new audit log and event hub."""
    journal = ServerJournal(tailnet, AuditLog(tailnet.store, tailnet.clock, timedelta(days=retention_days)),
                            EventHub())
    tailnet.journal = journal
    return journal
