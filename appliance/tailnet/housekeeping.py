"""Periodic upkeep: ephemeral nodes removed after their inactivity timeout, key expiry
announced the moment it passes."""

from __future__ import annotations

import logging
from datetime import timedelta

import trio

from ..logthrottle import LogThrottle
from .changes import FULL
from .model import Tailnet

log = logging.getLogger(__name__)
_limited = LogThrottle(log)

TICK = 1.0


async def run_housekeeping(tailnet: Tailnet, ephemeral_timeout: timedelta, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    announced_expired = {i for i, n in tailnet.nodes.items() if tailnet.is_expired(n)}
    task_status.started()
    while True:
        await trio.sleep(TICK)
        now = tailnet.clock()
        for node_id, n in list(tailnet.nodes.items()):
            try:
                await _tend(tailnet, node_id, n, now, ephemeral_timeout, announced_expired)
            except Exception as e:  # one node's trouble: that node's upkeep waits for the next tick
                _limited.log(logging.ERROR, "housekeeping-node", "housekeeping of node %d failed: %s: %s",
                             node_id, type(e).__name__, e)
        announced_expired &= set(tailnet.nodes)


async def _tend(tailnet: Tailnet, node_id: int, n, now, ephemeral_timeout: timedelta, announced_expired: set[int]) -> None:
    if n.ephemeral and not tailnet.is_online(node_id):
        since = n.last_seen or n.created_at
        if now - since >= ephemeral_timeout:
            log.info("removing ephemeral node %d (%s): offline since %s", node_id, n.given_name, since)
            await tailnet.delete_node(node_id)
            return
    expired = tailnet.is_expired(n, now)
    if expired and node_id not in announced_expired:
        announced_expired.add(node_id)
        log.info("node %d (%s): key expired", node_id, n.given_name)
        tailnet.changed(node_id, FULL, policy=True)  # its cached JSON now says Expired
    elif not expired:
        announced_expired.discard(node_id)
