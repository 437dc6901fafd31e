"""Time from `trioscale policy set` to the last connected client's update.

    python3 -m bench.policy_propagation [--nodes 100,1000] [--concurrency 64]

For each N: a server process in policy.mode database, 20 users, N simulated clients (a third of
them tagged, spread over 30 tags) connected with their map streams, then `policy set` with the
realistic generated policy of bench/policy_compile.py (20 groups, 30 tags, 100 rules,
autogroup:self). Measured: the wall time of the `policy set` command, and the time from its
start until every client has received a map message carrying its new PacketFilter. Loopback
only, bounded in time, stops by itself.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import trio

from appliance.policy import User

from .control_load import HOST, PHASE_TIMEOUT, Load, ServerProcess
from .controlclient import fetch_server_key
from .policy_compile import make_policy

USERS = 20
TAGS = 30


class PolicyLoad(Load):
    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.t_set: float | None = None
        self.updated_at: dict[str, float] = {}

    def on_message(self, client, msg: dict, now: float) -> None:
        super().on_message(client, msg, now)
        if self.t_set is not None and "PacketFilter" in msg and client.hostname not in self.updated_at:
            self.updated_at[client.hostname] = now


async def run_one(n: int, concurrency: int, profile: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="trioscale-bench-") as tmp:
        server = ServerProcess(Path(tmp), profile, {"policy": {"mode": "database"}})
        server.start()
        try:
            users = [User(i, f"user{i}", f"user{i}@example.com") for i in range(1, USERS + 1)]
            for u in users:
                server.cli("users", "create", u.name, "--email", u.email)
            keys = [server.cli("preauthkeys", "create", "-u", u.name, "--reusable", "-e", "2h").stdout.strip()
                    for u in users]
            tag_keys = [server.cli("preauthkeys", "create", "-u", users[0].name, "--reusable", "-e", "2h",
                                   "--tags", f"tag:t{t}").stdout.strip() for t in range(TAGS)]
            public = await fetch_server_key(HOST, server.port)
            load = PolicyLoad(server, public, keys[0], concurrency)
            load.clients = [load.new_client(f"sim-{i}") for i in range(n)]
            rnd = random.Random(n)

            async def register(c, i, nursery):
                async with load.limit:
                    await c.connect(nursery)
                    await c.register(tag_keys[i % TAGS] if i % 3 == 0 else keys[i % USERS])

            async with trio.open_nursery() as nursery:
                with trio.fail_after(PHASE_TIMEOUT):
                    async with trio.open_nursery() as reg:
                        for i, c in enumerate(load.clients):
                            reg.start_soon(register, c, i, nursery)
                    async with trio.open_nursery() as op:
                        for i, c in enumerate(load.clients):
                            op.start_soon(load.open_one, c, i)
                    await load.wait_all(lambda c: len(c.map.peers) == n - 1, PHASE_TIMEOUT)
                    await load.wait_quiet()
                policy = Path(tmp) / "policy.json"
                policy.write_text(make_policy(users, rnd))
                load.t_set = time.monotonic()
                await trio.to_thread.run_sync(server.cli, "policy", "set", "-f", str(policy))
                t_cli = time.monotonic() - load.t_set
                with trio.fail_after(PHASE_TIMEOUT):
                    while len(load.updated_at) < n:
                        await trio.sleep(0.005)
                lat = sorted(t - load.t_set for t in load.updated_at.values())
                nursery.cancel_scope.cancel()
            return {"nodes": n, "cli_s": t_cli, "last_s": lat[-1], "median_s": statistics.median(lat)}
        finally:
            server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", default="100,1000")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--profile", help="run the server under cProfile, writing FILE.<N>")
    args = ap.parse_args()
    rows = [trio.run(run_one, int(n), args.concurrency, args.profile and f"{args.profile}.{n}")
            for n in args.nodes.split(",")]
    print("| N | `policy set` returns | last client updated | median client |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['nodes']} | {r['cli_s']:.2f} s | {r['last_s']:.2f} s | {r['median_s']:.2f} s |")


if __name__ == "__main__":
    main()
