"""Health probes for HA subnet routers (node.routes.ha.probe_interval / probe_timeout).

A router whose map stream ends is offline at once. One that stays connected but stops
answering (hung, or its network gone while the TCP connection lingers) is found by probing:
every interval each member of an HA group gets a PingRequest; a router that has not answered
within the timeout loses its primary routes to a healthy peer, and gets them back as a
candidate when it answers again.
"""

from __future__ import annotations

import logging
import secrets

import trio

from .model import Tailnet

log = logging.getLogger(__name__)


class HAProber:
    def __init__(self, tailnet: Tailnet, server_url: str, interval: float, timeout: float) -> None:
        self.tailnet = tailnet
        self.base = server_url.rstrip("/") + "/machine/ping-response?token="
        self.interval = interval
        self.timeout = timeout
        self._answered: set[str] = set()
        self._waiting: set[str] = set()

    def answer(self, token: str) -> bool:
        """The client's HEAD request arrived; False for a token we did not send (or too late)."""
        if token in self._waiting:
            self._answered.add(token)
            return True
        return False

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self.interval <= 0:
            return
        while True:
            await trio.sleep(self.interval)
            await self.probe_once()

    async def probe_once(self) -> None:
        t = self.tailnet
        members = t.routes.ha_members(t.nodes, set(t.online))
        tokens: dict[str, int] = {}
        for node_id in members:
            # A fresh token each time: the client ignores a PingRequest URL it has seen before.
            token = secrets.token_hex(16)
            tokens[token] = node_id
            t.bus.ping(node_id, self.base + token)
        self._waiting |= set(tokens)
        await trio.sleep(self.timeout)
        changed = False
        for token, node_id in tokens.items():
            ok = token in self._answered
            self._waiting.discard(token)
            self._answered.discard(token)
            if ok and node_id in t.routes.unhealthy:
                t.routes.unhealthy.discard(node_id)
                log.info("node %d answers its HA probe again", node_id)
                changed = True
            elif not ok and node_id not in t.routes.unhealthy and node_id in t.nodes:
                t.routes.unhealthy.add(node_id)
                log.warning("node %d did not answer its HA probe within %.0fs: its routes fail over",
                            node_id, self.timeout)
                changed = True
        t.routes.unhealthy &= set(t.nodes)
        if changed:
            t.update_routes()
