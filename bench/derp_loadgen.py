"""One load-generator process for ``bench.derp_load`` (started by it, one per share of clients).

A worker owns a share of the clients of one run. It connects them (DERP handshake for the
relay, plain TCP for the echo ceiling), reports ready, and then follows a schedule of absolute
``time.perf_counter()`` instants sent by the parent. On Linux that clock is CLOCK_MONOTONIC,
shared by every process of the machine, so a timestamp written by one worker can be compared
with the receive time in another.

Trio is used only to dial and do the handshakes; the sockets are then detached and driven by
one plain epoll loop, so that a packet costs the generator a few microseconds instead of a
Trio task switch on each side. Over TLS the handshake's ``ssl.SSLObject`` and memory BIOs go
with the socket: a batch is encrypted with one call, and each read is decrypted record by
record before its frame headers are walked.

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

import errno
import heapq
import os
import random
import select
import socket
import ssl
import struct
import time

import trio

from derp import frames as fr
from derp.client import connect
from derp.tls import TLSStream

RECV = 256 << 10
# One receive buffer for the whole process (the loop is synchronous): a fresh 256 KiB per recv
# would be an mmap, page faults and an munmap every time.
_SCRATCH = bytearray(RECV)
_VIEW = memoryview(_SCRATCH)
_HDR = struct.Struct(">BI")
_TS = struct.Struct("d")
# A paced packet's payload starts with b"T" and an 8-byte send time; in a RecvPacket/SendPacket
# frame that is after the 5-byte header and the 32-byte key.
_TS_AT = 5 + 32 + 1
_NEED = _TS_AT + 8


class _Peer:
    """One client connection as the epoll loop sees it."""

    __slots__ = ("sock", "key", "batches", "i", "pending", "skip", "carry", "tls", "bio_in",
                 "bio_out")

    def __init__(self, sock: socket.socket, key: bytes, tls: TLSStream | None = None) -> None:
        self.sock = sock
        self.key = key
        # TLS state taken over from the handshake's stream (None: plain TCP)
        self.tls = tls.ssl_object if tls is not None else None
        self.bio_in = tls.incoming if tls is not None else None
        self.bio_out = tls.outgoing if tls is not None else None
        self.batches: list[bytes] = []
        self.i = 0
        self.pending: memoryview | None = None  # rest of a frame write cut short
        self.skip = 0  # bytes of the current incoming frame's body still to come
        self.carry = b""  # a frame start too short to read its header and timestamp yet


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


def _receive(p: _Peer, ctr: _Count) -> bool:
    """Read what is there (decrypting it over TLS) and walk the frame headers; False on EOF."""
    try:
        got = p.sock.recv_into(_SCRATCH)
    except BlockingIOError:
        return True
    if not got:
        return False
    now = time.perf_counter()
    ctr.last_rx = now
    if p.tls is None:
        _walk(p, ctr, _VIEW[:got], now)
        return True
    p.bio_in.write(_VIEW[:got])  # type: ignore[union-attr]
    while True:
        try:
            d = p.tls.read(16384)  # one TLS record at most
        except ssl.SSLWantReadError:
            return True
        if not d:  # close_notify
            return False
        _walk(p, ctr, d, now)


def _walk(p: _Peer, ctr: _Count, d: bytes | memoryview, now: float) -> None:
    """Count the frames of plaintext ``d`` and take the timestamps of paced packets (``d`` may
    be a view of the scratch buffer: nothing of it is kept without a copy)."""
    if ctr.flood_on:
        ctr.bytes += len(d)
    if p.carry:
        d = p.carry + d
        p.carry = b""
    n = len(d)
    pos = p.skip
    frames = 0
    unpack = _HDR.unpack_from
    while pos < n:
        if n - pos < _NEED:
            # Header or timestamp cut by the chunk edge: keep the tail for the next read.
            p.carry = bytes(d[pos:])
            pos = n
            break
        t, ln = unpack(d, pos)
        frames += 1
        if ctr.lat_on and t <= 5 and ln >= _NEED - 5 and d[pos + _TS_AT - 1] == 0x54:  # "T"
            ctr.lat.append(now - _TS.unpack_from(d, pos + _TS_AT)[0])
        pos += 5 + ln
    p.skip = pos - n
    if ctr.flood_on:
        ctr.packets += frames


def _write(p: _Peer, data: bytes) -> bool:
    """Write frames ``data`` (encrypted first over TLS) without blocking; keep any rest in
    ``p.pending``. True if all of it went."""
    if p.tls is not None:
        p.tls.write(data)
        data = p.bio_out.read()  # type: ignore[union-attr]
    return _send(p, data)


def _send(p: _Peer, data: bytes | memoryview) -> bool:
    """Write bytes as they go on the wire; the rest goes to ``p.pending``. True if all went."""
    try:
        n = p.sock.send(data)
    except BlockingIOError:
        n = 0
    if n == len(data):
        p.pending = None
        return True
    p.pending = memoryview(data)[n:]
    return False


def _batches(me: bytes, peers: list[bytes], size: int, batch: int, echo: bool) -> list[bytes]:
    others = [p for p in peers if p != me] or [me]
    payload = b"x" * size
    # A few distinct pre-built batches to random peers, cycled: the sender's cost is then one
    # send per batch, so the run measures the relay rather than the generator.
    return [
        b"".join(fr.encode_send_packet(me if echo else random.choice(others), payload)
                 for _ in range(batch))
        for _ in range(4)
    ]


def _poll(ep: select.epoll, by_fd: dict[int, _Peer], ctr: _Count, timeout: float,
          on_writable) -> None:  # type: ignore[no-untyped-def]
    events = ep.poll(timeout)
    # Receive everything first, then send: a receiver that falls behind its senders makes the
    # relay drop packets, and then the run measures this generator instead of the relay.
    for fd, ev in events:
        if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            if not _receive(by_fd[fd], ctr):
                raise ConnectionError("server closed a connection")
    for fd, ev in events:
        if ev & select.EPOLLOUT:
            on_writable(by_fd[fd])


def _until(t: float) -> None:
    time.sleep(max(0.0, t - time.perf_counter()))


def _drive(pipe, spec: dict, peers_here: list[_Peer]) -> _Count:  # type: ignore[no-untyped-def]
    echo = spec["mode"] == "echo"
    size, batch = spec["size"], spec["batch"]
    everyone: list[bytes] = spec["peers"]
    ep = select.epoll()
    by_fd = {p.sock.fileno(): p for p in peers_here}
    for p in peers_here:
        p.sock.setblocking(False)
        p.batches = _batches(p.key, everyone, size, batch, echo)
    ctr = _Count()
    pipe.send("ready")
    sched = pipe.recv()
    now = time.perf_counter

    # flood
    flooding = [True]

    def flood_writable(p: _Peer) -> None:
        if p.pending is not None and not _send(p, p.pending):
            return
        while flooding[0]:
            b = p.batches[p.i & 3]
            p.i += 1
            if ctr.flood_on:
                ctr.sent += batch
            if not _write(p, b):
                return
        # Flood over and no partial frame left on this socket: stop asking for writability.
        ep.modify(p.sock.fileno(), select.EPOLLIN)

    _until(sched["flood_start"])
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN | select.EPOLLOUT)
    while now() < sched["flood_end"]:
        if not ctr.flood_on and now() >= sched["flood_measure"]:
            ctr.flood_on = True
        _poll(ep, by_fd, ctr, 0.05, flood_writable)
    ctr.flood_on = False
    flooding[0] = False
    # Finish partial frames, then wait until nothing has arrived for a while: flood frames
    # still queued in sockets would delay the paced packets behind them.
    give_up = now() + 20
    while now() < give_up and (
        any(p.pending is not None for p in peers_here) or now() - ctr.last_rx < 0.3
    ):
        _poll(ep, by_fd, ctr, 0.05, flood_writable)
    for p in peers_here:
        if p.pending is None:
            try:
                ep.modify(p.sock.fileno(), select.EPOLLIN)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
    pipe.send("drained")
    sched = pipe.recv()

    # paced
    interval = sched["interval"]
    pad = b"x" * max(0, size - 9)
    hdr = fr.frame_header(0x04, 32 + 9 + len(pad))
    start = sched["paced_start"]
    due = [(start + random.random() * interval, k) for k in range(len(peers_here))]
    heapq.heapify(due)
    others = [[k for k in everyone if k != p.key] or [p.key] for p in peers_here]

    def paced_writable(p: _Peer) -> None:
        if p.pending is None or _send(p, p.pending):
            ep.modify(p.sock.fileno(), select.EPOLLIN)

    _until(start)
    end = sched["paced_end"]
    while True:
        t = now()
        if not ctr.lat_on and t >= sched["paced_measure"]:
            ctr.lat_on = True
        if t >= end + 0.2:  # late arrivals of the last paced packets
            break
        while due and due[0][0] <= t and due[0][0] < end:
            when, k = heapq.heappop(due)
            p = peers_here[k]
            if p.pending is None:  # else the socket is backed up: skip this beat
                dst = p.key if echo else random.choice(others[k])
                if not _write(p, b"".join((hdr, dst, b"T", _TS.pack(now()), pad))):
                    ep.modify(p.sock.fileno(), select.EPOLLIN | select.EPOLLOUT)
            heapq.heappush(due, (when + interval, k))
        wait = 0.05 if not due else min(0.05, max(0.0, due[0][0] - now()))
        _poll(ep, by_fd, ctr, wait, paced_writable)
    ctr.lat_on = False
    ep.close()
    return ctr


async def _dial_all(spec: dict) -> list[_Peer]:
    echo = spec["mode"] == "echo"
    port = spec["port"]
    ctx = ssl.create_default_context(cafile=spec["ca"]) if spec.get("ca") else None
    out: list[_Peer] = []
    sem = trio.Semaphore(32)  # bounded concurrent handshakes

    async def dial(priv: bytes) -> None:
        async with sem:
            with trio.fail_after(60):
                s = await trio.open_tcp_stream("127.0.0.1", port)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                tls = None
                stream: trio.abc.Stream = s
                if ctx is not None:
                    stream = tls = await TLSStream.connect(s, ctx, server_hostname="127.0.0.1")
                if not echo:
                    c = await connect(stream, priv, host="127.0.0.1")
                    if c._decoder.buffered:  # nothing should follow ServerInfo yet
                        raise RuntimeError("unexpected frames after the handshake")
                if tls is not None and (tls.pending or tls.ssl_object.pending()):
                    raise RuntimeError("TLS bytes left over after the handshake")
                # Hand the socket over to the epoll loop; Trio forgets it.
                out.append(_Peer(socket.socket(fileno=s.socket.detach()), fr.public_key(priv),
                                 tls))

    async with trio.open_nursery() as nursery:
        for p in spec["privs"]:
            nursery.start_soon(dial, p)
    return out


def run(pipe, spec: dict) -> None:  # type: ignore[no-untyped-def]
    """Process entry point: run one worker's share and send its counts back over ``pipe``."""
    peers: list[_Peer] = []
    try:
        peers = trio.run(_dial_all, spec)
        ctr = _drive(pipe, spec, peers)
        pipe.send({"packets": ctr.packets, "bytes": ctr.bytes, "sent": ctr.sent,
                   "lat": ctr.lat, "pid": os.getpid()})
    except BaseException as exc:  # report, so the parent does not wait for a dead worker
        pipe.send({"error": repr(exc)})
        raise
    finally:
        for p in peers:
            p.sock.close()
