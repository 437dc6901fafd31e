"""DERP relay load generator (run by hand: ``python -m bench.derp_load``).

Starts a relay (``python -m derp --plain-http``) and a plain Trio TCP echo server as child
processes on loopback. For each client count it runs the same two phases against the echo
server (the "ceiling": one Trio process forwarding the same bytes with no relay logic) and then
against the relay, each time from ``--procs`` generator processes (``bench.derp_loadgen``) that
share the clients between them:

* flood: every client writes pre-built batches of SendPacket frames to random peers for
  ``--seconds``; we count packets and bytes that arrive at the receivers;
* paced: every client sends one timestamped packet per ``--interval`` to a random peer; the
  latency is receive time minus send time (CLOCK_MONOTONIC, shared by all processes). Through
  the echo server that is one trip there and back (two loopback hops through one Trio process,
  like sender -> relay -> receiver), so "added latency" = relay minus echo at the same
  percentile, load and client count.

Everything is bounded in client count and time; only 127.0.0.1 is used; it stops by itself.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import trio

from bench import derp_loadgen
from derp import frames as fr

RECV = 256 << 10


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# echo server child (ceiling)


async def _echo_main(port: int) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        try:
            while True:
                d = await stream.receive_some(RECV)
                if not d:
                    return
                await stream.send_all(d)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    await trio.serve_tcp(handler, port, host="127.0.0.1")


# ---------------------------------------------------------------------------------------------
# one run: N clients over P generator processes


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_between(pid: int, t0: float, t1: float) -> float:
    """The fraction of one core that ``pid`` used from perf_counter instant t0 to t1."""
    time.sleep(max(0.0, t0 - time.perf_counter()))
    c0, w0 = _cpu_seconds(pid), time.perf_counter()
    time.sleep(max(0.0, t1 - time.perf_counter()))
    return (_cpu_seconds(pid) - c0) / max(1e-9, time.perf_counter() - w0)


def run_once(mode: str, port: int, n: int, args: argparse.Namespace, server_pid: int) -> dict:
    ctx = multiprocessing.get_context("fork")  # the parent runs no Trio loop: fork is safe
    privs = [fr.generate_private_key() for _ in range(n)]
    peers = [fr.public_key(k) for k in privs]
    nproc = max(1, min(args.procs, n))
    workers = []
    for w in range(nproc):
        a, b = ctx.Pipe()
        spec = {"mode": mode, "port": port, "privs": privs[w::nproc], "peers": peers,
                "size": args.size, "batch": args.batch}
        proc = ctx.Process(target=derp_loadgen.run, args=(b, spec), daemon=True)
        proc.start()
        workers.append((proc, a))
    try:
        for proc, a in workers:
            if not a.poll(90):
                raise RuntimeError("generator %d did not connect its clients" % proc.pid)
            msg = a.recv()
            if msg != "ready":
                raise RuntimeError("generator failed: %r" % (msg,))
        t = time.perf_counter() + 0.3
        warm = min(1.0, args.seconds / 4)
        flood = 0.0 if args.paced_only else args.seconds
        sched = {"flood_start": t, "flood_measure": t + warm,
                 "flood_end": t + warm + flood if flood else t}
        for _, a in workers:
            a.send(sched)
        flood_cpu = (_cpu_between(server_pid, sched["flood_measure"], sched["flood_end"])
                     if flood else float("nan"))
        for proc, a in workers:
            if not a.poll(args.seconds * 2 + 30) or a.recv() != "drained":
                raise RuntimeError("generator %d did not finish the flood" % proc.pid)
        p0 = time.perf_counter() + 0.1
        sched = {"paced_start": p0, "paced_measure": p0 + 0.5,
                 "paced_end": p0 + 0.5 + args.seconds, "interval": args.interval}
        for _, a in workers:
            a.send(sched)
        paced_cpu = _cpu_between(server_pid, sched["paced_measure"], sched["paced_end"])
        res = []
        for proc, a in workers:
            if not a.poll(args.seconds * 2 + 30):
                raise RuntimeError("generator %d did not finish" % proc.pid)
            r = a.recv()
            if "error" in r:
                raise RuntimeError("generator failed: %s" % r["error"])
            res.append(r)
    finally:
        for proc, _ in workers:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
    lat = [x for r in res for x in r["lat"]]
    pkts = sum(r["packets"] for r in res)
    flood = 0.0 if args.paced_only else args.seconds
    return {
        "pps": pkts / flood if flood else 0.0,
        "MBps": pkts * args.size / flood / 1e6 if flood else 0.0,
        "delivered": pkts / max(1, sum(r["sent"] for r in res)),
        "p50": _pct(lat, 0.50) * 1e3, "p99": _pct(lat, 0.99) * 1e3, "samples": len(lat),
        "paced_pps": n / args.interval,
        "flood_cpu": flood_cpu, "paced_cpu": paced_cpu,
    }


def main_sync(args: argparse.Namespace) -> None:
    relay_port, echo_port = _free_port(), _free_port()
    tmp = tempfile.mkdtemp(prefix="derp-bench-")
    prof = ["-m", "cProfile", "-o", args.profile] if args.profile else []
    relay = subprocess.Popen(
        [sys.executable, *prof, "-m", "derp", "-a", "127.0.0.1:%d" % relay_port, "--plain-http",
         "--no-stun", "--key-file", os.path.join(tmp, "k"), "--log-level", "WARNING"],
    )
    echo = subprocess.Popen([sys.executable, "-m", "bench.derp_load", "--echo-server",
                             str(echo_port)])
    try:
        _wait_port(relay_port)
        _wait_port(echo_port)
        print("packet size %d B, %.0f s per phase, %d generator processes, %d packets per "
              "write, paced interval %.0f ms"
              % (args.size, args.seconds, args.procs, args.batch, args.interval * 1e3))
        for n in args.clients:
            e = (run_once("echo", echo_port, n, args, echo.pid)
                 if not args.relay_only else None)
            r = run_once("relay", relay_port, n, args, relay.pid)
            print("N=%4d relay: %8.0f pkt/s %7.1f MB/s (%.0f%% of sent delivered, relay CPU "
                  "%.0f%%)" % (n, r["pps"], r["MBps"], r["delivered"] * 100,
                               r["flood_cpu"] * 100), end="")
            if e:
                print(" | echo ceiling: %8.0f pkt/s %7.1f MB/s (echo CPU %.0f%%)"
                      % (e["pps"], e["MBps"], e["flood_cpu"] * 100), end="")
            print()
            print("       paced %.0f pkt/s (relay CPU %.0f%%): relay one-way p50 %.2f ms p99 "
                  "%.2f ms (n=%d)" % (r["paced_pps"], r["paced_cpu"] * 100, r["p50"], r["p99"],
                                      r["samples"]), end="")
            if e:
                print("; echo round trip p50 %.2f ms p99 %.2f ms; added p50 %.2f ms p99 %.2f ms"
                      % (e["p50"], e["p99"], r["p50"] - e["p50"], r["p99"] - e["p99"]), end="")
            print()
            sys.stdout.flush()
    finally:
        if args.profile:
            relay.send_signal(signal.SIGINT)  # KeyboardInterrupt lets cProfile write its file
        for p in (relay, echo):
            if p is not relay or not args.profile:
                p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.derp_load")
    p.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")],
                   default=[2, 100, 1000])
    p.add_argument("--size", type=int, default=1200, help="packet payload bytes")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--interval", type=float, default=0.1,
                   help="paced latency phase: seconds between packets per client")
    p.add_argument("--batch", type=int, default=64, help="packets per write in the flood")
    p.add_argument("--procs", type=int, default=2, help="generator processes")
    p.add_argument("--relay-only", action="store_true", help="skip the echo ceiling")
    p.add_argument("--paced-only", action="store_true", help="skip the flood (for profiling)")
    p.add_argument("--profile", default="", help="run the relay under cProfile, write here")
    p.add_argument("--echo-server", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.echo_server:
        try:
            trio.run(_echo_main, args.echo_server)
        except KeyboardInterrupt:
            pass
        return
    if max(args.clients) > 2000 or args.seconds > 30 or not 1 <= args.procs <= 8:
        p.error("bounded: at most 2000 clients, 30 s per phase, 8 generator processes")
    if args.size < 9 or args.size + 32 > fr.MAX_PACKET_SIZE:
        p.error("--size must leave room for the timestamp and fit a DERP packet")
    main_sync(args)


if __name__ == "__main__":
    main()
