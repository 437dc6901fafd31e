"""A policy file changed on disk (or reloaded on SIGHUP) is the server's change in the audit log,
with the old and new text, and a policy.changed event; a refused file records nothing."""

from __future__ import annotations

import ipaddress
import os

import trio

from appliance.audit.actors import Actor, acting
from appliance.audit.journal import install_journal
from appliance.storage import Store
from appliance.storage.audit import AuditFilter
from appliance.tailnet import policy as policymod
from appliance.tailnet.model import Tailnet
from appliance.tailnet.policy import PolicyManager

FIRST = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:22"]}]}'
SECOND = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'


async def test_file_reloads_are_audited(tmp_path, monkeypatch):
    monkeypatch.setattr(policymod, "FILE_POLL_INTERVAL", 0.05)
    store = Store(tmp_path / "db.sqlite")
    t = Tailnet(store, v4=ipaddress.ip_network("100.64.0.0/10"), v6=None)
    await t.load()
    journal = install_journal(t)
    path = tmp_path / "policy.hujson"
    path.write_text(FIRST)
    pm = PolicyManager(t, lambda access: None, mode="file", path=path, server_url="http://127.0.0.1:1")
    await pm.load()
    async with trio.open_nursery() as nursery:
        await nursery.start(pm.watch_file)
        path.write_text(SECOND)
        os.utime(path, (1, 1))  # a new mtime, whatever the clock's resolution
        with trio.fail_after(10):
            while pm.text != SECOND:
                await trio.sleep(0.05)
        path.write_text('{"acls": [')  # refused: the old policy stays, nothing recorded
        os.utime(path, (2, 2))
        await trio.sleep(0.3)
        nursery.cancel_scope.cancel()
    assert pm.text == SECOND
    with acting(Actor("server", "sighup", source="")):
        path.write_text(FIRST)
        assert await pm.reload()
    entries = await journal.audit.query(AuditFilter(target_kind="policy"))
    assert [(e.operation, e.actor_kind, e.actor_id) for e in entries] == [
        ("reloadPolicy", "server", "sighup"), ("reloadPolicy", "server", "policy-file")]
    assert (entries[1].before, entries[1].after) == ({"policy": FIRST}, {"policy": SECOND})
    assert [e.type for e in journal.hub.ring].count("policy.changed") == 2
    store.close()
