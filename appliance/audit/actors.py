"""Who makes a change, carried through the code that makes it in context variables.

A request to the API runs its operation inside an ``OperationScope`` (set by the router), so a
change the model records learns the operation and the Actor without being told. Everything else
that changes the tailnet names itself with ``acting(Actor(...))``: a client registering, a
person signing in, or the server itself (ephemeral clean-up, route auto-approval, key expiry,
policy reload). Trio gives every task a copy of the context, so what one task sets never leaks
into another.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any, Iterator


@dataclass(frozen=True)
class Actor:
    """Who asked.

    ``kind``: "cli" (the admin socket; ``id`` and ``name`` the local account's uid and name),
    "apikey" (a Bearer key; ``id`` its ID, ``name`` its
    prefix), "console" (a signed-in person; ``id`` the user's ID, empty for a CLI login link without
    --user, ``name`` the user name, ``role`` their role),
    "oidc" (a person deciding their own login through the identity provider), "preauthkey" (a
    client registering with a key; ``name`` the key's prefix), "node" (a client acting on its
    own node, e.g. logging out) or "server" (``id`` names the task: "ephemeral-cleanup",
    "auto-approver", "key-expiry", "policy-file", "sighup"). ``source`` is the peer address.
    """

    kind: str
    id: str = ""
    source: str = "local"
    name: str = ""
    role: str = ""  # a console user's role, which decides what they may change (admin/permissions.py)

    def describe(self) -> str:
        """How history and logs name who did something: "console:alice", "apikey:3", "cli"."""
        who = self.name or self.id
        return f"{self.kind}:{who}" if who else self.kind


SERVER = Actor("server", source="")


@dataclass
class OperationScope:
    """One API operation in progress: what the model records inside it is that operation's."""

    actor: Actor
    operation: str
    target: dict[str, Any] = field(default_factory=dict)
    request: Any = None
    touched: int = 0  # entries recorded inside it


current_actor: contextvars.ContextVar[Actor] = contextvars.ContextVar("current_actor", default=SERVER)
current_operation: contextvars.ContextVar[OperationScope | None] = contextvars.ContextVar(
    "current_operation", default=None)


@contextlib.contextmanager
def _bound(var: contextvars.ContextVar, value: Any) -> Iterator[Any]:
    token = var.set(value)
    try:
        yield value
    finally:
        var.reset(token)


def acting(actor: Actor) -> contextlib.AbstractContextManager[Actor]:
    """Changes made inside are ``actor``'s (outside an API operation)."""
    return _bound(current_actor, actor)


def operation(scope: OperationScope) -> contextlib.AbstractContextManager[OperationScope]:
    """Changes made inside are the API operation ``scope``'s."""
    return _bound(current_operation, scope)


def who() -> tuple[Actor, str | None]:
    """The Actor of a change made now, and the API operation it belongs to (None outside one)."""
    scope = current_operation.get()
    if scope is not None:
        return scope.actor, scope.operation
    return current_actor.get(), None
