"""Interactive registration, as Headscale does it without OIDC: the client is sent to
``/register/<token>``, where the page tells an admin the CLI command that approves it;
the client's follow-up register request waits until then."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import trio

from .hostinfo import Hostinfo

# How long a login link stays valid; the follow-up request waits at most this long.
PENDING_LIFETIME = timedelta(minutes=15)
MAX_PENDING = 1024  # bounds memory against clients that open logins and never finish


_TOKEN_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def new_token() -> str:
    """24 letters and digits (~124 bits). Never URL-safe base64: a key starting with '-' is
    read as an option when an admin pastes it after `--key`."""
    return "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(24))


@dataclass
class PendingLogin:
    token: str
    machine_key: str
    node_key: str
    hostinfo: Hostinfo
    created: datetime
    done: trio.Event = field(default_factory=trio.Event)
    node_id: int | None = None


class PendingLogins:
    def __init__(self) -> None:
        self._by_token: dict[str, PendingLogin] = {}

    def start(self, machine_key: str, node_key: str, hostinfo: Hostinfo, now: datetime) -> PendingLogin:
        self.expire(now)
        for p in self._by_token.values():
            if p.machine_key == machine_key and p.node_key == node_key and p.node_id is None:
                p.hostinfo = hostinfo
                return p
        if len(self._by_token) >= MAX_PENDING:
            oldest = min(self._by_token.values(), key=lambda p: p.created)
            del self._by_token[oldest.token]
        p = PendingLogin(new_token(), machine_key, node_key, hostinfo, now)
        self._by_token[p.token] = p
        return p

    def get(self, token: str) -> PendingLogin | None:
        return self._by_token.get(token)

    def finish(self, token: str, node_id: int) -> None:
        p = self._by_token.pop(token, None)
        if p is not None:
            p.node_id = node_id
            p.done.set()

    def expire(self, now: datetime) -> None:
        for t, p in list(self._by_token.items()):
            if now - p.created > PENDING_LIFETIME:
                del self._by_token[t]
