"""DERP relay load generator (run by hand: ``python -m bench.derp_load``).

Starts a relay (``python -m derp --plain-http``) and a plain TCP echo server as child processes
on loopback, then, for each client count, runs in this process:

* throughput: every client sends batches of packets to random peers as fast as TCP lets it,
  for ``--seconds``; we count packets and bytes that arrive at the receivers;
* latency: every client sends one timestamped packet per ``--interval`` to a random peer;
  the one-way relay latency is receive time minus send time (same clock, same process);
* the same throughput pattern against the echo server (the "ceiling": one TCP hop each way,
  no relay logic), and a ping-pong through it for the baseline latency (RTT/2).

"Added latency" = relay one-way latency minus echo one-way latency at the same percentile.
Everything is bounded in client count and time; only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

import trio

from derp import frames as fr
from derp.client import DerpClient, connect

RECV = 256 << 10


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


async def _wait_port(port: int) -> None:
    with trio.fail_after(20):
        while True:
            try:
                s = await trio.open_tcp_stream("127.0.0.1", port)
                await s.aclose()
                return
            except OSError:
                await trio.sleep(0.05)


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
# relay clients


async def _dial(port: int, n: int) -> list[DerpClient]:
    clients: list[DerpClient] = []
    sem = trio.Semaphore(64)  # bounded concurrent handshakes

    async def one() -> None:
        async with sem:
            with trio.fail_after(30):
                s = await trio.open_tcp_stream("127.0.0.1", port)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                clients.append(await connect(s, fr.generate_private_key(), host="127.0.0.1"))

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return clients


class Counter:
    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0
        self.lat: list[float] = []
        self.measuring = False


async def _receiver(c: DerpClient, ctr: Counter) -> None:
    dec = c._decoder  # read frames straight from the buffer: cheapest path in Python
    stream = c.stream
    while True:
        while True:
            ev = dec.next_event()
            if ev is fr.NEED_DATA:
                break
            if type(ev) is fr.RecvPacket:
                p = ev.packet
                if ctr.measuring:
                    ctr.packets += 1
                    ctr.bytes += len(p)
                    if p[:1] == b"T":
                        ctr.lat.append(time.perf_counter() - struct.unpack_from("d", p, 1)[0])
            elif type(ev) is fr.Ping:
                await c.send(fr.Pong(ev.data))
        d = await stream.receive_some(RECV)
        if not d:
            return
        dec.receive_data(d)


async def _flood_sender(c: DerpClient, peers: list[bytes], size: int, batch: int,
                        stop: list[bool]) -> None:
    me = c.public_key
    others = [p for p in peers if p != me]
    payload = b"x" * size
    # Pre-encode a few batches to random peers, then cycle them: the sender's own cost is
    # then one send_all per batch, so we measure the relay rather than the generator.
    batches = [
        b"".join(fr.encode_send_packet(random.choice(others), payload) for _ in range(batch))
        for _ in range(4)
    ]
    i = 0
    # Stop by flag, not by cancel: a cancelled send_all could leave half a frame on the wire.
    while not stop[0]:
        await c.send_raw(batches[i & 3])
        i += 1


async def _paced_sender(c: DerpClient, peers: list[bytes], size: int, interval: float) -> None:
    me = c.public_key
    others = [p for p in peers if p != me]
    pad = b"x" * max(0, size - 9)
    await trio.sleep(random.random() * interval)
    while True:
        pkt = b"T" + struct.pack("d", time.perf_counter()) + pad
        await c.send_raw(fr.encode_send_packet(random.choice(others), pkt))
        await trio.sleep(interval)


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def relay_run(port: int, n: int, size: int, seconds: float, interval: float,
                    batch: int) -> dict:
    clients = await _dial(port, n)
    peers = [c.public_key for c in clients]
    ctr = Counter()
    out: dict = {"clients": n, "size": size}
    async with trio.open_nursery() as nursery:
        for c in clients:
            nursery.start_soon(_receiver, c, ctr)
        # throughput
        stop = [False]
        async with trio.open_nursery() as senders:
            for c in clients:
                senders.start_soon(_flood_sender, c, peers, size, batch, stop)
            await trio.sleep(min(1.0, seconds / 4))  # warm-up
            ctr.measuring = True
            t0 = time.perf_counter()
            await trio.sleep(seconds)
            ctr.measuring = False
            dt = time.perf_counter() - t0
            stop[0] = True
        out["pps"] = ctr.packets / dt
        out["MBps"] = ctr.bytes / dt / 1e6
        await trio.sleep(0.5)  # drain
        # latency (paced)
        ctr.lat = []
        async with trio.open_nursery() as senders:
            for c in clients:
                senders.start_soon(_paced_sender, c, peers, size, interval)
            await trio.sleep(0.5)
            ctr.measuring = True
            await trio.sleep(seconds)
            ctr.measuring = False
            senders.cancel_scope.cancel()
        out["lat_p50_ms"] = _pct(ctr.lat, 0.50) * 1e3
        out["lat_p99_ms"] = _pct(ctr.lat, 0.99) * 1e3
        out["lat_samples"] = len(ctr.lat)
        out["paced_pps"] = n / interval
        nursery.cancel_scope.cancel()
    for c in clients:
        with trio.move_on_after(1, shield=True):
            await c.aclose()
    return out


# ---------------------------------------------------------------------------------------------
# echo ceiling


async def echo_run(port: int, n: int, size: int, seconds: float, batch: int) -> dict:
    streams = []
    for _ in range(n):
        s = await trio.open_tcp_stream("127.0.0.1", port)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        streams.append(s)
    total = [0]
    measuring = [False]
    # The same bytes per write as the relay senders (frames of size+37).
    chunk = b"x" * ((size + 37) * batch)

    async def pump(s: trio.SocketStream) -> None:
        async def reader() -> None:
            while True:
                d = await s.receive_some(RECV)
                if not d:
                    return
                if measuring[0]:
                    total[0] += len(d)

        async with trio.open_nursery() as nn:
            nn.start_soon(reader)
            while True:
                await s.send_all(chunk)

    async with trio.open_nursery() as nursery:
        for s in streams:
            nursery.start_soon(pump, s)
        await trio.sleep(min(1.0, seconds / 4))
        measuring[0] = True
        t0 = time.perf_counter()
        await trio.sleep(seconds)
        measuring[0] = False
        dt = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    # one-way latency baseline: ping-pong of one packet on one connection, RTT/2
    s = streams[0]
    lat = []
    msg = b"y" * (size + 37)
    for _ in range(2000):
        t = time.perf_counter()
        await s.send_all(msg)
        got = 0
        while got < len(msg):
            got += len(await s.receive_some(RECV))
        lat.append((time.perf_counter() - t) / 2)
    for s in streams:
        await s.aclose()
    return {"clients": n, "pps": total[0] / (size + 37) / dt, "MBps": total[0] / dt / 1e6,
            "lat_p50_ms": _pct(lat, 0.5) * 1e3, "lat_p99_ms": _pct(lat, 0.99) * 1e3}


async def main_async(args: argparse.Namespace) -> None:
    relay_port, echo_port = _free_port(), _free_port()
    tmp = tempfile.mkdtemp(prefix="derp-bench-")
    env = dict(os.environ)
    prof = ["-m", "cProfile", "-o", args.profile] if args.profile else []
    relay = subprocess.Popen(
        [sys.executable, *prof, "-m", "derp", "-a", "127.0.0.1:%d" % relay_port, "--plain-http",
         "--no-stun", "--key-file", os.path.join(tmp, "k"), "--log-level", "WARNING"],
        env=env,
    )
    echo = subprocess.Popen([sys.executable, "-m", "bench.derp_load", "--echo-server",
                             str(echo_port)], env=env)
    try:
        await _wait_port(relay_port)
        await _wait_port(echo_port)
        print("packet size %d B, %.0f s per phase, paced interval %.0f ms"
              % (args.size, args.seconds, args.interval * 1e3))
        for n in args.clients:
            e = await echo_run(echo_port, n, args.size, args.seconds, args.batch)
            r = await relay_run(relay_port, n, args.size, args.seconds, args.interval,
                                args.batch)
            add50 = r["lat_p50_ms"] - e["lat_p50_ms"]
            add99 = r["lat_p99_ms"] - e["lat_p99_ms"]
            print("N=%4d relay: %8.0f pkt/s %7.1f MB/s | echo ceiling: %8.0f pkt/s %7.1f MB/s"
                  % (n, r["pps"], r["MBps"], e["pps"], e["MBps"]))
            print("       latency at %.0f pkt/s: relay one-way p50 %.2f ms p99 %.2f ms; echo "
                  "one-way p50 %.3f ms p99 %.3f ms; added p50 %.2f ms p99 %.2f ms (n=%d)"
                  % (r["paced_pps"], r["lat_p50_ms"], r["lat_p99_ms"], e["lat_p50_ms"],
                     e["lat_p99_ms"], add50, add99, r["lat_samples"]))
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
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--interval", type=float, default=0.1,
                   help="paced latency phase: seconds between packets per client")
    p.add_argument("--batch", type=int, default=32, help="packets per write in the flood")
    p.add_argument("--profile", default="", help="run the relay under cProfile, write here")
    p.add_argument("--echo-server", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.echo_server:
        try:
            trio.run(_echo_main, args.echo_server)
        except KeyboardInterrupt:
            pass
        return
    if max(args.clients) > 2000 or args.seconds > 60:
        p.error("bounded: at most 2000 clients and 60 s per phase")
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
