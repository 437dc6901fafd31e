"""Periodic upkeep: ephemeral nodes removed after their inactivity timeout, key expiry
announced the moment it passes (to peers, the audit log and node.key_expired), and a node whose
key expires within KEY_EXPIRING_WINDOW announced once as node.key_expiring (as Tailscale's
"expiring in one day" notice). Each is the server's own doing in the audit log."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import trio

from ..audit.actors import Actor, acting
from ..logthrottle import LogThrottle
from .changes import FULL
from .model import Tailnet

log = logging.getLogger(__name__)
_limited = LogThrottle(log)

TICK = 1.0
KEY_EXPIRING_WINDOW = timedelta(days=1)
CLEANUP = Actor("server", "ephemeral-cleanup", source="")
EXPIRY = Actor("server", "key-expiry", source="")


async def run_housekeeping(tailnet: Tailnet, ephemeral_timeout: timedelta, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    announced_expired = {i for i, n in tailnet.nodes.items() if tailnet.is_expired(n)}
    # node id → the expiry time it was announced as expiring soon for (a new expiry, a new notice)
    announced_expiring: dict[int, datetime] = {}
    task_status.started()
    while True:
        await trio.sleep(TICK)
        now = tailnet.clock()
        for node_id, n in list(tailnet.nodes.items()):
            try:
                await _tend(tailnet, node_id, n, now, ephemeral_timeout, announced_expired, announced_expiring)
            except Exception as e:  # one node's trouble: that node's upkeep waits for the next tick
                _limited.log(logging.ERROR, "housekeeping-node", "housekeeping of node %d failed: %s: %s",
                             node_id, type(e).__name__, e)
        announced_expired &= set(tailnet.nodes)
        for gone in announced_expiring.keys() - set(tailnet.nodes):
            del announced_expiring[gone]


async def _tend(tailnet: Tailnet, node_id: int, n, now, ephemeral_timeout: timedelta, announced_expired: set[int],
                announced_expiring: dict[int, datetime]) -> None:
    if n.ephemeral and not tailnet.is_online(node_id):
        since = n.last_seen or n.created_at
        if now - since >= ephemeral_timeout:
            log.info("removing ephemeral node %d (%s): offline since %s", node_id, n.given_name, since)
            with acting(CLEANUP):
                await tailnet.delete_node(node_id)
            return
    expired = tailnet.is_expired(n, now)
    if expired and node_id not in announced_expired:
        announced_expired.add(node_id)
        log.info("node %d (%s): key expired", node_id, n.given_name)
        tailnet.changed(node_id, FULL, policy=True)  # its cached JSON now says Expired
        with acting(EXPIRY):
            when = n.expiry.isoformat() if n.expiry else None
            tailnet.journal.fact("keyExpired", n, {"expired": False, "expiry": when}, {"expired": True, "expiry": when})
            tailnet.journal.event("node.key_expired", {}, node_id)
    elif not expired:
        announced_expired.discard(node_id)
        if n.expiry is not None and n.expiry - now <= KEY_EXPIRING_WINDOW and announced_expiring.get(node_id) != n.expiry:
            announced_expiring[node_id] = n.expiry
            tailnet.journal.event("node.key_expiring", {"expiry": n.expiry.isoformat().replace("+00:00", "Z")},
                                  node_id)
