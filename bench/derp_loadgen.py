"""One load-generator process for ``bench.derp_load`` (started by it, one per share of clients).

A worker owns a share of the clients of one run. It connects them (DERP handshake for the
relay, plain TCP for the echo ceiling), reports ready, and then follows a schedule of absolute
``time.perf_counter()`` instants sent by the parent. On Linux that clock is CLOCK_MONOTONIC,
shared by every process of the machine, so a timestamp written by one worker can be compared
with the receive time in another.

The echo streams carry byte-for-byte the SendPacket frames the relay clients send, so one
receiver serves both: it walks only the 5-byte frame headers to count packets and reads the
timestamp of paced packets, without copying or parsing payloads.

Phases (all clients of all workers at once):

* flood: each client writes pre-built batches of ``batch`` frames to random peers until
  ``flood_end``; receivers count frames/bytes that arrive in [measure_start, flood_end);
* paced: each client sends one timestamped packet every ``interval`` to a random peer (the
  echo: to itself); receivers record receive time minus send time in the measuring window.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time

import trio

from derp import frames as fr
from derp.client import connect

RECV = 256 << 10
_HDR = struct.Struct(">BI")
_TS = struct.Struct("d")
# A paced packet's payload starts with b"T" and an 8-byte send time; in a RecvPacket/SendPacket
# frame that is after the 5-byte header and the 32-byte key.
_TS_AT = 5 + 32 + 1
_NEED = _TS_AT + 8


class _Count:
    __slots__ = ("packets", "bytes", "sent", "lat", "flood_on", "lat_on", "last_rx")

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0
        self.sent = 0
        self.lat: list[float] = []
        self.flood_on = False
        self.lat_on = False
        self.last_rx = 0.0


async def _receiver(stream: trio.SocketStream, ctr: _Count) -> None:
    unpack = _HDR.unpack_from
    ts = _TS.unpack_from
    now = time.perf_counter
    skip = 0  # bytes of the current frame's body still to come in later chunks
    carry = b""  # a frame start too short to read its header (and timestamp) yet
    while True:
        d = await stream.receive_some(RECV)
        if not d:
            return
        ctr.last_rx = time.perf_counter()
        if ctr.flood_on:
            ctr.bytes += len(d)
        if carry:
            d = carry + d
            carry = b""
        n = len(d)
        pos = skip
        frames = 0
        while pos < n:
            if n - pos < _NEED:
                # Header or timestamp cut by the chunk edge: keep the tail for the next read.
                carry = d[pos:]
                pos = n
                break
            t, ln = unpack(d, pos)
            frames += 1
            if ctr.lat_on and ln >= _NEED - 5 and d[pos + _TS_AT - 1] == 0x54 and t <= 5:
                ctr.lat.append(now() - ts(d, pos + _TS_AT)[0])
            pos += 5 + ln
        skip = pos - n
        if ctr.flood_on:
            ctr.packets += frames


def _batches(me: bytes, peers: list[bytes], size: int, batch: int, echo: bool) -> list[bytes]:
    others = [p for p in peers if p != me] or [me]
    payload = b"x" * size
    # A few distinct pre-built batches to random peers, cycled: the sender's cost is then one
    # send_all per batch, so the run measures the relay rather than the generator.
    return [
        b"".join(fr.encode_send_packet(me if echo else random.choice(others), payload)
                 for _ in range(batch))
        for _ in range(4)
    ]


async def _flood(stream: trio.SocketStream, batches: list[bytes], per: int, end: float,
                 ctr: _Count) -> None:
    i = 0
    now = time.perf_counter
    # Stop by the clock, not by cancel: a cancelled send_all could leave half a frame.
    while now() < end:
        await stream.send_all(batches[i & 3])
        if ctr.flood_on:
            ctr.sent += per
        i += 1


async def _paced(stream: trio.SocketStream, me: bytes, peers: list[bytes], size: int,
                 interval: float, end: float, echo: bool) -> None:
    others = [p for p in peers if p != me] or [me]
    pad = b"x" * max(0, size - 9)
    hdr = fr.frame_header(0x04, 32 + 9 + len(pad))
    now = time.perf_counter
    await trio.sleep(random.random() * interval)
    nxt = now()
    while nxt < end:
        dst = me if echo else random.choice(others)
        await stream.send_all(b"".join((hdr, dst, b"T", _TS.pack(now()), pad)))
        nxt += interval
        await trio.sleep_until(trio.current_time() + max(0.0, nxt - now()))


async def _wait(t: float) -> None:
    await trio.sleep(max(0.0, t - time.perf_counter()))


async def _main(pipe, spec: dict) -> None:  # type: ignore[no-untyped-def]
    echo = spec["mode"] == "echo"
    port = spec["port"]
    privs: list[bytes] = spec["privs"]
    peers: list[bytes] = spec["peers"]
    size, batch = spec["size"], spec["batch"]
    streams: list[trio.SocketStream] = []
    mine: list[bytes] = []
    sem = trio.Semaphore(32)  # bounded concurrent handshakes

    async def dial(priv: bytes) -> None:
        async with sem:
            with trio.fail_after(60):
                s = await trio.open_tcp_stream("127.0.0.1", port)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if not echo:
                    c = await connect(s, priv, host="127.0.0.1")
                    if c._decoder.buffered:  # nothing should follow ServerInfo yet
                        raise RuntimeError("unexpected frames after the handshake")
                streams.append(s)
                mine.append(fr.public_key(priv))

    async with trio.open_nursery() as nursery:
        for p in privs:
            nursery.start_soon(dial, p)
    pipe.send("ready")
    sched = await trio.to_thread.run_sync(pipe.recv)
    ctr = _Count()
    async with trio.open_nursery() as nursery:
        for s in streams:
            nursery.start_soon(_receiver, s, ctr)
        # flood
        await _wait(sched["flood_start"])
        async with trio.open_nursery() as senders:
            for s, me in zip(streams, mine):
                senders.start_soon(_flood, s, _batches(me, peers, size, batch, echo), batch,
                                   sched["flood_end"], ctr)
            await _wait(sched["flood_measure"])
            ctr.flood_on = True
            await _wait(sched["flood_end"])
            ctr.flood_on = False
        # Flood frames still queued in sockets would delay the paced packets behind them:
        # report drained once nothing has arrived for a while, and wait for the parent's go.
        with trio.move_on_after(20):
            while time.perf_counter() - ctr.last_rx < 0.3:
                await trio.sleep(0.05)
        pipe.send("drained")
        sched = await trio.to_thread.run_sync(pipe.recv)
        await _wait(sched["paced_start"])
        async with trio.open_nursery() as senders:
            for s, me in zip(streams, mine):
                senders.start_soon(_paced, s, me, peers, size, sched["interval"],
                                   sched["paced_end"], echo)
            await _wait(sched["paced_measure"])
            ctr.lat_on = True
            await _wait(sched["paced_end"])
        await trio.sleep(0.2)  # late arrivals of the last paced packets
        ctr.lat_on = False
        nursery.cancel_scope.cancel()
    for s in streams:
        with trio.move_on_after(1, shield=True):
            await s.aclose()
    pipe.send({"packets": ctr.packets, "bytes": ctr.bytes, "sent": ctr.sent, "lat": ctr.lat,
               "pid": os.getpid()})


def run(pipe, spec: dict) -> None:  # type: ignore[no-untyped-def]
    """Process entry point: run one worker's share and send its counts back over ``pipe``."""
    try:
        trio.run(_main, pipe, spec)
    except BaseException as exc:  # report, so the parent does not wait for a dead worker
        pipe.send({"error": repr(exc)})
        raise
