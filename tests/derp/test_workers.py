"""A relay on several worker processes (derp.workers / derp.worker): packets across workers,
a worker's death, verify_clients through the main process, non-DERP connections handed back,
meshing with a region peer; and the control channel's codec."""

from __future__ import annotations

import array
import json
import logging
import os
import signal
import socket
import ssl
from functools import partial

import h11
import pytest
import trio
import trustme

from derp import frames as fr
from derp import workerproto as wp
from derp.client import connect_url
from derp.errors import ConnectionClosed, ProtocolError
from derp.server import DerpServer
from derp.tls import TLSStream
from derp.transport import peer_address
from derp.workers import WorkerPool

from .helpers import dial, recv_type, wait_until

MESH_KEY = "cd" * 32


async def start_pool(nursery: trio.Nursery, workers: int = 2, *, tls: bool = False,
                     **kw) -> tuple[WorkerPool, int]:
    """A pool behind a plain TCP listener on 127.0.0.1 (the main process's accept loop)."""
    pool = WorkerPool(kw.pop("private_key", None) or fr.generate_private_key(),
                      workers=workers, log_level=logging.WARNING, **kw)
    await nursery.start(pool.run)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, partial(pool.hand_raw, tls=tls), listeners)
    return pool, listeners[0].socket.getsockname()[1]


async def wait_per_worker(pool: WorkerPool, counts: list[int]) -> None:
    """Until the workers hold these numbers of clients (a client's handshake ends a moment
    before its worker counts it)."""
    with trio.fail_after(10):
        while True:
            await pool.refresh_metrics()
            if sorted(w.metrics.get("clients", 0) for w in pool._workers.values()) == counts:
                return
            await trio.sleep(0.02)


async def test_packets_cross_workers_intact_and_in_order_per_pair(nursery):
    pool, port = await start_pool(nursery)
    assert pool.metrics()["workers"] == 2
    clients = [await dial(port) for _ in range(4)]
    # Handed to the least loaded worker: two clients on each.
    await wait_until(lambda: pool.metrics()["clients"] == 4)
    await wait_per_worker(pool, [2, 2])
    await wait_until(lambda: pool.metrics()["sibling_keys"] == 4, timeout=10)
    count = 150
    expected = {(a.public_key, b.public_key) for a in clients for b in clients if a is not b}
    got: dict[tuple[bytes, bytes], list[int]] = {pair: [] for pair in expected}

    async def receive(c):
        while sum(len(got[(s, c.public_key)]) for s in (x.public_key for x in clients)
                  if s != c.public_key) < count * 3:
            ev = await recv_type(c, fr.RecvPacket, timeout=10)
            seq = int(ev.packet[:6])
            assert ev.packet == b"%06d" % seq + ev.src[:8] + c.public_key[:8] + b"." * 50
            got[(ev.src, c.public_key)].append(seq)

    async def send(c):
        for i in range(count):
            await c.send_raw(b"".join(
                fr.encode_send_packet(d.public_key, b"%06d" % i + c.public_key[:8]
                                      + d.public_key[:8] + b"." * 50)
                for d in clients if d is not c))
            if i % 10 == 9:
                await trio.sleep(0.005)

    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                for c in clients:
                    n.start_soon(receive, c)
                for c in clients:
                    n.start_soon(send, c)
    except BaseException:
        await pool.refresh_metrics()
        print("relay counters at the failure:", pool.metrics(), {k[0][:2] + k[1][:2]: len(v) for k, v in got.items()})
        raise
    assert all(seqs == list(range(count)) for seqs in got.values()), \
        {k[0][:2] + k[1][:2]: len(v) for k, v in got.items()}
    await pool.refresh_metrics()
    m = pool.metrics()
    # Two of the three destinations of each sender are on the other worker.
    assert m["packets_to_siblings"] == m["packets_from_siblings"] == count * 4 * 2
    assert m["packets_forwarded_out"] == m["packets_forwarded_in"] == 0
    assert m["packets_relayed"] == count * 12 and m["drops"] == {}


async def test_a_killed_worker_is_restarted_and_the_others_relay_on(nursery):
    pool, port = await start_pool(nursery)
    clients = [await dial(port) for _ in range(4)]
    await wait_until(lambda: pool.metrics()["clients"] == 4)
    await pool.refresh_metrics()
    victim = next(iter(pool._workers.values()))
    survivors_worker = [w for w in pool._workers.values() if w is not victim][0]
    assert victim.metrics["clients"] == 2
    os.kill(victim.process.pid, signal.SIGKILL)
    # The victim's clients lose their connection; the others keep relaying meanwhile.
    lost, alive = [], []
    for c in clients:
        try:
            with trio.move_on_after(0.5):
                await c.send(fr.Ping(b"12345678"))
                await recv_type(c, fr.Pong, timeout=0.4)
                alive.append(c)
                continue
        except (ConnectionClosed, trio.BrokenResourceError, trio.TooSlowError):
            pass
        lost.append(c)
    assert len(alive) == 2 and len(lost) == 2
    await alive[0].send_packet(alive[1].public_key, b"still here")
    assert (await recv_type(alive[1], fr.RecvPacket)).packet == b"still here"
    # Restarted, and new clients land on it and reach the survivors across the workers.
    await wait_until(lambda: pool.metrics()["workers"] == 2 and pool.restarts == 1, timeout=15)
    assert survivors_worker in pool._workers.values()
    new = [await dial(port) for _ in range(2)]
    await wait_until(lambda: pool.metrics()["clients"] == 4)
    await wait_per_worker(pool, [2, 2])
    await wait_until(lambda: pool.metrics()["sibling_keys"] == 4, timeout=10)
    for c in new:
        for d in alive:
            await c.send_packet(d.public_key, b"hello " + c.public_key[:4])
            assert (await recv_type(d, fr.RecvPacket)).packet == b"hello " + c.public_key[:4]
            await d.send_packet(c.public_key, b"back")
            assert (await recv_type(c, fr.RecvPacket)).packet == b"back"


async def test_a_handed_connection_counts_here_until_it_ends_in_its_worker(nursery):
    """hand_raw returns when the worker's connection has ended, so a connection cap around it
    in the main process (the appliance's ConnectionGate) counts what the workers hold."""
    pool = WorkerPool(fr.generate_private_key(), workers=2, log_level=logging.WARNING)
    await nursery.start(pool.run)
    open_here = [0]

    async def counted(stream):
        open_here[0] += 1
        try:
            await pool.hand_raw(stream, tls=False)
        finally:
            open_here[0] -= 1

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, counted, listeners)
    port = listeners[0].socket.getsockname()[1]
    a, b = await dial(port), await dial(port)
    await wait_until(lambda: pool.metrics()["clients"] == 2)
    assert open_here[0] == 2
    await a.aclose()
    await wait_until(lambda: open_here[0] == 1)
    # A worker that dies takes its connections with it: they end here too.
    await pool.refresh_metrics()
    holder = next(w for w in pool._workers.values() if w.metrics.get("clients"))
    os.kill(holder.process.pid, signal.SIGKILL)
    await wait_until(lambda: open_here[0] == 0, timeout=10)
    await b.aclose()


async def test_verify_clients_is_asked_of_the_main_process(nursery):
    allowed = [fr.generate_private_key() for _ in range(2)]
    asked: list[bytes] = []

    async def verify(key: bytes) -> bool:
        asked.append(key)
        return key in {fr.public_key(k) for k in allowed}

    pool, port = await start_pool(nursery, verify_client=verify)
    ok = [await dial(port, k) for k in allowed]  # one on each worker
    await wait_per_worker(pool, [1, 1])
    for _ in range(2):  # one refusal on each worker
        with pytest.raises((ConnectionClosed, trio.BrokenResourceError)):
            c = await dial(port)
            await recv_type(c, fr.KeepAlive, timeout=2)  # refused: closed after ClientInfo
    await pool.refresh_metrics()
    assert pool.metrics()["refused_total"] == 2 and pool.metrics()["clients"] == 2
    await wait_until(lambda: pool.metrics()["sibling_keys"] == 2)
    assert len(asked) == 4 and asked[:2] == [c.public_key for c in ok]
    await ok[0].send_packet(ok[1].public_key, b"verified")
    assert (await recv_type(ok[1], fr.RecvPacket)).packet == b"verified"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    ca = trustme.CA()
    d = tmp_path_factory.mktemp("tls")
    leaf = ca.issue_cert("127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    for extra in leaf.cert_chain_pems[1:]:
        with open(d / "cert.pem", "ab") as f:
            f.write(extra.bytes())
    leaf.private_key_pem.write_to_path(str(d / "key.pem"))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return str(d / "cert.pem"), str(d / "key.pem"), client


async def test_proxy_front_keeps_derp_and_hands_the_rest_back(nursery, tls_files):
    """The appliance's mode: TLS in the workers; a DERP upgrade stays there, any other first
    request comes back to the main process with the client's address."""
    cert, key, client_ctx = tls_files
    seen: list[tuple[str, int] | None] = []

    async def front_door(stream: trio.abc.Stream) -> None:
        seen.append(peer_address(stream))
        conn = h11.Connection(h11.SERVER)
        async with stream:
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(4096))
                elif isinstance(ev, h11.Request):
                    target = ev.target
                elif isinstance(ev, h11.EndOfMessage):
                    body = b"main saw " + target
                    await stream.send_all(
                        conn.send(h11.Response(status_code=200, headers=[
                            ("content-length", str(len(body))), ("connection", "close")]))
                        + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
                    return

    pool, port = await start_pool(nursery, tls=True, front="proxy", on_proxy=front_door,
                                  certificate=(cert, key))
    with trio.fail_after(10):
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        local = tcp.socket.getsockname()
        tls = await TLSStream.connect(tcp, client_ctx, server_hostname="127.0.0.1")
        await tls.send_all(b"GET /key?v=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := await tls.receive_some():
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"main saw /key?v=1")
    assert seen == [(local[0], local[1])]
    c = await connect_url("https://127.0.0.1:%d" % port, fr.generate_private_key(),
                          ssl_context=client_ctx)
    d = await connect_url("https://127.0.0.1:%d" % port, fr.generate_private_key(),
                          ssl_context=client_ctx)
    await wait_until(lambda: pool.metrics()["clients"] == 2)
    assert len(seen) == 1  # the DERP connections stayed in the workers
    await c.send_packet(d.public_key, b"over tls, across workers")
    assert (await recv_type(d, fr.RecvPacket)).packet == b"over tls, across workers"


async def test_a_region_peer_reaches_clients_on_every_worker(nursery):
    """A region peer meshes with the pool through whichever worker takes its connection; it
    sees the clients of both workers and reaches them, and they reach its clients."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    peer_port = listeners[0].socket.getsockname()[1]
    pool_listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    pool_port = pool_listeners[0].socket.getsockname()[1]
    peer = DerpServer(fr.generate_private_key(), mesh_key=MESH_KEY,
                      mesh_with=["http://127.0.0.1:%d" % pool_port])
    from derp.httpd import handle_connection
    nursery.start_soon(trio.serve_listeners, partial(handle_connection, peer), listeners)
    await nursery.start(peer.run)
    pool = WorkerPool(fr.generate_private_key(), workers=2, mesh_key=MESH_KEY,
                      mesh_with=["http://127.0.0.1:%d" % peer_port], log_level=logging.WARNING)
    await nursery.start(pool.run)
    nursery.start_soon(trio.serve_listeners, partial(pool.hand_raw, tls=False), pool_listeners)
    on_pool = [await dial(pool_port) for _ in range(2)]
    on_peer = await dial(peer_port)
    await wait_until(lambda: peer.metrics()["remote_keys"] == 2, timeout=10)
    await wait_until(lambda: pool.metrics()["remote_keys"] == 1, timeout=10)
    await wait_per_worker(pool, [1, 1])
    for c in on_pool:
        await on_peer.send_packet(c.public_key, b"from the peer")
        assert (await recv_type(c, fr.RecvPacket)).packet == b"from the peer"
        await c.send_packet(on_peer.public_key, b"to the peer")
        assert (await recv_type(on_peer, fr.RecvPacket)) == fr.RecvPacket(c.public_key,
                                                                           b"to the peer")
    # A client leaving a worker is gone for the peer too.
    await on_pool[1].aclose()
    await wait_until(lambda: peer.metrics()["remote_keys"] == 1, timeout=10)


def _children(pid: int) -> list[int]:
    # Per thread: Trio starts processes from a worker thread.
    out = []
    for task in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/children" % (pid, task)) as f:
            out += [int(p) for p in f.read().split()]
    return out


def _gone(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
async def test_workers_end_with_the_main_process_however_it_ends(tmp_path, how):
    """One unit for systemd: when the main process stops, or is killed, its workers follow
    (their control channel closes) instead of living on with the listener gone."""
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.Popen(
        [sys.executable, "-m", "derp", "-a", "127.0.0.1:0", "--plain-http", "--no-stun",
         "--key-file", str(tmp_path / "k"), "--workers", "2", "--log-level", "WARNING"],
        cwd=Path(__file__).resolve().parents[2])
    try:
        with trio.fail_after(20):
            while len(workers := _children(proc.pid)) < 2:
                await trio.sleep(0.05)
        proc.send_signal(how)
        with trio.fail_after(10):
            while not all(_gone(p) for p in workers):
                await trio.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()


# --- the control channel ------------------------------------------------------------------


def test_control_messages_round_trip_and_bad_ones_are_refused():
    msg = wp.AcceptUpgrade(7, "GET", "/derp", [["upgrade", "DERP"]], "AAE=", ["10.0.0.1", 4242])
    assert wp.decode(wp.encode(msg)) == msg
    assert wp.address(msg.remote) == ("10.0.0.1", 4242)
    assert wp.address(["10.0.0.1", True]) is None and wp.address(None) is None
    stats = wp.Stats(0, {"clients": 3, "drops": {}}, 3, 7)
    assert wp.decode(wp.encode(stats)) == stats
    for bad in (b"not json", b"[]", b'{"op":"nope"}', b'{"op":"verdict","id":1}',
                b'{"op":"verdict","id":"1","ok":true}', b'{"op":"verdict","id":1,"ok":1}',
                b'{"op":"poll","id":true}'):
        with pytest.raises(ProtocolError):
            wp.decode(bad)
    with pytest.raises(ValueError):
        wp.encode(wp.Health("x" * wp.MAX_MESSAGE))


async def test_control_channel_passes_descriptors_with_messages():
    ours, theirs = wp.channel_pair()
    other = wp.Channel(trio.socket.from_stdlib_socket(theirs))
    a, b = socket.socketpair()
    try:
        await ours.send(wp.Proxy(["127.0.0.1", 1]), fd=a.fileno())
        msg, fd = await other.receive()
        assert msg == wp.Proxy(["127.0.0.1", 1]) and fd is not None and fd != a.fileno()
        stream = wp.stream_from_fd(fd)
        a.close()  # the received descriptor lives on
        await stream.send_all(b"through the passed socket")
        assert b.recv(100) == b"through the passed socket"
        await stream.aclose()
        with pytest.raises(ValueError):
            await ours.send(wp.Poll(1), fd=b.fileno())
        # A descriptor on a message that takes none is closed and refused.
        await ours.send(wp.Poll(1))
        assert (await other.receive()) == (wp.Poll(1), None)
        await ours.sock.sendmsg([b'{"op":"poll","id":1}'], [
            (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [b.fileno()]))])
        with pytest.raises(ProtocolError):
            await other.receive()
        ours.close()
        with pytest.raises(ConnectionClosed):
            await other.receive()
    finally:
        b.close()
        other.close()


def test_workers_log_json_lines_when_the_main_process_does():
    from derp.worker import _JsonLines

    record = logging.LogRecord("derp.server", logging.WARNING, __file__, 1, "closing %s", ("x",), None)
    doc = json.loads(_JsonLines(3).format(record))
    assert doc["level"] == "warning" and doc["logger"] == "derp.server"
    assert doc["message"] == "closing x" and doc["worker"] == 3 and doc["time"]
