"""The store's operations, timed on each engine.

    python3 -m bench.store_ops [--nodes 1000] [--engines sqlite,postgres] [--json FILE]

For each engine, on a fresh database (SQLite: a file in a temporary directory; PostgreSQL: a new
database on a server started for the run, tests/pgserver.py), from one Trio process through the
store's public methods, as the server uses them:

- ``create_user``, one at a time (each a committed transaction): per operation;
- ``save_node`` of new nodes (registrations), then of changed nodes (renames): per operation;
- ``save_soft_state`` of every node in one transaction (the flusher's batch);
- ``load_all`` (what a server, or a standby taking over, reads at start);
- ``export_snapshot`` (a backup, ``db migrate``).

Each figure is the median of ``--rounds`` runs of the step. SQLite commits with
synchronous=FULL (an fsync per commit); the PostgreSQL test server runs with fsync=off, so its
figures are the round trips and the server's work, not the disk's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import trio

from appliance.control.hostinfo import Hostinfo
from appliance.storage import Store, open_store
from appliance.storage.records import NodeRecord

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)


def _node(i: int, user_id: int) -> NodeRecord:
    return NodeRecord(
        id=0, machine_key=f"mkey:{i:064x}", node_key=f"nodekey:{i:064x}", disco_key=f"discokey:{i:064x}",
        ipv4=f"100.64.{i >> 8}.{i & 255}", ipv6=f"fd7a:115c:a1e0::{i:x}", hostname=f"host{i}",
        given_name=f"host{i}", user_id=user_id, auth_key_id=None, tags=(),
        hostinfo=Hostinfo(hostname=f"host{i}", os="linux", ipn_version="1.96.4"),
        endpoints=(f"198.51.100.{i & 255}:41641", f"10.0.{i >> 8}.{i & 255}:41641"), expiry=None,
        last_seen=NOW, created_at=NOW,
    )


async def _timed(fn) -> float:
    t0 = time.perf_counter()
    await fn()
    return time.perf_counter() - t0


async def run_engine(store: Store, nodes: int, users: int) -> dict[str, float]:
    await store.try_become_active("bench", "bench-key")
    out: dict[str, float] = {}
    made = []

    async def create_users() -> None:
        for i in range(users):
            made.append(await store.create_user(f"user{i}", "", "", NOW))

    out["create_user ms"] = await _timed(create_users) / users * 1000
    saved: list[NodeRecord] = []

    async def register() -> None:
        for i in range(nodes):
            saved.append(await store.save_node(_node(i + 1, made[i % users].id)))

    out["save_node (new) ms"] = await _timed(register) / nodes * 1000

    async def rename() -> None:
        for i, n in enumerate(saved):
            saved[i] = await store.save_node(dataclasses.replace(n, given_name=f"renamed{i}"))

    out["save_node (update) ms"] = await _timed(rename) / nodes * 1000
    batch = [dataclasses.replace(n, last_seen=datetime.now(timezone.utc)) for n in saved]
    out[f"save_soft_state ({nodes} nodes) ms"] = await _timed(lambda: store.save_soft_state(batch)) * 1000
    out[f"load_all ({nodes} nodes) ms"] = await _timed(store.load_all) * 1000
    out["export_snapshot ms"] = await _timed(store.export_snapshot) * 1000
    return out


async def main(args) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    pg = None
    try:
        for engine in args.engines.split(","):
            rounds = []
            for _ in range(args.rounds):
                with tempfile.TemporaryDirectory() as tmp:
                    if engine == "sqlite":
                        store = Store(Path(tmp) / "db.sqlite")
                    else:
                        from tests.pgserver import PostgresServer
                        from tests.stores import database_config, postgres_config

                        pg = pg or PostgresServer()
                        db = pg.new_database()
                        store = open_store(database_config("postgres", None, postgres_config(db, socket=True)))
                    try:
                        rounds.append(await run_engine(store, args.nodes, args.users))
                    finally:
                        store.close()
            results[engine] = {k: round(statistics.median(r[k] for r in rounds), 3) for k in rounds[0]}
    finally:
        if pg is not None:
            pg.stop()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", default="sqlite,postgres")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    res = trio.run(main, args)
    for engine, figures in res.items():
        print(engine)
        for k, v in figures.items():
            print(f"  {k:32} {v:10.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
