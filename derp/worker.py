"""One worker process of a relay that runs on several cores (``python -m derp.worker FD``).

Started by :class:`derp.workers.WorkerPool`, which passes one end of a control channel as file
descriptor FD (see workerproto.py). The worker runs a :class:`~derp.server.DerpServer` that
meshes with its sibling workers over unix sockets, and serves the connections the main
process hands it:

* ``AcceptUpgrade``: a connection whose ``GET /derp`` head the main process has read: the
  DERP session runs here;
* ``AcceptRaw``: a TCP connection as accepted (TLS is done here, with the relay's batched
  TLSStream). With ``front = "derp"`` (the standalone relay) every request is served here; with
  ``front = "proxy"`` (the appliance, whose control plane lives in the main process) a
  connection whose first request is a DERP upgrade stays, and any other goes back to the main
  process as plain bytes over a new unix socket (``Proxy``), its TLS still done here.

The worker exits when the control channel ends, so it never outlives the main process.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import signal
import socket
import ssl
import sys
from functools import partial

import h11
import trio

from . import workerproto as wp
from .errors import ConnectionClosed, DerpError
from .httpd import HEAD_TIMEOUT, MAX_HEAD, handle_connection
from .server import DerpServer
from .tls import TLSStream, server_context
from .transport import RECV_SIZE

log = logging.getLogger(__name__)

# How often a worker reports its counters and connection count unasked (load balancing).
STATS_INTERVAL = 1.0
# The main process sends Setup at once; a worker that hears nothing gives up.
SETUP_TIMEOUT = 30.0
# How long a starting worker waits for its links to the other workers before it says ready.
LINK_WAIT = 5.0
PROXY_CHUNK = 64 << 10


class Worker:
    """The worker's state: its DerpServer, its TLS context, the control channel."""

    def __init__(self, chan: wp.Channel, setup: wp.Setup) -> None:
        self.chan = chan
        self.setup = setup
        self.name = "derp-worker-%d" % setup.index
        mesh_ssl = ssl.create_default_context(cafile=setup.mesh_ca) if setup.mesh_ca else None
        self.server = DerpServer(
            bytes.fromhex(setup.private_key),
            verify_client=self._verify if setup.verify else None,
            mesh_key=setup.mesh_key, mesh_with=setup.mesh_with, mesh_ssl_context=mesh_ssl,
            sibling_key=setup.sibling_key, siblings=setup.siblings,
        )
        self.tls: ssl.SSLContext | None = None
        if setup.cert and setup.key:
            self._load_certificate(setup.cert, setup.key)
        self.connections = 0
        self.received = 0
        self._ids = itertools.count(1)
        self._verdicts: dict[int, list] = {}  # id -> [Event, verdict]

    def _load_certificate(self, cert: str, key: str) -> None:
        try:
            self.tls = server_context(cert, key)
        except (OSError, ssl.SSLError) as exc:
            # Keep the previous one (if any): a half-written renewal must not stop TLS.
            log.error("%s: cannot load the TLS certificate %s: %s", self.name, cert, exc)

    async def _verify(self, key: bytes) -> bool:
        rid = next(self._ids)
        slot = self._verdicts[rid] = [trio.Event(), False]
        try:
            await self.chan.send(wp.Verify(rid, key.hex()))
            await slot[0].wait()  # DerpServer puts the deadline around this call
            return bool(slot[1])
        except trio.BrokenResourceError:
            return False  # the main process is gone; so is this worker, soon
        finally:
            del self._verdicts[rid]

    async def serve(self) -> None:
        """Run until the control channel ends (the main process stopped or died)."""
        listener = await _unix_listener(self.setup.listen)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners, partial(handle_connection, self.server),
                                   [listener])
                await nursery.start(self.server.run)
                nursery.start_soon(self._report_stats)
                # Ready once linked to the siblings (they start at the same time and link
                # within moments), so that the first clients handed over reach each other.
                with trio.move_on_after(LINK_WAIT):
                    while (self.server.metrics()["sibling_links_connected"]
                           < len(self.setup.siblings)):
                        await trio.sleep(0.01)
                await self.chan.send(wp.Ready(os.getpid()))
                await self._control_loop(nursery)
        except* (ConnectionClosed, trio.BrokenResourceError):
            log.info("%s: the main process is gone; stopping", self.name)

    async def _control_loop(self, nursery: trio.Nursery) -> None:
        server = self.server
        while True:
            msg, fd = await self.chan.receive()
            if isinstance(msg, (wp.AcceptRaw, wp.AcceptUpgrade)):
                self.received += 1
                self.connections += 1
                nursery.start_soon(self._serve_handed, msg, wp.stream_from_fd(fd))
            elif isinstance(msg, wp.Verdict):
                slot = self._verdicts.get(msg.id)
                if slot is not None:
                    slot[1] = msg.ok
                    slot[0].set()
            elif isinstance(msg, wp.Poll):
                await self._send_stats(msg.id)
            elif isinstance(msg, wp.Certificate):
                self._load_certificate(msg.cert, msg.key)
            elif isinstance(msg, wp.Health):
                server.set_health(msg.problem)
            elif isinstance(msg, wp.Restarting):
                server.notify_restarting(msg.reconnect_in, msg.try_for)
            elif isinstance(msg, wp.CloseAll):
                server.close_all()
            else:
                log.warning("%s: unexpected control message %s", self.name, msg.op)

    async def _send_stats(self, rid: int) -> None:
        await self.chan.send(wp.Stats(rid, self.server.metrics(), self.connections,
                                      self.received))

    async def _report_stats(self) -> None:
        while True:
            await trio.sleep(STATS_INTERVAL)
            await self._send_stats(0)

    async def _serve_handed(self, msg: wp.AcceptRaw | wp.AcceptUpgrade,
                            stream: trio.SocketStream) -> None:
        remote = wp.address(msg.remote)
        try:
            if isinstance(msg, wp.AcceptUpgrade):
                await self.server.handle_upgrade(
                    stream, msg.method, msg.target,
                    [(k.encode("latin-1"), v.encode("latin-1")) for k, v in msg.headers],
                    base64.b64decode(msg.leftover), remote_addr=remote)
            else:
                await self._serve_raw(stream, base64.b64decode(msg.prefix), msg.tls, remote)
        except Exception:  # one connection's fault: log it, serve on
            log.exception("%s: connection from %s failed", self.name, remote)
        finally:
            self.connections -= 1
            with trio.move_on_after(1, shield=True):
                await trio.aclose_forcefully(stream)
                try:
                    await self.chan.send(wp.Closed(msg.id))
                except trio.BrokenResourceError:
                    pass  # the main process is gone

    async def _serve_raw(self, tcp: trio.SocketStream, prefix: bytes, tls: bool,
                         remote: tuple[str, int] | None) -> None:
        stream: trio.abc.Stream = tcp
        if tls:
            if self.tls is None:
                log.warning("%s: no TLS certificate loaded; closing %s", self.name, remote)
                return
            try:
                with trio.fail_after(HEAD_TIMEOUT):
                    stream = await TLSStream.accept(tcp, self.tls, prefix=prefix)
            except (trio.BrokenResourceError, trio.TooSlowError) as exc:
                log.debug("%s: TLS handshake with %s failed: %r", self.name, remote, exc)
                return
        elif prefix:
            log.error("%s: a plain connection came with bytes already read; closing", self.name)
            return
        try:
            if self.setup.front == "derp":
                await handle_connection(self.server, stream)
            else:
                await self._route(stream, remote)
        finally:
            with trio.move_on_after(1, shield=True):
                await trio.aclose_forcefully(stream)

    async def _route(self, stream: trio.abc.Stream, remote: tuple[str, int] | None) -> None:
        """The first request decides: a DERP upgrade is served here, anything else (and the
        rest of the connection) goes to the main process's front door."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        raw = bytearray()
        req: h11.Request | None = None
        ended = False  # the DERP upgrade request is complete (it has no body)
        try:
            with trio.fail_after(HEAD_TIMEOUT):
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        data = await stream.receive_some(RECV_SIZE)
                        raw += data
                        conn.receive_data(data)
                        if not data and req is None:
                            return
                        continue
                    if isinstance(ev, h11.Request):
                        req = ev
                        if not _is_derp_upgrade(req):
                            break
                        continue
                    ended = isinstance(ev, h11.EndOfMessage)
                    break
        except h11.RemoteProtocolError:
            req = None  # the main process's front door answers it as it answers any
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return  # (a request head that takes this long is not coming)
        if req is not None and ended and _is_derp_upgrade(req):
            leftover = bytes(conn.trailing_data[0])
            await self.server.handle_upgrade(
                stream, req.method.decode("latin-1"), req.target.decode("latin-1"),
                list(req.headers), leftover, remote_addr=remote)
            return
        await self._proxy(stream, bytes(raw), remote)

    async def _proxy(self, stream: trio.abc.Stream, head: bytes,
                     remote: tuple[str, int] | None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await self.chan.send(wp.Proxy(list(remote) if remote else None), fd=theirs.fileno())
        finally:
            theirs.close()
        ours.setblocking(False)
        main = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        async with main:
            if head:
                await main.send_all(head)
            await _pump_both(stream, main)


async def _pump_both(client: trio.abc.Stream, main: trio.SocketStream) -> None:
    """Copy both ways until the main process closes its side (it owns the HTTP timeouts); the
    client's EOF is passed on as a half-close."""
    async def to_main() -> None:
        while data := await client.receive_some(PROXY_CHUNK):
            await main.send_all(data)
        await main.send_eof()

    async def to_client() -> None:
        while data := await main.receive_some(PROXY_CHUNK):
            await client.send_all(data)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(to_main)
            await to_client()
            nursery.cancel_scope.cancel()
    except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


def _is_derp_upgrade(req: h11.Request) -> bool:
    # The same test as the appliance's front door for its upgrade routes.
    path = req.target.split(b"?", 1)[0]
    return path == b"/derp" and any(k == b"upgrade" for k, _ in req.headers)



async def _unix_listener(path: str) -> trio.SocketListener:
    # The directory is the pool's own (0700); a file left by a dead worker is replaced.
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(128)
    return trio.SocketListener(sock)


class _JsonLines(logging.Formatter):
    """The main process's ``log.format: json``: one object per line, and which worker."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": self.formatTime(record), "level": record.levelname.lower(),
                           "logger": record.name, "message": record.getMessage(),
                           "worker": self.index})


def _setup_logging(setup: wp.Setup) -> None:
    handler = logging.StreamHandler()  # stderr, inherited: the same journal as the main process
    if setup.log_format == "json":
        handler.setFormatter(_JsonLines(setup.index))
    else:
        handler.setFormatter(logging.Formatter(
            "%%(asctime)s %%(levelname)s derp-worker-%d %%(name)s: %%(message)s" % setup.index))
    logging.basicConfig(level=setup.log_level, handlers=[handler])


async def _run(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    chan = wp.Channel(trio.socket.from_stdlib_socket(sock))
    try:
        with trio.fail_after(SETUP_TIMEOUT):
            setup, _ = await chan.receive()
        if not isinstance(setup, wp.Setup):
            raise DerpError("the first control message is %s, not setup" % setup.op)
        _setup_logging(setup)
        await Worker(chan, setup).serve()
    finally:
        chan.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m derp.worker FD (started by the relay, not by hand)",
              file=sys.stderr)
        return 2
    # Ctrl-C in a terminal reaches the whole process group: the main process stops, and its
    # workers follow when the control channel closes, without a traceback each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        trio.run(_run, int(argv[0]))
    except (ConnectionClosed, DerpError, trio.TooSlowError) as exc:
        print("derp worker: %s" % exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
