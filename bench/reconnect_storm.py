"""Reconnect storm: N simulated clients reconnect at once after the server restarts.

    python3 -m bench.reconnect_storm [--nodes 1000] [--observers 5] [--kill]
                                     [--retry 0.25,1.0] [--json FILE]

Starts ``python -m appliance serve`` on 127.0.0.1 (bench/control_load.py's ServerProcess),
registers N clients (bench/controlclient.py) and opens their map streams; ``--observers`` of
them keep every peer's node so they can tell who is online (the others only glance at their
messages, so that one generator process can take in a thousand netmaps). Then it restarts the server
(SIGTERM and a new process on the same data directory and port; ``--kill``: SIGKILL instead).
Every client notices its stream end and redials every ``--retry`` seconds (uniform between the
two, as a client's backoff with jitter does) until it is back: a new Noise connection and a
streaming map request, no new registration. They all get in within about one retry interval
of the server's start: the storm.

Measured from the moment the new server process is started:

- back: when each client holds its first netmap again (all N: the bar is 60 s);
- converged: when every observer sees all N-1 peers online again;
- the admin API throughout, from a process of its own: a request on the admin socket every
  100 ms (GET /api/v1/version: how long the server takes to answer anything), and the admin
  CLI (``trioscale nodes list -o json``, a new Python process, the whole node list) every 2 s,
  with the worst and p99 times (the bar: the CLI answers within 1 s);
- the server's CPU over the storm.

Loopback only; every phase has a deadline; the server is stopped at the end. Generator and
server share the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import trio

from appliance.adminclient import AdminClient

from .control_load import PHASE_TIMEOUT, REPO, Load, ServerProcess
from .controlclient import SimClient, fetch_server_key

STORM_TIMEOUT = 300.0  # the bar is 60 s; past this the run is abandoned
PROBE_INTERVAL = 0.1
CLI_INTERVAL = 2.0


def probe(config: str, socket_path: str, out: str) -> None:
    """The admin side, in a process of its own so that the generator's busy loop does not
    distort it: a request on the admin socket every PROBE_INTERVAL, and (in a thread) the admin
    CLI every CLI_INTERVAL, each written as a JSON line {"kind", "t" (CLOCK_MONOTONIC), "s", "ok"}."""
    client = AdminClient(Path(socket_path), timeout=60)
    f = open(out, "a", buffering=1)
    lock = threading.Lock()

    def record(kind: str, t0: float, ok: bool, error: str = "") -> None:
        with lock:
            f.write(json.dumps({"kind": kind, "t": t0, "s": time.monotonic() - t0, "ok": ok, "error": error}) + "\n")

    def cli_loop() -> None:
        while True:
            t0 = time.monotonic()
            p = subprocess.run([sys.executable, "-m", "appliance", "-c", config, "nodes", "list", "-o", "json"],
                               cwd=REPO, capture_output=True, timeout=120)
            record("cli", t0, p.returncode == 0, p.stderr.decode(errors="replace")[-200:])
            time.sleep(max(0.0, CLI_INTERVAL - (time.monotonic() - t0)))

    threading.Thread(target=cli_loop, daemon=True).start()
    while True:
        t0 = time.monotonic()
        try:
            client.call("GET", "/api/v1/version")
            error = ""
        except Exception as e:  # down for the restart
            error = repr(e)[:200]
        record("api", t0, not error, error)
        time.sleep(max(0.0, PROBE_INTERVAL - (time.monotonic() - t0)))


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


class Storm:
    def __init__(self, server: ServerProcess, public: bytes, load: Load, retry: tuple[float, float]) -> None:
        self.server = server
        self.public = public
        self.load = load
        self.retry = retry
        self.back_at: dict[str, float] = {}
        self.restart_at = 0.0
        self.reconnect_errors = 0

    async def keep_connected(self, c: SimClient, i: int, nursery: trio.Nursery) -> None:
        """Redial whenever the stream ends, as a client does; record when it is back."""
        while True:
            await c.map_stream.ended.wait()
            await c.aclose()
            while True:
                await trio.sleep(random.uniform(*self.retry))
                try:
                    await c.connect(nursery)
                    await c.open_map(endpoints=[f"192.0.2.{1 + i % 250}:{41641 + i}"])
                except Exception:  # refused, reset, not up yet: try again
                    self.reconnect_errors += 1
                    await c.aclose()
                    continue
                self.back_at[c.hostname] = time.monotonic()
                break


def online_peers(c: SimClient) -> int:
    return sum(1 for p in c.map.peers.values() if p is not None and p.get("Online"))


async def run(args) -> dict:
    n = args.nodes
    with tempfile.TemporaryDirectory(prefix="trioscale-storm-") as tmp:
        server = ServerProcess(Path(tmp), args.profile)
        server.start()
        try:
            server.cli("users", "create", "bench")
            key = server.cli("preauthkeys", "create", "-u", "bench", "--reusable", "-e", "2h").stdout.strip()
            public = await fetch_server_key("127.0.0.1", server.port)
            load = Load(server, public, key, args.concurrency)
            async with trio.open_nursery() as nursery:
                result = await storm(server, load, public, n, args, nursery)
                nursery.cancel_scope.cancel()
        finally:
            server.stop()
    return result


async def storm(server: ServerProcess, load: Load, public: bytes, n: int, args, nursery: trio.Nursery) -> dict:
    load.clients = [
        SimClient("127.0.0.1", server.port, public, f"sim-{i}", keep_nodes=i < args.observers,
                  light=i >= args.observers, on_message=load.on_message)
        for i in range(n)
    ]
    observers = load.clients[:args.observers]
    t0 = time.monotonic()
    with trio.fail_after(PHASE_TIMEOUT):
        async with trio.open_nursery() as reg:
            for c in load.clients:
                reg.start_soon(load.register_one, c, nursery)
        async with trio.open_nursery() as op:
            for i, c in enumerate(load.clients):
                op.start_soon(load.open_one, c, i)
    await load.wait_all(lambda c: c.map.self_node is not None, PHASE_TIMEOUT)
    with trio.fail_after(PHASE_TIMEOUT):
        while not all(online_peers(o) == n - 1 for o in observers):
            await trio.sleep(0.1)
    print(f"N={n}: {n} clients registered and connected in {time.monotonic() - t0:.1f} s", flush=True)
    await load.wait_quiet()

    s = Storm(server, public, load, args.retry)
    for i, c in enumerate(load.clients):
        nursery.start_soon(s.keep_connected, c, i, nursery)
    probes = Path(server.dir) / "probes.jsonl"
    prober = subprocess.Popen(
        [sys.executable, "-m", "bench.reconnect_storm", "--probe", str(server.config),
         str(server.dir / "data" / "trioscale.sock"), str(probes)], cwd=REPO, env=server.env())
    await trio.sleep(3 * CLI_INTERVAL)  # a baseline before the restart

    # The restart.
    sig = signal.SIGKILL if args.kill else signal.SIGTERM
    t_stop = time.monotonic()
    server.proc.send_signal(sig)
    await trio.to_thread.run_sync(server.proc.wait)
    stopped_s = time.monotonic() - t_stop
    start_at = time.monotonic()
    await trio.to_thread.run_sync(server.start)  # returns once the CLI answers
    up_s = time.monotonic() - start_at
    cpu0, gen0 = server.cpu_seconds(), time.process_time()
    print(f"N={n}: server stopped ({signal.Signals(sig).name}) in {stopped_s:.1f} s, new one answers after "
          f"{up_s:.1f} s", flush=True)

    with trio.fail_after(STORM_TIMEOUT):
        while len(s.back_at) < n or any(s.back_at.get(c.hostname, 0) < start_at for c in load.clients):
            await trio.sleep(0.05)
    all_back = max(s.back_at.values()) - start_at
    with trio.fail_after(STORM_TIMEOUT):
        while not all(online_peers(o) == n - 1 for o in observers):
            await trio.sleep(0.05)
    converged = time.monotonic() - start_at
    cpu = server.cpu_seconds() - cpu0
    gen_cpu = time.process_time() - gen0
    storm_end = time.monotonic()
    prober.terminate()
    prober.wait()
    backs = sorted(t - start_at for t in s.back_at.values())

    samples = [json.loads(line) for line in probes.read_text().splitlines()]
    # From the first answer of the new server to the end of the storm; its restart is not counted.
    first_up = min(x["t"] for x in samples if x["kind"] == "api" and x["ok"] and x["t"] >= start_at)
    window = [x["s"] for x in samples if x["kind"] == "api" and first_up <= x["t"] <= storm_end]
    cli_window = [x["s"] for x in samples if x["kind"] == "cli" and first_up <= x["t"] <= storm_end]
    failed = [x for x in samples if not x["ok"] and first_up <= x["t"] <= storm_end]
    for x in failed[:3]:
        print(f"admin {x['kind']} failed during the storm, {x['t'] - first_up:.2f} s after the first answer: {x['error']}", flush=True)
    baseline = [x["s"] for x in samples if x["kind"] == "cli" and x["t"] < t_stop]
    res = {
        "nodes": n, "signal": signal.Signals(sig).name, "stopped_s": stopped_s, "server_answers_s": up_s,
        "all_back_s": all_back, "median_back_s": statistics.median(backs), "converged_s": converged,
        "server_cpu_s": cpu, "generator_cpu_s": gen_cpu, "reconnect_attempts_failed": s.reconnect_errors,
        "api_requests": len(window), "api_max_s": max(window, default=float("nan")),
        "api_p99_s": percentile(window, 99), "api_p50_s": percentile(window, 50),
        "cli_runs": len(cli_window), "cli_max_s": max(cli_window, default=float("nan")),
        "cli_p50_s": percentile(cli_window, 50),
        "cli_baseline_s": statistics.median(baseline or [float("nan")]), "admin_failures": len(failed),
        "load_before": os.getloadavg(),
    }
    print(f"N={n}: all {n} back {all_back:.1f} s after the new server started (median {res['median_back_s']:.1f} s), "
          f"every peer online at the observers after {converged:.1f} s; CPU: server {cpu:.1f} s, "
          f"generator {gen_cpu:.1f} s; "
          f"{s.reconnect_errors} failed attempts", flush=True)
    print(f"N={n}: admin socket during the storm: {len(window)} requests, p50 {res['api_p50_s'] * 1000:.0f} ms, "
          f"p99 {res['api_p99_s'] * 1000:.0f} ms, max {res['api_max_s'] * 1000:.0f} ms; admin CLI: {len(cli_window)} runs, "
          f"max {res['cli_max_s']:.2f} s (p50 {res['cli_p50_s']:.2f} s; {res['cli_baseline_s']:.2f} s before the restart); "
          f"{res['admin_failures']} failed",
          flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--observers", type=int, default=5, help="clients that track every peer's online state")
    ap.add_argument("--concurrency", type=int, default=64, help="registrations / first stream opens in flight")
    ap.add_argument("--retry", default="0.25,1.0", help="a client's redial interval: uniform between these (s)")
    ap.add_argument("--kill", action="store_true", help="SIGKILL the server instead of SIGTERM")
    ap.add_argument("--profile", help="run the server under cProfile, writing FILE (the restarted server's)")
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--probe", nargs=3, metavar=("CONFIG", "SOCKET", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        return probe(*args.probe)
    args.retry = tuple(float(x) for x in args.retry.split(","))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)", flush=True)
    res = trio.run(run, args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
