"""Which console roles may call which changing operation: enforced by the router for every
request a signed-in person makes, whatever the page shows.

Roles are Tailscale's (appliance/policy/model.py ROLES). Reading is open to every role; a change
needs a role in ``ALLOWED`` for the operation's ID, else for its tag. The CLI (admin socket) and
API keys are not people with roles: they keep every right, as in Headscale.
"""

from __future__ import annotations

from ..errors import Forbidden
from ..policy.model import ROLES

FULL = frozenset({"owner", "admin"})
NETWORK = FULL | {"network-admin"}
IT = FULL | {"it-admin"}
NOBODY: frozenset[str] = frozenset()

# By tag; an operation's ID in BY_OPERATION wins over its tag.
BY_TAG: dict[str, frozenset[str]] = {
    "Policy": NETWORK,
    "DNS": NETWORK,
    "DERP": NETWORK,
    "Nodes": IT,
    "Users": IT,
    "Auth": IT,
    "PreAuthKeys": IT,
    # An API key has every right: only those who have them all may make one.
    "ApiKeys": FULL,
}
BY_OPERATION: dict[str, frozenset[str]] = {
    # Routes and exit nodes are the network's, not the machine's (Tailscale's network admin).
    "setApprovedRoutes": NETWORK,
    # Roles decide rights: an IT admin must not make itself an admin.
    "setUserRole": FULL,
    # A one-time console link signs its holder in: minted on the server (CLI) or with an API key.
    "createConsoleLogin": NOBODY,
}

READ_ONLY = tuple(r for r in ROLES if not any(r in s for s in (*BY_TAG.values(), *BY_OPERATION.values())))


def roles_for(op_id: str, tag: str, changes: bool) -> frozenset[str]:
    """The roles a console user needs for this operation (every role for a read)."""
    if op_id in BY_OPERATION:
        return BY_OPERATION[op_id]
    if not changes:
        return frozenset(ROLES)
    return BY_TAG.get(tag, FULL)


def check(kind: str, role: str, op_id: str, tag: str, changes: bool) -> None:
    """Raises Forbidden when a console user of ``role`` may not call the operation; callers of
    another ``kind`` (cli, apikey) may call everything."""
    if kind != "console":
        return
    allowed = roles_for(op_id, tag, changes)
    if role not in allowed:
        who = ", ".join(r for r in ROLES if r in allowed) or "nobody signed in to the console"
        raise Forbidden(f"your role ({role}) may not do this; it needs: {who}")
