"""What the audit log and the events cost the changes they record (issue 12: "audit writes must
never make a change fail or slow the change noticeably").

In-process, on a real SQLite file: registers N nodes, then times ROUNDS of every node coming
online and going offline (the reconnect storm's path: no store write, an event each) and R
renames (a committed write, an audit entry, a change notice), once with the model's null
journal and once with the server's (audit log, event hub; no stream or webhook listening),
and the audit log's batched write of what the second run recorded.

    python -m bench.journal_overhead [--nodes 1000] [--rounds 5] [--renames 300]
"""

from __future__ import annotations

import argparse
import ipaddress
import tempfile
import time
from pathlib import Path

import trio

from appliance.audit.journal import install_journal
from appliance.control.hostinfo import Hostinfo
from appliance.storage import Store
from appliance.tailnet.model import Tailnet


async def measure(nodes: int, rounds: int, renames: int, with_journal: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        store = Store(Path(d) / "db.sqlite")
        t = Tailnet(store, v4=ipaddress.ip_network("100.64.0.0/10"), v6=None)
        await t.load()
        journal = install_journal(t) if with_journal else None
        u = await t.create_user("alice")
        _, text = await t.create_preauth_key(u.id, reusable=True)
        key = t.check_preauth_key(text)
        for i in range(nodes):
            await t.register_with_key(key, machine_key=f"mkey:{i:064x}", node_key=f"nodekey:{i:064x}",
                                      old_node_key=None, hostinfo=Hostinfo(hostname=f"n{i}"))
        began = time.perf_counter()
        for _ in range(rounds):
            for i in list(t.nodes):
                t.stream_opened(i)
            for i in list(t.nodes):
                t.stream_closed(i)
        presence = (time.perf_counter() - began) / (2 * rounds * nodes)
        began = time.perf_counter()
        for i in list(t.nodes)[:renames]:
            await t.rename_node(i, f"renamed{i}")
        rename = (time.perf_counter() - began) / renames
        flush, pending = 0.0, 0
        if journal is not None:
            pending = len(journal.audit._pending)
            began = time.perf_counter()
            await journal.audit.flush()
            flush = time.perf_counter() - began
        store.close()
        return {"presence_us": presence * 1e6, "rename_ms": rename * 1e3, "flush_ms": flush * 1e3,
                "entries": pending}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--renames", type=int, default=300)
    a = p.parse_args()
    for with_journal in (False, True):
        r = trio.run(measure, min(a.nodes, 20_000), a.rounds, min(a.renames, a.nodes), with_journal)
        print(f"{'server journal' if with_journal else 'null journal  '}: online/offline {r['presence_us']:.1f} us "
              f"each, rename {r['rename_ms']:.2f} ms each, audit flush of {r['entries']} entries "
              f"{r['flush_ms']:.0f} ms")


if __name__ == "__main__":
    main()
