"""DERP relay load generator (run by hand: ``python -m bench.derp_load``).

Starts, as child processes on loopback, one relay (``python -m derp``) per transport (plain
HTTP, TLS) and worker count asked for, and a Trio echo server per transport. For each client
count it runs the same two phases against the echo server (the "ceiling": one Trio process
forwarding the same bytes with no relay logic) and then against each relay, one after the
other, so that plain and TLS are measured side by side under the same load of the machine.
Each run uses ``--procs`` generator processes (``bench.derp_loadgen``) that share the clients
between them:

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
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import trio

from bench import derp_loadgen
from derp import frames as fr
from derp.tls import TLSStream

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


async def _echo_main(port: int, cert: str, key: str) -> None:
    ctx = None
    if cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)

    async def handler(stream: trio.SocketStream) -> None:
        s: trio.abc.Stream = stream
        try:
            if ctx is not None:
                s = await TLSStream.accept(stream, ctx)
            while True:
                d = await s.receive_some(RECV)
                if not d:
                    return
                await s.send_all(d)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(s)

    await trio.serve_tcp(handler, port, host="127.0.0.1")


# ---------------------------------------------------------------------------------------------
# one run: N clients over P generator processes


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a relay's workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir("/proc/%d/task" % p):
                with open("/proc/%d/task/%s/children" % (p, task)) as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and its descendants so far (Linux /proc)."""
    total = 0
    for p in _tree(pid):
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine spent not idle so far (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _cpu_between(groups: list[list[int]], t0: float, t1: float) -> list[float]:
    """For each group of pids (each with its descendants), the cores it used from
    perf_counter instant t0 to t1; then the cores the whole machine was busy."""
    time.sleep(max(0.0, t0 - time.perf_counter()))
    c0, w0 = [sum(map(_cpu_seconds, g)) for g in groups], time.perf_counter()
    m0 = _machine_busy_seconds()
    time.sleep(max(0.0, t1 - time.perf_counter()))
    wall = max(1e-9, time.perf_counter() - w0)
    used = [(sum(map(_cpu_seconds, g)) - c) / wall for g, c in zip(groups, c0)]
    return used + [(_machine_busy_seconds() - m0) / wall]


@dataclass
class Target:
    """One server under test: a relay or an echo server, plain or TLS."""

    kind: str  # "relay" or "echo"
    tls: bool
    workers: int
    port: int = 0
    proc: subprocess.Popen | None = None
    rows: dict = field(default_factory=dict)  # client count -> result shown
    runs: dict = field(default_factory=dict)  # client count -> all results

    @property
    def name(self) -> str:
        t = "TLS" if self.tls else "plain"
        return "%s %s" % (self.kind, t) if self.kind == "echo" else "relay %s, %d worker%s" % (
            t, self.workers, "" if self.workers == 1 else "s")


def run_once(target: Target, n: int, args: argparse.Namespace, ca: str) -> dict:
    ctx = multiprocessing.get_context("fork")  # the parent runs no Trio loop: fork is safe
    privs = [fr.generate_private_key() for _ in range(n)]
    peers = [fr.public_key(k) for k in privs]
    nproc = max(1, min(args.procs, n))
    workers = []
    for w in range(nproc):
        a, b = ctx.Pipe()
        spec = {"mode": target.kind, "port": target.port, "privs": privs[w::nproc],
                "peers": peers, "size": args.size, "batch": args.batch,
                "ca": ca if target.tls else None}
        proc = ctx.Process(target=derp_loadgen.run, args=(b, spec), daemon=True)
        proc.start()
        workers.append((proc, a))
    groups = [[target.proc.pid], [proc.pid for proc, _ in workers]]  # type: ignore[union-attr]
    try:
        for proc, a in workers:
            if not a.poll(120):
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
        nan = float("nan")
        flood_cpu, gen_cpu, busy = (
            _cpu_between(groups, sched["flood_measure"], sched["flood_end"])
            if flood else (nan, nan, nan))
        for proc, a in workers:
            if not a.poll(args.seconds * 2 + 30) or a.recv() != "drained":
                raise RuntimeError("generator %d did not finish the flood" % proc.pid)
        p0 = time.perf_counter() + 0.1
        sched = {"paced_start": p0, "paced_measure": p0 + 0.5,
                 "paced_end": p0 + 0.5 + args.seconds, "interval": args.interval}
        for _, a in workers:
            a.send(sched)
        paced_cpu = _cpu_between(groups, sched["paced_measure"], sched["paced_end"])[0]
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
    sent = sum(r["sent"] for r in res)
    flood = 0.0 if args.paced_only else args.seconds
    return {
        "pps": pkts / flood if flood else 0.0,
        "MBps": pkts * args.size / flood / 1e6 if flood else 0.0,
        "delivered": pkts / max(1, sent),
        "p50": _pct(lat, 0.50) * 1e3, "p99": _pct(lat, 0.99) * 1e3, "samples": len(lat),
        "paced_pps": n / args.interval,
        "flood_cpu": flood_cpu, "paced_cpu": paced_cpu, "gen_cpu": gen_cpu,
        # what the rest of the machine (other people's work) used meanwhile
        "other_cpu": busy - flood_cpu - gen_cpu,
        "us_per_pkt": flood_cpu / max(1e-9, pkts / flood) * 1e6 if flood else nan,
        # per packet the relay received, delivered or dropped: what one costs it to handle
        "us_per_sent": flood_cpu / max(1e-9, sent / flood) * 1e6 if flood else nan,
    }


# ---------------------------------------------------------------------------------------------
# the servers and the table


def _make_cert(tmp: str) -> tuple[str, str, str]:
    """A CA and a leaf for 127.0.0.1, as files: (ca, cert chain, key)."""
    import trustme  # a test dependency; the benchmark needs it only for TLS

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    paths = [os.path.join(tmp, n) for n in ("ca.pem", "cert.pem", "key.pem")]
    ca.cert_pem.write_to_path(paths[0])
    leaf.private_key_pem.write_to_path(paths[2])
    with open(paths[1], "wb") as f:
        for pem in leaf.cert_chain_pems:
            f.write(pem.bytes())
    return paths[0], paths[1], paths[2]


def _start(target: Target, tmp: str, cert: str, key: str, profile: str) -> None:
    target.port = _free_port()
    if target.kind == "echo":
        cmd = [sys.executable, "-m", "bench.derp_load", "--echo-server", str(target.port)]
        if target.tls:
            cmd += ["--echo-cert", cert, "--echo-key", key]
    else:
        prof = ["-m", "cProfile", "-o", profile] if profile else []
        cmd = [sys.executable, *prof, "-m", "derp", "-a", "127.0.0.1:%d" % target.port,
               "--no-stun", "--key-file", os.path.join(tmp, "k"), "--log-level", "WARNING"]
        cmd += ["--cert", cert, "--key", key] if target.tls else ["--plain-http"]
        cmd += ["--workers", str(target.workers)]
    target.proc = subprocess.Popen(cmd)


def _stop(target: Target, profile: bool) -> None:
    p = target.proc
    if p is None:
        return
    if profile and target.kind == "relay":
        p.send_signal(signal.SIGINT)  # KeyboardInterrupt lets cProfile write its file
    else:
        p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def _line(n: int, t: Target, r: dict) -> str:
    return ("N=%4d %-26s %8.0f pkt/s %7.1f MB/s (%3.0f%% delivered, server CPU %.2f cores = "
            "%.1f us/pkt delivered, %.1f us/pkt sent; generators %.2f, others %.2f); paced "
            "%.0f pkt/s: p50 %.2f ms p99 %.2f ms (CPU %.2f)"
            % (n, t.name, r["pps"], r["MBps"], r["delivered"] * 100, r["flood_cpu"],
               r["us_per_pkt"], r["us_per_sent"], r["gen_cpu"], r["other_cpu"],
               r["paced_pps"], r["p50"], r["p99"], r["paced_cpu"]))


def _row(t: Target, n: int, r: dict, echo: dict | None) -> str:
    added = ("%.2f / %.2f" % (r["p50"] - echo["p50"], r["p99"] - echo["p99"])
             if echo and t.kind == "relay" else "")
    return ("| %d | %s | %.0fk | %.0f | %.0f%% | %.2f | %.1f / %.1f | %.2f | %.2f | %.2f / %.2f "
            "| %s |"
            % (n, t.name, r["pps"] / 1e3, r["MBps"], r["delivered"] * 100, r["flood_cpu"],
               r["us_per_pkt"], r["us_per_sent"], r["gen_cpu"], r["other_cpu"], r["p50"],
               r["p99"], added))


def main_sync(args: argparse.Namespace) -> None:
    tmp = tempfile.mkdtemp(prefix="derp-bench-")
    ca, cert, key = _make_cert(tmp) if "tls" in args.transports else ("", "", "")
    targets: list[Target] = []
    for tr in args.transports:
        if not args.relay_only:
            targets.append(Target("echo", tr == "tls", 1))
    for w in args.workers:
        for tr in args.transports:
            targets.append(Target("relay", tr == "tls", w))
    try:
        for t in targets:
            _start(t, tmp, cert, key, args.profile)
        for t in targets:
            _wait_port(t.port)
        print("packet size %d B, %.0f s per phase, %d generator processes, %d packets per "
              "write, paced interval %.0f ms, %d cores"
              % (args.size, args.seconds, args.procs, args.batch, args.interval * 1e3,
                 os.cpu_count() or 0))
        for rnd in range(args.rounds):
            for n in args.clients:
                for t in targets:
                    r = run_once(t, n, args, ca)
                    t.runs.setdefault(n, []).append(r)
                    # The table shows, per cell, the run of median throughput.
                    runs = sorted(t.runs[n], key=lambda x: x["MBps"])
                    t.rows[n] = runs[len(runs) // 2]
                    print(_line(n, t, r), flush=True)
        print()
        print("| clients | server | pkt/s | MB/s | delivered | server CPU (cores) | "
              "server µs CPU per pkt delivered / sent | generators CPU | others' CPU | "
              "paced p50 / p99 ms | "
              "added p50 / p99 ms |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
        for n in args.clients:
            echo = {tr: t.rows[n] for t in targets if t.kind == "echo"
                    for tr in [t.tls]}
            for t in targets:
                print(_row(t, n, t.rows[n], echo.get(t.tls)))
        print()
        for w in args.workers:
            rel = {t.tls: t for t in targets if t.kind == "relay" and t.workers == w}
            if True in rel and False in rel:
                ratios = ", ".join("N=%d %.0f%%" % (n, 100 * rel[True].rows[n]["MBps"]
                                                    / max(1e-9, rel[False].rows[n]["MBps"]))
                                   for n in args.clients)
                print("TLS / plain throughput, %d worker%s: %s"
                      % (w, "" if w == 1 else "s", ratios))
    finally:
        for t in targets:
            _stop(t, bool(args.profile))


def _list(s: str) -> list[int]:
    return [int(x) for x in s.split(",")]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.derp_load")
    p.add_argument("--clients", type=_list, default=[2, 100, 1000])
    p.add_argument("--transports", type=lambda s: s.split(","), default=["plain", "tls"],
                   help="plain, tls or both (comma-separated)")
    p.add_argument("--workers", type=_list, default=sorted({1, 2, os.cpu_count() or 1}),
                   help="relay worker processes, one relay per value (comma-separated; "
                        "default 1, 2 and one per core)")
    p.add_argument("--size", type=int, default=1200, help="packet payload bytes")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--interval", type=float, default=0.1,
                   help="paced latency phase: seconds between packets per client")
    p.add_argument("--batch", type=int, default=64, help="packets per write in the flood")
    p.add_argument("--procs", type=int, default=2, help="generator processes")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat everything; the table shows each cell's median run")
    p.add_argument("--relay-only", action="store_true", help="skip the echo ceiling")
    p.add_argument("--paced-only", action="store_true", help="skip the flood (for profiling)")
    p.add_argument("--profile", default="", help="run the relay under cProfile, write here")
    p.add_argument("--echo-server", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--echo-cert", default="", help=argparse.SUPPRESS)
    p.add_argument("--echo-key", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.echo_server:
        try:
            trio.run(_echo_main, args.echo_server, args.echo_cert, args.echo_key)
        except KeyboardInterrupt:
            pass
        return
    if max(args.clients) > 2000 or args.seconds > 30 or not 1 <= args.procs <= 8:
        p.error("bounded: at most 2000 clients, 30 s per phase, 8 generator processes")
    if not set(args.transports) <= {"plain", "tls"} or not args.transports:
        p.error("--transports: plain, tls or plain,tls")
    if min(args.workers) < 1 or max(args.workers) > 64:
        p.error("--workers: 1 to 64")
    if args.profile and len(args.workers) * len(args.transports) > 1:
        p.error("--profile needs one relay: one transport and one worker count")
    if args.size < 9 or args.size + 32 > fr.MAX_PACKET_SIZE:
        p.error("--size must leave room for the timestamp and fit a DERP packet")
    main_sync(args)


if __name__ == "__main__":
    main()
