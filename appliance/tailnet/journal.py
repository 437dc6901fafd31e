"""Where the tailnet reports what happened: changes (for the audit log, live notices and the
events derived from them) and events that are not changes (online, offline, key expiring).

The model calls these synchronously after a change is committed; an implementation must not
block or raise (a change that happened stays made). The base class drops everything: a Tailnet
in a test or a tool needs no journal. appliance/audit/journal.py has the server's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Document:
    """A changed thing that is not a record: the policy, DNS settings, DERP regions (``value``
    is its JSON)."""

    kind: str
    value: Any
    id: str = ""
    name: str = ""


class Journal:
    def change(self, operation: str, before: Any, after: Any) -> None:
        """Something changed from ``before`` to ``after`` (records or JSON documents; None for
        created or deleted). ``operation`` names it when no API operation is in progress."""

    def fact(self, operation: str, thing: Any, before: dict[str, Any], after: dict[str, Any]) -> None:
        """Something about ``thing`` became true without a write (a node's key expired): recorded
        with the given ``before`` and ``after`` documents."""

    def event(self, type_: str, data: dict[str, Any], node_id: int | None = None) -> None:
        """An event that is not a change (``node.online``, ``node.key_expiring``, ...)."""
