"""Control-plane load generator: N simulated clients against a trioscale server process.

    python3 -m bench.control_load [--nodes 100,1000] [--concurrency 64] [--idle 30]
                                  [--joins 3] [--profile FILE] [--json FILE]

For each N it starts ``python -m appliance serve`` on 127.0.0.1 (a fresh data dir), makes a
user and a reusable key with the CLI, and from this one Trio process:

1. registers N clients (GET /key, /ts2021 + Noise, HTTP/2, POST /machine/register), at most
   ``--concurrency`` at a time: registrations per second;
2. opens their streaming map polls (plus one lite endpoint update each) and waits until every
   client holds all N-1 peers: time to a fully connected tailnet;
3. waits for the tailnet to go quiet, then reads the server's RSS (/proc/PID/status):
   (RSS with N connected - RSS before any client) / N;
4. measures the server's CPU (utime+stime from /proc/PID/stat) over ``--idle`` seconds while
   all N streams stay open;
5. ``--joins`` times: one more node registers and opens its map; time from its register
   request until each of the N has received it in PeersChanged (max and median).

Loopback only; bounded in clients and in time (every phase has a deadline); the server is
stopped at the end. The generator shares the machine's cores with the server: its numbers
include that competition.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio
import yaml

from .controlclient import SimClient, fetch_server_key

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

START_TIMEOUT = 30.0
PHASE_TIMEOUT = 600.0  # register or connect phase, whatever N
JOIN_TIMEOUT = 60.0
QUIET = 2.0  # "settled": no map message at any client for this long
SETTLE_TIMEOUT = 120.0


# --- the server process ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, workdir: Path, profile: str | None, extra: dict | None = None) -> None:
        self.dir = workdir
        self.port = free_port()
        self.config = workdir / "config.yaml"
        self.config.write_text(yaml.safe_dump({
            **(extra or {}),
            "server_url": f"http://{HOST}:{self.port}",
            "listen_addr": f"{HOST}:{self.port}",
            "data_dir": str(workdir / "data"),
            "unix_socket": str(workdir / "data" / "trioscale.sock"),
            "dns": {"base_domain": "bench.test", "override_local_dns": False},
            "derp": {"server": {"enabled": False}},
            "log": {"level": "warning"},
        }))
        self.profile = profile
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "server.log"

    def env(self) -> dict:
        return {**os.environ, "PYTHONPATH": str(REPO)}

    def start(self, ready: tuple[str, ...] = ("users", "list")) -> None:
        """Start it; return once the CLI command ``ready`` succeeds (``("status",)`` for a
        server that may be a standby)."""
        argv = [sys.executable]
        if self.profile:
            argv += ["-m", "cProfile", "-o", self.profile]
        argv += ["-m", "appliance", "serve", "-c", str(self.config)]
        self.proc = subprocess.Popen(
            argv, cwd=REPO, env=self.env(), stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while self.cli(*ready, check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start; see {self.log}")
            time.sleep(0.2)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(
            [sys.executable, "-m", "appliance", "-c", str(self.config), *args],
            cwd=REPO, env=self.env(), capture_output=True, text=True, timeout=60,
        )
        if check and p.returncode != 0:
            raise RuntimeError(f"trioscale {' '.join(args)}: {p.stderr.strip()}")
        return p

    def rss(self) -> int:
        """Resident set size in bytes."""
        fields = Path(f"/proc/{self.proc.pid}/statm").read_text().split()
        return int(fields[1]) * PAGE

    def cpu_seconds(self) -> float:
        """utime + stime of the server process so far."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        rest = stat[stat.rindex(")") + 2 :].split()  # comm may hold spaces; fields after it
        return (int(rest[11]) + int(rest[12])) / CLK_TCK  # fields 14 and 15 of proc(5)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60 if self.profile else 15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- the generator --------------------------------------------------------------------------


@dataclass
class Result:
    nodes: int
    register_s: float = 0.0
    register_rate: float = 0.0
    register_cpu_s: float = 0.0
    connect_s: float = 0.0
    connect_cpu_s: float = 0.0
    settle_s: float = 0.0
    rss0: int = 0
    rss_n: int = 0
    rss_per_node: float = 0.0
    idle_s: float = 0.0
    idle_cpu_pct: float = 0.0
    idle_keepalives: int = 0
    joins: list[dict] = field(default_factory=list)


class Load:
    def __init__(self, server: ServerProcess, public: bytes, auth_key: str, concurrency: int) -> None:
        self.server = server
        self.public = public
        self.auth_key = auth_key
        self.limit = trio.CapacityLimiter(concurrency)
        self.clients: list[SimClient] = []
        self.last_message = time.monotonic()
        self.watch_key: str | None = None  # a joining node's key; when each client first saw it:
        self.seen_at: dict[str, float] = {}

    def on_message(self, client: SimClient, msg: dict, now: float) -> None:
        self.last_message = now
        if self.watch_key is not None and client.hostname not in self.seen_at:
            for p in msg.get("PeersChanged") or msg.get("Peers") or ():
                if p.get("Key") == self.watch_key:
                    self.seen_at[client.hostname] = now
                    break

    def new_client(self, name: str) -> SimClient:
        # Clients keep peer IDs only: 1000 clients x 1000 peer dicts would swamp this process.
        return SimClient(HOST, self.server.port, self.public, name, keep_nodes=False, on_message=self.on_message)

    async def register_one(self, c: SimClient, nursery: trio.Nursery) -> None:
        async with self.limit:
            await fetch_server_key(HOST, self.server.port)  # as the real client does per login
            await c.connect(nursery)
            await c.register(self.auth_key)

    async def open_one(self, c: SimClient, i: int) -> None:
        async with self.limit:
            await c.open_map(endpoints=[f"192.0.2.{1 + i % 250}:{41641 + i}", f"10.0.0.{1 + i % 250}:41641"])

    async def wait_quiet(self) -> float:
        t0 = time.monotonic()
        with trio.fail_after(SETTLE_TIMEOUT):
            while time.monotonic() - self.last_message < QUIET:
                await trio.sleep(0.25)
        return time.monotonic() - t0

    async def wait_all(self, predicate, timeout: float) -> None:
        with trio.fail_after(timeout):
            while not all(predicate(c) for c in self.clients):
                await trio.sleep(0.05)


async def run_one(n: int, args) -> Result:
    res = Result(nodes=n)
    with tempfile.TemporaryDirectory(prefix="trioscale-bench-") as tmp:
        server = ServerProcess(Path(tmp), args.profile and f"{args.profile}.{n}")
        server.start()
        try:
            server.cli("users", "create", "bench")
            key = server.cli("preauthkeys", "create", "-u", "bench", "--reusable", "-e", "2h").stdout.strip()
            public = await fetch_server_key(HOST, server.port)
            await trio.sleep(1.0)
            res.rss0 = server.rss()
            load = Load(server, public, key, args.concurrency)
            async with trio.open_nursery() as nursery:
                await measure(load, res, n, nursery, args)
                nursery.cancel_scope.cancel()
        finally:
            server.stop()
    return res


async def measure(load: Load, res: Result, n: int, nursery: trio.Nursery, args) -> None:
    server = load.server
    load.clients = [load.new_client(f"sim-{i}") for i in range(n)]

    # 1. registrations
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    with trio.fail_after(PHASE_TIMEOUT):
        async with trio.open_nursery() as reg:
            for c in load.clients:
                reg.start_soon(load.register_one, c, nursery)
    res.register_s = time.monotonic() - t0
    res.register_rate = n / res.register_s
    res.register_cpu_s = server.cpu_seconds() - cpu0
    print(f"N={n}: {n} registered in {res.register_s:.1f} s ({res.register_rate:.0f}/s)", flush=True)

    # 2. map streams, until everyone holds everyone
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    with trio.fail_after(PHASE_TIMEOUT):
        async with trio.open_nursery() as op:
            for i, c in enumerate(load.clients):
                op.start_soon(load.open_one, c, i)
    await load.wait_all(lambda c: len(c.map.peers) == n - 1, PHASE_TIMEOUT)
    res.connect_s = time.monotonic() - t0
    res.connect_cpu_s = server.cpu_seconds() - cpu0
    print(f"N={n}: all {n} streams hold {n - 1} peers after {res.connect_s:.1f} s", flush=True)
    res.settle_s = await load.wait_quiet()

    # 3. memory per connected node
    res.rss_n = server.rss()
    res.rss_per_node = (res.rss_n - res.rss0) / n
    print(f"N={n}: RSS {res.rss0 / 2**20:.0f} MiB idle, {res.rss_n / 2**20:.0f} MiB with {n} connected "
          f"({res.rss_per_node / 1024:.0f} KiB/node)", flush=True)

    # 4. CPU while the tailnet idles
    frames0 = sum(c.map.keepalives for c in load.clients)
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    await trio.sleep(args.idle)
    res.idle_s = time.monotonic() - t0
    res.idle_cpu_pct = 100 * (server.cpu_seconds() - cpu0) / res.idle_s
    res.idle_keepalives = sum(c.map.keepalives for c in load.clients) - frames0
    print(f"N={n}: idle CPU {res.idle_cpu_pct:.1f} % of a core over {res.idle_s:.0f} s "
          f"({res.idle_keepalives} keepalives sent)", flush=True)

    # 5. joins
    for j in range(args.joins):
        newcomer = load.new_client(f"join-{j}")
        with trio.fail_after(JOIN_TIMEOUT):
            await newcomer.connect(nursery)
            load.seen_at = {}
            load.watch_key = newcomer.node_key
            cpu0 = server.cpu_seconds()
            t0 = time.monotonic()
            await newcomer.register(load.auth_key)
            t_registered = time.monotonic()
            await newcomer.open_map(endpoints=[f"198.51.100.{j + 1}:41641"])
            t_own_map = time.monotonic()
            while len(load.seen_at) < len(load.clients):
                await trio.sleep(0.005)
        lat = sorted(t - t0 for t in load.seen_at.values())
        join = {
            "all_seen_s": lat[-1], "median_s": statistics.median(lat),
            "register_rtt_s": t_registered - t0, "own_map_s": t_own_map - t0,
            "server_cpu_s": server.cpu_seconds() - cpu0,
        }
        res.joins.append(join)
        print(f"N={n}: join {j + 1}: seen by all {len(load.clients)} after {lat[-1] * 1000:.0f} ms "
              f"(median {join['median_s'] * 1000:.0f} ms; register answered in "
              f"{join['register_rtt_s'] * 1000:.0f} ms; server CPU {join['server_cpu_s']:.2f} s)", flush=True)
        load.watch_key = None
        load.clients.append(newcomer)
        await load.wait_quiet()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", default="100,1000", help="comma-separated N values")
    ap.add_argument("--concurrency", type=int, default=64, help="registrations / stream opens in flight")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measurement")
    ap.add_argument("--joins", type=int, default=3)
    ap.add_argument("--profile", help="run the server under cProfile, writing FILE.<N>")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    results = []
    for n in (int(x) for x in args.nodes.split(",")):
        results.append(trio.run(run_one, n, args))
    print()
    print("| N | registrations/s | all connected | join seen by all (max of runs) | median | RSS/node | idle CPU |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        worst = max(j["all_seen_s"] for j in r.joins) if r.joins else float("nan")
        med = statistics.median(j["median_s"] for j in r.joins) if r.joins else float("nan")
        print(f"| {r.nodes} | {r.register_rate:.0f} | {r.connect_s:.1f} s | {worst * 1000:.0f} ms | "
              f"{med * 1000:.0f} ms | {r.rss_per_node / 1024:.0f} KiB | {r.idle_cpu_pct:.1f} % |")
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in results], indent=1))


if __name__ == "__main__":
    main()
