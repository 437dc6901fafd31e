"""A relay on several cores: worker processes behind one listener (the main process's side).

:class:`WorkerPool` starts N worker processes (``python -m derp.worker``, see worker.py) and
hands each accepted connection to the least loaded one, file descriptor and all
(``SCM_RIGHTS`` on the control channel, workerproto.py): the listener stays in the main
process, so the appliance keeps one port for control and DERP. Each worker runs its own
DerpServer; the workers mesh with each other over unix sockets (the region mesh protocol, with
a key of their own), so a packet between clients on different workers takes one local hop.

The main process stays the authority: a worker asks it whether a client key may connect
(``verify_client``), and reports its counters, which :meth:`WorkerPool.metrics` adds up. A
worker that dies is logged and started again (with backoff); the others relay on, and the dead
one's clients reconnect, as Tailscale clients do, to a live worker. Workers end when the main
process does: their control channel closes.

A pool has the DerpServer methods the appliance uses (``handle_upgrade``,
``handle_plain_http``, ``metrics``, ``run``, ``set_health``, ``notify_restarting``,
``close_all``), so either can serve.
"""

from __future__ import annotations

import base64
import itertools
import logging
import math
import os
import shutil
import sys
import tempfile
from typing import Awaitable, Callable, Iterable

import trio

from . import frames as fr
from . import workerproto as wp
from .errors import ConnectionClosed, ProtocolError
from .server import VERIFY_TIMEOUT, DerpServer, VerifyClient
from .transport import HandedStream, peer_address

log = logging.getLogger(__name__)

# Default worker count: one per core, but not more than this. Past a few workers each packet
# more likely crosses to another worker, and the sibling mesh grows as N².
MAX_DEFAULT_WORKERS = 8
# A connection waits this long for a worker to be up (at start, or while all restart).
HANDOFF_WAIT = 5.0
# Restart backoff for a worker that keeps dying; reset once one has run for RESTART_RESET.
RESTART_MIN, RESTART_MAX, RESTART_RESET = 0.5, 10.0, 30.0
# A worker must report Ready this long after it was started, or it is killed and restarted.
START_TIMEOUT = 30.0
# A worker asked to stop (its channel closed) gets this long before it is killed.
STOP_TIMEOUT = 3.0
# Messages queued towards one worker (health, restart notices, polls) before they are dropped.
OUTBOX_SIZE = 64
POLL_TIMEOUT = 1.0
# At most one log line per this many seconds about connections that could not be handed over.
NOTE_INTERVAL = 10.0

# What each worker sees whole (the region peers' clients) is taken from the worker that sees
# the most; everything else is summed over the workers.
_NOT_SUMMED = {"remote_keys"}

ProxyHandler = Callable[[trio.abc.Stream], Awaitable[None]]


def default_workers() -> int:
    """One worker per core this process may run on, at most MAX_DEFAULT_WORKERS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_WORKERS))


class _Worker:
    """The main process's view of one worker."""

    def __init__(self, index: int, chan: wp.Channel, process: trio.Process) -> None:
        self.index = index
        self.chan = chan
        self.process = process
        self.ready = False
        self.connections = 0  # open, as last reported
        self.received = 0  # handed and received, as last reported
        self.handed = 0  # handed, as counted here
        self.metrics: dict = {}
        # The connections handed to it that are still open, by id: set when it says Closed.
        self.open: dict[int, trio.Event] = {}
        self.outbox_send, self.outbox_receive = trio.open_memory_channel[wp.Message](OUTBOX_SIZE)

    @property
    def load(self) -> int:
        return self.connections + self.handed - self.received

    def __str__(self) -> str:
        return "derp-worker-%d[%d]" % (self.index, self.process.pid)


class WorkerPool:
    """A relay of ``workers`` processes. Run :meth:`run` in a nursery before handing it
    connections.

    Args:
        private_key: the relay's 32-byte key, shared by all workers.
        workers: how many worker processes (at least 1).
        verify_client: as for DerpServer; called in this process when a worker asks.
        mesh_key, mesh_with, mesh_ca: meshing with other servers of the region (every worker
            dials every URL; a peer connected to one worker sees the whole relay).
        front: ``"derp"``: workers serve every request of a raw connection (the standalone
            relay); ``"proxy"``: a connection whose first request is not a DERP upgrade comes
            back to ``on_proxy`` as plain HTTP (the appliance's front door).
        on_proxy: ``async (stream)``, runs in the pool's nursery, owns and closes the stream
            (a HandedStream: peer_address() gives the client's address).
        certificate: (chain file, key file) for raw connections with ``tls=True``.
        log_level, log_format: the workers' logging level (a number, as the logging module
            has them) and ``"text"`` or ``"json"``.
    """

    handle_plain_http = staticmethod(DerpServer.handle_plain_http)

    def __init__(
        self,
        private_key: bytes,
        *,
        workers: int,
        verify_client: VerifyClient | None = None,
        mesh_key: str | None = None,
        mesh_with: Iterable[str] = (),
        mesh_ca: str | None = None,
        front: str = "derp",
        on_proxy: ProxyHandler | None = None,
        certificate: tuple[str, str] | None = None,
        log_level: int = logging.INFO,
        log_format: str = "text",
    ) -> None:
        if workers < 1:
            raise ValueError("a pool needs at least one worker")
        if front not in ("derp", "proxy") or (front == "proxy") != (on_proxy is not None):
            raise ValueError("front 'proxy' needs on_proxy, and only it")
        # Check everything a worker would refuse, here, while the caller can report it.
        probe = DerpServer(private_key, mesh_key=mesh_key, mesh_with=mesh_with)
        # Every counter, zero, for metrics() before the first reports.
        self._zero = {k: v for k, v in probe.metrics().items() if isinstance(v, int)}
        self._private = bytes(private_key)
        self.public_key = fr.public_key(self._private)
        self.size = workers
        self._verify = verify_client
        self._mesh_key = mesh_key.hex() if isinstance(mesh_key, bytes) else mesh_key
        self._mesh_with = list(mesh_with)
        self._mesh_ca = mesh_ca
        self._front = front
        self._on_proxy = on_proxy
        self._certificate = certificate
        self._log_level = log_level
        self._log_format = log_format
        self._sibling_key = os.urandom(32).hex()
        self._dir = ""
        self._workers: dict[int, _Worker] = {}
        self._some_ready = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._polls: dict[int, list] = {}
        self._ids = itertools.count(1)
        self._conn_ids = itertools.count(1)
        self.restarts = 0
        self.handoffs_failed = 0
        self._noted = -math.inf
        self._health = ""

    @property
    def public_key_hex(self) -> str:
        return self.public_key.hex()

    # -----------------------------------------------------------------------------------------
    # Running the workers

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the workers and keep them running until cancelled (then stop them).

        ``task_status.started()`` once every worker has reported ready (or START_TIMEOUT has
        passed: the missing ones keep being retried, connections go to those that are up).
        """
        self._dir = tempfile.mkdtemp(prefix="derp-workers-")  # 0700: the siblings' sockets
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for i in range(self.size):
                    nursery.start_soon(self._supervise, i)
                with trio.move_on_after(START_TIMEOUT):
                    while sum(w.ready for w in self._workers.values()) < self.size:
                        await trio.sleep(0.02)
                log.info("derp: %d of %d workers up", sum(w.ready for w in
                                                          self._workers.values()), self.size)
                task_status.started()
                await trio.sleep_forever()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _socket_path(self, i: int) -> str:
        return os.path.join(self._dir, "w%d.sock" % i)

    def _setup(self, i: int) -> wp.Setup:
        cert, key = self._certificate or (None, None)
        return wp.Setup(
            index=i, private_key=self._private.hex(), sibling_key=self._sibling_key,
            listen=self._socket_path(i),
            siblings=["unix:" + self._socket_path(j) for j in range(self.size) if j != i],
            mesh_key=self._mesh_key, mesh_with=self._mesh_with, mesh_ca=self._mesh_ca,
            verify=self._verify is not None, front=self._front, cert=cert, key=key,
            log_level=self._log_level, log_format=self._log_format)

    async def _supervise(self, i: int) -> None:
        delay = RESTART_MIN
        while True:
            started = trio.current_time()
            await self._run_worker(i)
            if trio.current_time() - started > RESTART_RESET:
                delay = RESTART_MIN
            self.restarts += 1
            log.warning("derp-worker-%d: restarting in %.1f s", i, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX)

    async def _run_worker(self, i: int) -> None:
        chan, theirs = wp.channel_pair()
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "derp.worker", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), env=_child_env())
        except OSError as exc:
            log.error("derp-worker-%d: cannot start: %s", i, exc)
            chan.close()
            return
        finally:
            theirs.close()
        w = _Worker(i, chan, process)
        self._workers[i] = w
        try:
            await chan.send(self._setup(i))
            if self._health:
                w.outbox_send.send_nowait(wp.Health(self._health))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_loop, w)
                nursery.start_soon(self._watch_start, w)

                async def exited() -> None:
                    await process.wait()
                    nursery.cancel_scope.cancel()
                nursery.start_soon(exited)
                await self._receive_loop(w, nursery)
                nursery.cancel_scope.cancel()
        except* (ConnectionClosed, trio.BrokenResourceError) as eg:
            log.debug("%s: channel ended: %r", w, eg.exceptions[0])
        except* ProtocolError as eg:
            log.error("%s: bad control message: %s", w, eg.exceptions[0])
        finally:
            w.ready = False
            del self._workers[i]
            self._update_ready()
            chan.close()
            for ended in w.open.values():  # its connections died with it
                ended.set()
            w.open.clear()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(STOP_TIMEOUT):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        log.warning("%s: exited with status %s", w, process.returncode)

    async def _watch_start(self, w: _Worker) -> None:
        await trio.sleep(START_TIMEOUT)
        if not w.ready:
            log.error("%s: not ready after %.0f s; killing it", w, START_TIMEOUT)
            w.process.kill()

    async def _send_loop(self, w: _Worker) -> None:
        async for msg in w.outbox_receive:
            await w.chan.send(msg)

    async def _receive_loop(self, w: _Worker, nursery: trio.Nursery) -> None:
        while True:
            msg, fd = await w.chan.receive()
            if isinstance(msg, wp.Stats):
                w.metrics, w.connections, w.received = msg.metrics, msg.connections, msg.received
                waiter = self._polls.get(msg.id)
                if waiter is not None:
                    waiter[1][w.index] = msg.metrics
                    if len(waiter[1]) >= waiter[2]:
                        waiter[0].set()
            elif isinstance(msg, wp.Closed):
                ended = w.open.pop(msg.id, None)
                if ended is not None:
                    ended.set()
            elif isinstance(msg, wp.Verify):
                nursery.start_soon(self._answer_verify, w, msg)
            elif isinstance(msg, wp.Proxy):
                stream = HandedStream(wp.stream_from_fd(fd), wp.address(msg.remote))
                assert self._nursery is not None and self._on_proxy is not None
                self._nursery.start_soon(self._on_proxy, stream)
            elif isinstance(msg, wp.Ready):
                w.ready = True
                self._update_ready()
                log.info("%s: ready", w)
            else:
                raise ProtocolError("%s from a worker" % msg.op)

    async def _answer_verify(self, w: _Worker, msg: wp.Verify) -> None:
        ok = False
        try:
            key = bytes.fromhex(msg.key)
            if len(key) == fr.KEY_LEN and self._verify is not None:
                with trio.fail_after(VERIFY_TIMEOUT):
                    ok = bool(await self._verify(key))
        except trio.TooSlowError:
            log.error("%s: verify_client timed out", w)
        except Exception:  # the hook is not ours: refuse, log, serve on
            log.exception("%s: verify_client failed", w)
        try:
            await w.chan.send(wp.Verdict(msg.id, ok))
        except trio.BrokenResourceError:
            pass

    def _update_ready(self) -> None:
        if any(w.ready for w in self._workers.values()):
            if not self._some_ready.is_set():
                self._some_ready.set()
        elif self._some_ready.is_set():
            self._some_ready = trio.Event()

    # -----------------------------------------------------------------------------------------
    # Handing connections over

    async def hand_raw(self, stream: trio.SocketStream, prefix: bytes = b"", *,
                       tls: bool) -> None:
        """Give an accepted TCP connection to a worker (which does TLS when ``tls``);
        ``prefix``: bytes already read from it. Closes ``stream`` here in any case, and returns
        when the connection has ended in the worker (so that whoever counts open connections,
        such as a listener's connection caps, counts it until then)."""
        msg = wp.AcceptRaw(next(self._conn_ids), tls, base64.b64encode(prefix).decode(),
                           _remote(stream))
        await self._hand(stream, msg)

    async def handle_upgrade(
        self, stream: trio.abc.Stream, method: str, target: str,
        headers: list[tuple[bytes, bytes]], leftover: bytes, *,
        remote_addr: tuple[str, int] | None = None,
    ) -> None:
        """DerpServer.handle_upgrade's twin: the session runs in a worker, and this returns when
        it has ended. ``stream`` must be a plain socket (TCP, or a HandedStream); it is closed
        here in any case."""
        remote = remote_addr or peer_address(stream)
        msg = wp.AcceptUpgrade(
            next(self._conn_ids), method, target,
            [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers],
            base64.b64encode(leftover).decode(), list(remote) if remote else None)
        await self._hand(stream, msg)

    async def _hand(self, stream: trio.abc.Stream, msg: wp.AcceptRaw | wp.AcceptUpgrade) -> None:
        ended = trio.Event()
        try:
            sock = _socket_of(stream)
            if sock is None:
                # (The appliance does TLS itself while its workers lack the certificate.)
                self._note("derp: cannot hand a %s to a worker; closing it"
                           % type(stream).__name__)
                return
            handed = False
            with trio.move_on_after(HANDOFF_WAIT):
                while not handed:
                    await self._some_ready.wait()
                    w = min((w for w in self._workers.values() if w.ready),
                            key=lambda w: w.load, default=None)
                    if w is None:
                        continue
                    w.open[msg.id] = ended  # (before: its Closed may come at once)
                    try:
                        await w.chan.send(msg, fd=sock.fileno())
                    except (trio.BrokenResourceError, ValueError) as exc:
                        del w.open[msg.id]
                        log.debug("%s: handoff failed: %r", w, exc)
                        if isinstance(exc, ValueError):  # too large to send: nobody can
                            return
                        w.ready = False
                        self._update_ready()
                        continue
                    w.handed += 1
                    handed = True
            if not handed:
                self._note("derp: no worker up for %.0f s; closing a connection" % HANDOFF_WAIT)
                return
        finally:
            # The worker has its own descriptor now; ours goes (no FIN: the file stays open).
            with trio.move_on_after(1, shield=True):
                await trio.aclose_forcefully(stream)
        await ended.wait()

    def _note(self, what: str) -> None:
        """A connection refused: counted, and logged at most once per NOTE_INTERVAL (a flood
        of connections while the workers restart must not flood the log)."""
        self.handoffs_failed += 1
        now = trio.current_time()
        if now - self._noted >= NOTE_INTERVAL:
            self._noted = now
            log.warning("%s (%d so far)", what, self.handoffs_failed)

    # -----------------------------------------------------------------------------------------
    # What DerpServer offers besides sessions

    def _broadcast(self, msg: wp.Message) -> None:
        for w in list(self._workers.values()):
            try:
                w.outbox_send.send_nowait(msg)
            except trio.WouldBlock:
                log.warning("%s: control queue full; %s dropped", w, msg.op)

    def set_health(self, problem: str) -> None:
        self._health = problem
        self._broadcast(wp.Health(problem))

    def notify_restarting(self, reconnect_in: float, try_for: float) -> None:
        self._broadcast(wp.Restarting(reconnect_in, try_for))

    def close_all(self) -> None:
        self._broadcast(wp.CloseAll())

    async def set_certificate(self, cert: str, key: str) -> None:
        """Workers load the certificate from these files (again), before any connection
        handed to them after this returns; new workers too."""
        self._certificate = (cert, key)
        for w in list(self._workers.values()):
            try:
                await w.chan.send(wp.Certificate(cert, key))
            except trio.BrokenResourceError:
                pass  # it is being restarted, and gets the certificate with its setup

    async def refresh_metrics(self) -> None:
        """Ask every worker for fresh counters (at most POLL_TIMEOUT); metrics() then shows
        them."""
        live = [w for w in self._workers.values() if w.ready]
        if not live:
            return
        rid = next(self._ids)
        waiter = self._polls[rid] = [trio.Event(), {}, len(live)]
        try:
            for w in live:
                try:
                    w.outbox_send.send_nowait(wp.Poll(rid))
                except trio.WouldBlock:
                    waiter[2] -= 1
            with trio.move_on_after(POLL_TIMEOUT):
                if waiter[2] > 0:
                    await waiter[0].wait()
        finally:
            del self._polls[rid]

    def metrics(self) -> dict[str, object]:
        """DerpServer.metrics() added up over the workers (as last reported), with
        ``workers`` (up), ``workers_configured`` and ``worker_restarts``."""
        out: dict[str, object] = dict(self._zero)
        drops: dict[str, int] = {}
        for w in self._workers.values():
            for k, v in w.metrics.items():
                if k == "drops" and isinstance(v, dict):
                    for reason, n in v.items():
                        drops[reason] = drops.get(reason, 0) + int(n)
                elif isinstance(v, int):
                    cur = out.get(k, 0)
                    out[k] = max(cur, v) if k in _NOT_SUMMED else cur + v  # type: ignore[operator]
        out["drops"] = drops
        out["workers"] = sum(w.ready for w in self._workers.values())
        out["workers_configured"] = self.size
        out["worker_restarts"] = self.restarts
        out["handoffs_failed"] = self.handoffs_failed
        return out

    def worker_pids(self) -> list[int]:
        """The pids of the running workers (for tests and diagnostics)."""
        return [w.process.pid for w in self._workers.values() if w.ready]


def _child_env() -> dict[str, str]:
    # The worker imports derp (and trio...) from wherever this process did, also from a zipapp
    # unpacked by shiv: give it our module path.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    if isinstance(stream, HandedStream):
        stream = stream.inner
    if type(stream) is trio.SocketStream:
        return stream.socket
    return None


def _remote(stream: trio.abc.Stream) -> list | None:
    addr = peer_address(stream)
    return list(addr) if addr else None

