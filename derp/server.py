"""The DERP relay server: sessions, routing, meshing (derp.md §3–§7).

:class:`DerpServer` holds no sockets of its own. The caller's HTTP front door reads the request
head of ``GET /derp`` and hands the connection over with :meth:`DerpServer.handle_upgrade`,
which runs that one session until it ends. Meshing with other DERP servers needs a background
task: run :meth:`DerpServer.run` in a nursery when ``mesh_with`` is given.

Per connection there is one reader (this session's task) and one writer task, in a nursery the
session owns. Everything a session sends goes through its bounded queues, so a relay step never
awaits a slow peer: packets for a full queue are dropped (oldest first, counted per reason), and
a peer whose writes stall for ``write_timeout`` is disconnected.
"""

from __future__ import annotations

import hmac
import ipaddress
import itertools
import logging
import random
import re
import socket
import ssl
import struct
from collections import deque
from typing import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import trio

from . import frames as fr
from .errors import ClientRefused, ConnectionClosed, DerpError, HandshakeError, ProtocolError
from .tls import TLSStream
from .transport import RECV_SIZE, WebSocketStream, peer_address, read_frame
from .websocket import accept_key
from .wire import Wire, wire_for

log = logging.getLogger(__name__)

VerifyClient = Callable[[bytes], Awaitable[bool]]

# Packets queued per client before the oldest is dropped (the reference uses 32).
DEFAULT_QUEUE_SIZE = 32
# Control frames (pong, peer-gone, health) per client; a client that lets this many pile up
# without reading is not worth more memory: further ones are dropped and counted.
CONTROL_QUEUE_SIZE = 64
# A mesh watcher receives PeerPresent for every client at once; if it falls this far behind it
# is disconnected and will resync on reconnect, rather than let the queue grow.
WATCHER_QUEUE_SIZE = 16384
# Frames queued towards one mesh peer (ForwardPacket); mesh links carry many clients' traffic.
MESH_QUEUE_SIZE = 4096
# Upper bound on one batched write: large enough to amortise the syscall, small enough that a
# write finishes well within the write timeout on a slow link.
WRITE_BATCH_BYTES = 256 << 10
# Packets per write; a write is split into sendmsg calls of at most IOV_MAX buffers.
WRITE_BATCH_PACKETS = 512
# A mesh connection (to another server, or between the workers of one relay) carries the
# traffic of many clients, but its reader and writer get one turn each, like any client's,
# while every client's reader takes its turn to feed it. So a mesh connection moves more per
# turn: it reads this much at once, handles this many frames per step, and writes this much.
MESH_RECV_SIZE = 1 << 20
MESH_BURST = 1024
MESH_WRITE_BATCH_BYTES = 2 << 20
# A link to a sibling worker is this relay's own bus, not a slow peer: a reader that would
# queue past this many packets to it waits until the link's writer has made room (and wakes
# it) instead of making it drop. Without this, the link moves one socket buffer per scheduling
# round while every client's reader feeds it, and most cross packets are lost. A link whose
# writes stall for SIBLING_WRITE_TIMEOUT is dropped, which wakes every reader waiting on it.
SIBLING_HIGH_WATER = 1024
SIBLING_WRITE_TIMEOUT = 5.0
# The kernel's buffer for a sibling link (asked for; capped by net.core.wmem_max): the more it
# holds, the more the link moves per turn of its writer.
SIBLING_SOCKET_BUFFER = 4 << 20
HANDSHAKE_TIMEOUT = 10.0
VERIFY_TIMEOUT = 5.0
WRITE_TIMEOUT = 2.0
MESH_WRITE_TIMEOUT = 30.0
KEEPALIVE_INTERVAL = 60.0
KEEPALIVE_JITTER = 5.0
# PeerGone(not-here) answers per client per second (reference: about 3/s).
NOT_HERE_PER_SECOND = 3
MESH_RETRY_MIN = 0.5
MESH_RETRY_MAX = 15.0
# A sibling (another worker of this relay) is a local process: redial it soon after it went.
SIBLING_RETRY_MIN = 0.05
SIBLING_RETRY_MAX = 1.0

_KEEPALIVE = fr.encode(fr.KeepAlive())
# Header and destination key of a SendPacket: the smallest valid one (empty packet).
_SEND_MIN = fr.HEADER_LEN + fr.KEY_LEN
# Header, source and destination keys of a ForwardPacket.
_FORWARD_MIN = fr.HEADER_LEN + 2 * fr.KEY_LEN
# Frame header: type (1) ‖ payload length (4, big-endian).
_FRAME_HEADER = struct.Struct(">BI")
_UPGRADE_BODY = b"DERP requires connection upgrade"
_CHALLENGE_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

_ids = itertools.count(1)


def _short(key: bytes) -> str:
    return key.hex()[:8]


class _Stats:
    __slots__ = (
        "accepted", "refused", "packets_received", "bytes_received", "packets_relayed",
        "bytes_relayed", "packets_forwarded_out", "packets_forwarded_in", "packets_to_siblings",
        "packets_from_siblings", "drops", "frames_written", "bytes_written", "home_clients",
    )

    def __init__(self) -> None:
        self.accepted = 0
        self.refused = 0
        self.packets_received = 0
        self.bytes_received = 0
        self.packets_relayed = 0
        self.bytes_relayed = 0
        self.packets_forwarded_out = 0
        self.packets_forwarded_in = 0
        self.packets_to_siblings = 0
        self.packets_from_siblings = 0
        self.drops: dict[str, int] = {}
        self.frames_written = 0
        self.bytes_written = 0
        self.home_clients = 0

    def drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n


class _Outbox:
    """Bounded outgoing queues of one peer plus the wake-up for its writer task.

    Packets and control frames are kept apart so that a flood of packets cannot push out a
    PeerGone or Pong (the reference server also separates them).
    """

    __slots__ = (
        "packets", "control", "packet_limit", "control_limit", "lot", "stats", "kind", "wire",
        "space",
    )

    def __init__(self, stats: _Stats, packet_limit: int, control_limit: int, kind: str) -> None:
        self.packets: deque[bytes | bytearray] = deque()
        self.control: deque[bytes | memoryview] = deque()
        self.packet_limit = packet_limit
        self.control_limit = control_limit
        self.lot = trio.lowlevel.ParkingLot()
        self.stats = stats
        self.kind = kind
        # Set by the writer while it runs: where its frames go (for synchronous sends while the
        # writer is parked).
        self.wire: Wire | None = None
        # Readers waiting for room (sibling links only; see SIBLING_HIGH_WATER).
        self.space = trio.lowlevel.ParkingLot()

    def put_packet(self, frame: bytes | bytearray, light: bool = False) -> None:
        """Queue ``frame``, dropping the oldest packet when full.

        ``light``: the sender is lightly loaded (this packet came alone), so an idle writer's
        job may be done here with one direct send. Under load, queueing is better: the writer
        then sends many frames per system call and the receiver reads them in one go.
        """
        q = self.packets
        wire = self.wire
        if light and wire is not None and self.lot and not q and not self.control:
            # The writer is parked with nothing queued, so no write of ours is in flight and a
            # non-blocking send right here cannot interleave with one. This saves waking the
            # writer task for a lone packet, which costs more than the send itself.
            if wire.send_nowait(frame):
                self.stats.frames_written += 1
                self.stats.bytes_written += len(frame)
                if wire.pending:  # the rest must go out before anything else
                    self.lot.unpark()
                return
        if len(q) >= self.packet_limit:
            q.popleft()  # drop the oldest: fresher packets are worth more to WireGuard
            self.stats.drop(self.kind + "_queue_full")
        q.append(frame)
        if self.lot:
            self.lot.unpark()

    def put_control(self, frame: bytes) -> bool:
        if len(self.control) >= self.control_limit:
            self.stats.drop(self.kind + "_control_queue_full")
            return False
        self.control.append(frame)
        if self.lot:
            self.lot.unpark()
        return True

    def take_parts(self, max_bytes: int = WRITE_BATCH_BYTES,
                   max_packets: int = WRITE_BATCH_PACKETS) -> tuple[list[bytes | bytearray], int]:
        """The next write: all control frames, then packets up to ``max_bytes``."""
        parts: list[bytes | bytearray] = list(self.control)
        self.control.clear()
        size = 0
        for f in parts:
            size += len(f)
        q = self.packets
        while q and size < max_bytes and len(parts) < max_packets:
            f = q.popleft()
            size += len(f)
            parts.append(f)
        return parts, size

    def __bool__(self) -> bool:
        return bool(self.packets or self.control)


class _Conn:
    """One admitted client session (regular client or inbound mesh peer)."""

    __slots__ = (
        "id", "key", "stream", "outbox", "scope", "can_mesh", "sibling", "can_ack_pings",
        "is_prober", "preferred", "senders", "remote", "watching", "not_here_window",
        "not_here_count", "idle_since", "waiting",
    )

    def __init__(
        self, cid: str, key: bytes, stream: trio.abc.Stream, outbox: _Outbox,
        info: dict, can_mesh: bool, remote: tuple[str, int] | None, sibling: bool = False,
    ) -> None:
        self.id = cid
        self.key = key
        self.stream = stream
        self.outbox = outbox
        self.scope = trio.CancelScope()
        self.can_mesh = can_mesh
        # A mesh peer that is another worker of this same relay (see DerpServer's siblings).
        self.sibling = sibling
        self.can_ack_pings = bool(info.get("CanAckPings"))
        self.is_prober = bool(info.get("IsProber"))
        self.preferred = False
        # Keys of clients that sent to this one: they get PeerGone when it leaves (derp.md §4).
        self.senders: set[bytes] = set()
        self.remote = remote
        self.watching = False
        self.not_here_window = -1.0
        self.not_here_count = 0
        self.idle_since = trio.current_time()
        # Where the reader stopped: a congested sibling link's outbox (None: a checkpoint).
        self.waiting: _Outbox | None = None

    def __str__(self) -> str:
        return self.id


class _MeshLink:
    """Our outbound connection to one other server of the region (we are its mesh client), or
    to a sibling worker of this relay."""

    def __init__(self, server: "DerpServer", url: str, sibling: bool = False) -> None:
        self.server = server
        self.url = url
        self.sibling = sibling
        self.outbox = _Outbox(server._stats, MESH_QUEUE_SIZE, CONTROL_QUEUE_SIZE, "mesh")
        self.keys: set[bytes] = set()
        # A sibling's clients as it announced them (PeerPresent frames), for region peers.
        self.presence: dict[bytes, bytes] = {}
        self.connected = False
        self.peer_public: bytes | None = None

    def __str__(self) -> str:
        return "mesh(%s)" % self.url


class DerpServer:
    """A DERP relay: admits clients, relays packets between them, meshes with peers.

    Args:
        private_key: the server's 32-byte Curve25519 private key (its public key goes into the
            DERPMap-less ``Derp-Public-Key`` header and the ServerKey frame).
        verify_client: optional ``async (node_public_key: bytes) -> bool``. When given, a
            client key it does not approve is refused (connection closed after ClientInfo).
            It is called with a deadline of ``VERIFY_TIMEOUT``; an exception refuses too.
            Mesh peers (correct mesh key) skip it.
        mesh_key: the region's shared mesh key (32 bytes, or 64 hex chars). Clients presenting
            it in ClientInfo may WatchConns, ClosePeer and ForwardPacket.
        mesh_with: URLs (``https://host:port`` or ``http://…``) of the other servers of the
            region; requires ``mesh_key`` and a running :meth:`run`.
        mesh_ssl_context: TLS context for dialing ``https`` mesh URLs (default: system trust).
        queue_size: packets queued per client before the oldest is dropped.
        write_timeout: a client whose write stalls this long is disconnected.
        keepalive_interval: idle time before a KeepAlive frame (plus up to 5 s jitter).
        read_timeout: a client that declared ``CanAckPings`` and sends nothing (not even the Pong
            for our keepalive Ping) for this long is disconnected. None disables it.
        sibling_key, siblings: when this server is one worker of a relay that runs as several
            processes (derp.workers): the key the workers mesh with among themselves, and the
            URLs (``unix:/path``) of the other workers. A sibling is a mesh peer with two
            differences: it shares our server key, and a region peer (``mesh_key``) connected
            to any one worker sees the clients of all of them: that worker announces its
            siblings' clients too and passes on packets for them (one more hop, inside the
            relay; a packet from a sibling is never passed on).
    """

    def __init__(
        self,
        private_key: bytes,
        *,
        verify_client: VerifyClient | None = None,
        mesh_key: bytes | str | None = None,
        mesh_with: Iterable[str] = (),
        mesh_ssl_context: ssl.SSLContext | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        write_timeout: float = WRITE_TIMEOUT,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        read_timeout: float | None = 3 * KEEPALIVE_INTERVAL + KEEPALIVE_JITTER,
        sibling_key: bytes | str | None = None,
        siblings: Iterable[str] = (),
    ) -> None:
        if len(private_key) != fr.KEY_LEN:
            raise ValueError("private key must be 32 bytes")
        if queue_size < 1:
            raise ValueError("queue_size must be positive")
        self._private = bytes(private_key)
        self.public_key: bytes = fr.public_key(self._private)
        self._verify = verify_client
        self._mesh_key_hex = _mesh_key_hex(mesh_key)
        self._sibling_key_hex = _mesh_key_hex(sibling_key)
        self._mesh_urls = list(mesh_with)
        if self._mesh_urls and self._mesh_key_hex is None:
            raise ValueError("mesh_with needs mesh_key")
        sibling_urls = list(siblings)
        if sibling_urls and self._sibling_key_hex is None:
            raise ValueError("siblings need sibling_key")
        self._mesh_ssl = mesh_ssl_context
        self._queue_size = queue_size
        self._write_timeout = write_timeout
        self._keepalive = keepalive_interval
        self._read_timeout = read_timeout
        self._stats = _Stats()
        # key -> newest connection for that key (the one we deliver to)
        self._clients: dict[bytes, _Conn] = {}
        # key -> all live connections for that key (duplicates are kept, newest wins)
        self._by_key: dict[bytes, list[_Conn]] = {}
        self._watchers: set[_Conn] = set()
        # keys connected to other servers of the region -> the link that reaches them
        self._remote: dict[bytes, _MeshLink] = {}
        # remote key -> our local clients that sent to it (PeerGone when it leaves)
        self._remote_senders: dict[bytes, set[bytes]] = {}
        self._links = [_MeshLink(self, u) for u in self._mesh_urls]
        self._links += [_MeshLink(self, u, sibling=True) for u in sibling_urls]
        self._health = ""
        self._all: set[_Conn] = set()

    # -----------------------------------------------------------------------------------------
    # HTTP integration

    @property
    def public_key_hex(self) -> str:
        return self.public_key.hex()

    @staticmethod
    def handle_plain_http(
        method: str, target: str, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """Answer the side endpoints of a DERP server, or None if ``target`` is not one.

        Handles ``/derp/probe`` and ``/derp/latency-check`` (GET/HEAD → 200 with
        ``Access-Control-Allow-Origin: *``, other methods 405) and ``/generate_204`` (204, and
        ``X-Tailscale-Response: response <c>`` for a valid ``X-Tailscale-Challenge``). Returns
        ``(status, headers, body)``; the caller writes it and keeps owning its connection.
        """
        path = urlsplit(target).path
        if path in ("/derp/probe", "/derp/latency-check"):
            if method.upper() not in ("GET", "HEAD"):
                return 405, [(b"Allow", b"GET, HEAD")], b"bogus probe method\n"
            return 200, [(b"Access-Control-Allow-Origin", b"*")], b""
        if path == "/generate_204":
            hdrs = [(
                b"Cache-Control",
                b"no-cache, no-store, must-revalidate, no-transform, max-age=0",
            )]
            challenge = _header(headers, b"x-tailscale-challenge")
            if challenge is not None:
                c = challenge.decode("latin-1")
                if _CHALLENGE_RE.match(c):
                    hdrs.append((b"X-Tailscale-Response", ("response " + c).encode()))
            return 204, hdrs, b""
        return None

    async def handle_upgrade(
        self,
        stream: trio.abc.Stream,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        leftover: bytes,
        *,
        remote_addr: tuple[str, int] | None = None,
    ) -> None:
        """Take over a connection whose ``GET /derp`` request head has been read.

        Args:
            stream: the connection (TCP or TLS). Owned by this call from now on: it is closed
                before this returns, whatever happens.
            method, target: from the request line (the path is not checked; clients always use
                ``/derp``).
            headers: the request headers as (name, value) byte pairs, names in any case (h11
                gives them lower-cased).
            leftover: bytes already read past the request head (a fast-start ClientInfo).
            remote_addr: the client's (ip, port) if the caller knows it better than the socket.

        Answers 426 unless ``Upgrade`` is ``DERP`` or ``websocket`` (with subprotocol
        ``derp``); otherwise writes the 101 (skipped when ``Derp-Fast-Start: 1``) and runs the
        DERP session until either side ends it. Returns normally when the session ends for any
        peer-caused reason (EOF, protocol error, refusal, timeout); lets ``trio.Cancelled``
        through; never raises for a misbehaving peer.
        """
        cid = "derp-%d" % next(_ids)
        try:
            remote = remote_addr or peer_address(stream)
            try:
                session_stream = await self._upgrade(cid, stream, method, headers, leftover)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
                log.debug("%s: upgrade failed: %r", cid, exc)
                return
            if session_stream is None:
                return
            s, rest = session_stream
            await self._run_session(cid, s, rest, remote)
        finally:
            with trio.move_on_after(1, shield=True):
                await _close_quietly(stream)

    async def _upgrade(
        self, cid: str, stream: trio.abc.Stream, method: str,
        headers: list[tuple[bytes, bytes]], leftover: bytes,
    ) -> tuple[trio.abc.Stream, bytes] | None:
        upgrade = (_header(headers, b"upgrade") or b"").strip().lower()
        with trio.fail_after(self._write_timeout):
            if method.upper() != "GET" or upgrade not in (b"derp", b"websocket"):
                await stream.send_all(_http_response(
                    426, [(b"Content-Type", b"text/plain; charset=utf-8"),
                          (b"Connection", b"close")], _UPGRADE_BODY,
                ))
                return None
            ident = [
                (b"Derp-Version", str(fr.PROTOCOL_VERSION).encode()),
                (b"Derp-Public-Key", self.public_key.hex().encode()),
            ]
            if upgrade == b"websocket":
                protos = [p.strip().lower() for p in
                          (_header(headers, b"sec-websocket-protocol") or b"").split(b",")]
                wskey = _header(headers, b"sec-websocket-key")
                if b"derp" not in protos or not wskey:
                    await stream.send_all(_http_response(
                        400, [(b"Connection", b"close")], b"websocket needs subprotocol derp\n",
                    ))
                    return None
                await stream.send_all(_http_response(101, [
                    (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
                    (b"Sec-WebSocket-Accept", accept_key(wskey)),
                    (b"Sec-WebSocket-Protocol", b"derp"), *ident,
                ], None))
                log.debug("%s: websocket upgrade", cid)
                return WebSocketStream(stream, client=False, leftover=leftover), b""
            fast = (_header(headers, b"derp-fast-start") or b"").strip() == b"1"
            if not fast:
                await stream.send_all(_http_response(101, [
                    (b"Upgrade", b"DERP"), (b"Connection", b"Upgrade"), *ident,
                ], None))
            return stream, leftover

    # -----------------------------------------------------------------------------------------
    # Session

    async def _run_session(
        self, cid: str, stream: trio.abc.Stream, leftover: bytes,
        remote: tuple[str, int] | None,
    ) -> None:
        decoder = fr.server_decoder()
        if leftover:
            decoder.receive_data(leftover)
        conn: _Conn | None = None
        try:
            conn, server_info = await self._handshake(cid, stream, decoder, remote)
            # Registered before the client hears it is in: from then on it is counted, and
            # packets for it queue up (and follow the ServerInfo, since its writer starts after).
            self._register(conn)
            try:
                with trio.fail_after(self._write_timeout):
                    await stream.send_all(server_info)
                with conn.scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._writer, conn)
                        nursery.start_soon(self._send_keepalives, conn)
                        await self._reader(conn, decoder)
                        nursery.cancel_scope.cancel()
            finally:
                self._unregister(conn)
        except* (ProtocolError, ClientRefused) as eg:
            for exc in eg.exceptions:
                log.warning("%s: closing: %s", conn or cid, exc)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionClosed) as eg:
            log.debug("%s: connection lost: %r", conn or cid, eg.exceptions[0])
        except* trio.TooSlowError:
            self._stats.drop("write_timeout")
            log.info("%s: peer too slow (write or handshake timeout), closing", conn or cid)
        except* OSError as eg:
            log.debug("%s: socket error: %r", conn or cid, eg.exceptions[0])

    async def _handshake(
        self, cid: str, stream: trio.abc.Stream, decoder: fr.FrameDecoder,
        remote: tuple[str, int] | None,
    ) -> tuple[_Conn, bytes]:
        """Up to the admission: the new connection, and the ServerInfo frame to send it."""
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            await stream.send_all(fr.encode(fr.ServerKey(self.public_key)))
            msg = await read_frame(stream, decoder)
            if not isinstance(msg, fr.ClientInfo):
                raise HandshakeError("expected ClientInfo, got %s" % type(msg).__name__)
            info = fr.open_client_info(self._private, msg)
            key = msg.key
            mk = info.get("meshKey")
            can_mesh = sibling = False
            if mk:
                sibling = _same_key(mk, self._sibling_key_hex)
                if not sibling and not _same_key(mk, self._mesh_key_hex):
                    self._stats.refused += 1
                    raise ClientRefused("wrong mesh key from %s" % _short(key))
                can_mesh = True
            if not can_mesh and self._verify is not None:
                ok = False
                try:
                    with trio.fail_after(VERIFY_TIMEOUT):
                        ok = bool(await self._verify(key))
                except trio.TooSlowError:
                    log.error("%s: verify_client timed out for %s", cid, _short(key))
                except Exception:  # the hook is not ours: refuse, log, serve on
                    log.exception("%s: verify_client failed for %s", cid, _short(key))
                if not ok:
                    self._stats.refused += 1
                    raise ClientRefused("client %s not allowed" % _short(key))
        reply: dict = {"version": fr.PROTOCOL_VERSION}
        server_info = fr.encode(fr.seal_server_info(self._private, key, reply))
        kind = "sibling" if sibling else "mesh_peer" if can_mesh else "client"
        outbox = _Outbox(
            self._stats, self._queue_size,
            WATCHER_QUEUE_SIZE if can_mesh else CONTROL_QUEUE_SIZE, kind,
        )
        conn = _Conn(cid, key, stream, outbox, info, can_mesh, remote, sibling)
        self._stats.accepted += 1
        log.info("%s: %s %s connected from %s", cid, kind, _short(key), remote)
        return conn, server_info

    async def _reader(self, conn: _Conn, decoder: fr.FrameDecoder) -> None:
        stream = conn.stream
        # TLS: everything one socket read brought, decrypted record by record, goes to the
        # decoder without being joined first.
        chunks = stream.receive_chunks if type(stream) is TLSStream else None
        scope = trio.CancelScope()
        timeout = self._read_timeout if conn.can_ack_pings else None
        # Frames handled per scheduling step. Writers only run when the readers yield, so a
        # reader that relays a whole 64 KiB read at once (50+ full-size packets) overflows the
        # destination's queue and drops packets it has just paid to parse; half a queue per
        # step keeps every queue within bounds while its writer gets a turn. (A mesh
        # connection's frames go to many destinations: it takes bigger steps, see MESH_BURST.)
        burst = MESH_BURST if conn.can_mesh else max(1, self._queue_size // 2)
        size = MESH_RECV_SIZE if conn.can_mesh else RECV_SIZE
        with scope:
            if timeout is not None:
                scope.deadline = trio.current_time() + timeout
            while True:
                await self._handle_buffered(conn, decoder, burst)
                if chunks is not None:
                    got = await chunks(size)
                    for data in got:
                        decoder.receive_data(data)
                    eof = not got
                else:
                    data = await stream.receive_some(size)
                    decoder.receive_data(data)  # b"" tells the decoder about EOF
                    eof = not data
                if eof:
                    decoder.receive_data(b"")
                    await self._handle_buffered(conn, decoder, burst)  # raises if cut short
                    return
                if timeout is not None:
                    scope.deadline = trio.current_time() + timeout
        if scope.cancelled_caught:
            log.info("%s: no frames for %.0f s, closing", conn, timeout)

    async def _handle_buffered(self, conn: _Conn, decoder: fr.FrameDecoder, burst: int) -> None:
        """Act on every whole frame the decoder holds, ``burst`` per scheduling step."""
        backlog: list[tuple[int, bytearray]] = []
        patient = True
        while True:
            frames = backlog or decoder.take_frames(burst)
            if not frames:
                return
            done = self._handle_frames(conn, frames, patient)
            backlog = frames[done:]
            patient = not backlog
            if backlog and conn.waiting is not None:
                await conn.waiting.space.park()  # (no deadline: see SIBLING_HIGH_WATER)
            elif backlog or len(frames) == burst:
                await trio.lowlevel.checkpoint()
            else:
                return

    def _handle_frames(self, conn: _Conn, frames: list[tuple[int, bytearray]],
                       patient: bool) -> int:
        """Act on ``frames`` in order; returns how many were handled.

        Stops early, with ``conn.waiting`` set, at a packet for a congested sibling link; and
        (mesh readers, which take big steps) at one for a client whose queue is half full
        because its writer has not had its turn yet. Not ``patient``: the first frame is
        handled whatever (a retry after the wait always makes progress).
        """
        src = conn.key
        clients = self._clients
        light = len(frames) == 1
        received = received_bytes = relayed = relayed_bytes = 0
        done = 0
        conn.waiting = None
        try:
            for ftype, f in frames:
                if ftype == 0x04:  # SendPacket, the hot path: no message object, no extra copy
                    if len(f) < _SEND_MIN:
                        raise ProtocolError("short SendPacket")
                    n = len(f) - _SEND_MIN
                    received += 1
                    received_bytes += n
                    dst = bytes(f[5:_SEND_MIN])
                    target = clients.get(dst)
                    if target is not None:
                        # SendPacket(dst, pkt) becomes RecvPacket(src, pkt) in place: same length.
                        f[0] = 0x05
                        f[5:_SEND_MIN] = src
                        target.outbox.put_packet(f, light)
                        target.senders.add(src)
                        relayed += 1
                        relayed_bytes += n
                    elif not self._relay_elsewhere(conn, dst, f, patient, light):
                        received -= 1
                        received_bytes -= n
                        break
                elif ftype == 0x0A and conn.can_mesh and len(f) >= _FORWARD_MIN:
                    # Between the workers of one relay this is as hot as SendPacket.
                    if not self._forwarded(conn, f, patient, light):
                        break
                else:
                    self._handle_other(conn, fr.parse_payload(ftype, bytes(f[5:])))
                done += 1
                patient = True
        finally:
            stats = self._stats
            stats.packets_received += received
            stats.bytes_received += received_bytes
            stats.packets_relayed += relayed
            stats.bytes_relayed += relayed_bytes
        return done

    def _forwarded(self, conn: _Conn, f: bytearray, patient: bool, light: bool) -> bool:
        """A ForwardPacket frame ``f`` from mesh peer ``conn``: deliver it here, or (from a
        region peer, for a sibling's client) pass it on to that sibling. False: not now (see
        _handle_frames)."""
        dst = bytes(f[37:_FORWARD_MIN])
        stats = self._stats
        target = self._clients.get(dst)
        if target is None or target.can_mesh:
            link = None if conn.sibling else self._remote.get(dst)
            if link is not None and link.sibling:
                if patient and len(link.outbox.packets) >= SIBLING_HIGH_WATER:
                    conn.waiting = link.outbox
                    return False
                link.outbox.put_packet(f)  # the same frame, as it came
                stats.packets_forwarded_in += 1
                stats.packets_to_siblings += 1
                return True
            # Never re-forward otherwise: a mesh is one hop, so forwarding on could loop.
            if conn.sibling:
                stats.packets_from_siblings += 1
            else:
                stats.packets_forwarded_in += 1
            stats.drop("forward_unknown_dest")
            return True
        out = target.outbox
        if patient and len(out.packets) * 2 >= out.packet_limit and not (
                out.wire is not None and out.wire.blocked):
            return False  # its writer only needs a turn: let it have one before we go on
        if conn.sibling:
            stats.packets_from_siblings += 1
        else:
            stats.packets_forwarded_in += 1
        src = bytes(f[5:37])
        # ForwardPacket(src, dst, pkt) becomes RecvPacket(src, pkt) in place: drop dst.
        del f[37:_FORWARD_MIN]
        _FRAME_HEADER.pack_into(f, 0, 0x05, len(f) - fr.HEADER_LEN)
        out.put_packet(f, light)
        target.senders.add(src)
        stats.packets_relayed += 1
        stats.bytes_relayed += len(f) - _SEND_MIN
        return True

    def _relay_elsewhere(self, conn: _Conn, dst: bytes, f: bytearray, patient: bool,
                         light: bool) -> bool:
        """A SendPacket frame ``f`` for a key not connected here: mesh-forward it or answer
        not-here. False: not now, the sibling link it needs is congested."""
        stats = self._stats
        link = self._remote.get(dst)
        if link is not None:
            if patient and link.sibling and len(link.outbox.packets) >= SIBLING_HIGH_WATER:
                conn.waiting = link.outbox
                return False
            # SendPacket(dst, pkt) becomes ForwardPacket(src, dst, pkt) in place: the source key
            # goes in front (one move of the packet; a new frame would be one more copy).
            n = len(f) - _SEND_MIN
            f[5:5] = conn.key
            _FRAME_HEADER.pack_into(f, 0, 0x0A, len(f) - fr.HEADER_LEN)
            link.outbox.put_packet(f, light)
            s = self._remote_senders.get(dst)
            if s is None:
                s = self._remote_senders[dst] = set()
            s.add(conn.key)
            if link.sibling:  # (which counts it as relayed when it delivers)
                stats.packets_to_siblings += 1
            else:
                stats.packets_forwarded_out += 1
                stats.bytes_relayed += n
            return True
        stats.drop("unknown_dest")
        self._note_not_here(conn, dst)
        return True

    def _note_not_here(self, conn: _Conn, dst: bytes) -> None:
        now = trio.current_time()
        window = int(now)
        if window != conn.not_here_window:
            conn.not_here_window = window
            conn.not_here_count = 0
        if conn.not_here_count < NOT_HERE_PER_SECOND:
            conn.not_here_count += 1
            conn.outbox.put_control(fr.encode(fr.PeerGone(dst, fr.PeerGoneReason.NOT_HERE)))

    def _handle_other(self, conn: _Conn, ev: fr.Frame) -> None:
        if isinstance(ev, fr.Ping):
            conn.outbox.put_control(fr.encode(fr.Pong(ev.data)))
        elif isinstance(ev, fr.Pong) or isinstance(ev, fr.KeepAlive):
            pass  # the read deadline was already pushed forward by the bytes arriving
        elif isinstance(ev, fr.NotePreferred):
            if ev.preferred != conn.preferred:
                self._stats.home_clients += 1 if ev.preferred else -1
                conn.preferred = ev.preferred
        elif isinstance(ev, fr.ForwardPacket):
            self._require_mesh(conn, "ForwardPacket")  # mesh peers' take the fast path
            self._forwarded(conn, bytearray(fr.encode(ev)))
        elif isinstance(ev, fr.WatchConns):
            self._require_mesh(conn, "WatchConns")
            if not conn.watching:
                conn.watching = True
                self._watchers.add(conn)
                for c in list(self._clients.values()):
                    if not c.can_mesh:
                        conn.outbox.put_control(_peer_present(c))
                if not conn.sibling:
                    # A region peer sees this whole relay: the siblings' clients too.
                    for k, link in list(self._remote.items()):
                        if link.sibling and k not in self._clients:
                            conn.outbox.put_control(link.presence[k])
        elif isinstance(ev, fr.ClosePeer):
            self._require_mesh(conn, "ClosePeer")
            for c in list(self._by_key.get(ev.key, ())):
                if not c.can_mesh:
                    log.info("%s: closing %s on request of mesh peer", c, _short(ev.key))
                    c.scope.cancel()
        elif isinstance(ev, fr.ClientInfo):
            raise ProtocolError("second ClientInfo")
        else:
            log.debug("%s: ignoring %s", conn, type(ev).__name__)

    @staticmethod
    def _require_mesh(conn: _Conn, what: str) -> None:
        if not conn.can_mesh:
            raise ProtocolError("%s from a non-mesh client" % what)

    async def _writer(self, conn: _Conn) -> None:
        outbox = conn.outbox
        timeout = MESH_WRITE_TIMEOUT if conn.can_mesh else self._write_timeout
        # Plain TCP hands the queued frames to the kernel as they are (sendmsg with a list of
        # buffers); TLS encrypts a whole batch into full records; see wire.py.
        wire = outbox.wire = wire_for(conn.stream)
        try:
            await self._write_loop(conn, outbox, wire, timeout)
        finally:
            outbox.wire = None
            wire.close()

    async def _write_loop(self, conn: _Conn, outbox: _Outbox, wire: Wire, timeout: float) -> None:
        stats = self._stats
        pending = wire.pending
        while True:
            if not outbox and not pending:
                conn.idle_since = trio.current_time()
                await outbox.lot.park()
            if conn.watching and len(outbox.control) >= outbox.control_limit:
                raise ProtocolError("mesh watcher fell behind")
            parts, size = outbox.take_parts()
            # (The write timeout applies only while the socket is full: a write the kernel
            # takes at once costs no cancel scope.)
            await wire.write(parts, timeout)
            stats.frames_written += 1
            stats.bytes_written += size

    async def _send_keepalives(self, conn: _Conn) -> None:
        """Queue a KeepAlive (and a Ping, for clients that answer) after idle time."""
        outbox = conn.outbox
        while True:
            await trio.sleep(self._keepalive + random.uniform(0, KEEPALIVE_JITTER))
            # Only the writer's idle time counts: a busy connection needs no keepalive. (Sends
            # made directly by put_packet do not count, so a connection fed only that way gets
            # a spare KeepAlive now and then; cheaper than reading the clock per packet.)
            if outbox or trio.current_time() - conn.idle_since < self._keepalive:
                continue
            outbox.put_control(_KEEPALIVE)
            if conn.can_ack_pings:
                # A Pong proves the client still reads; see read_timeout.
                outbox.put_control(fr.encode(fr.Ping(random.randbytes(8))))

    def _register(self, conn: _Conn) -> None:
        self._all.add(conn)
        lst = self._by_key.setdefault(conn.key, [])
        if lst and not conn.can_mesh:  # (siblings all share our key)
            log.info("%s: duplicate connection for %s; newest wins", conn, _short(conn.key))
        lst.append(conn)
        self._clients[conn.key] = conn
        if self._health:
            conn.outbox.put_control(fr.encode(fr.Health(self._health)))
        if not conn.can_mesh:
            frame = _peer_present(conn)
            for w in self._watchers:
                w.outbox.put_control(frame)

    def _unregister(self, conn: _Conn) -> None:
        self._all.discard(conn)
        self._watchers.discard(conn)
        if conn.preferred:
            self._stats.home_clients -= 1
        lst = self._by_key.get(conn.key, [])
        if conn in lst:
            lst.remove(conn)
        if lst:
            # Another connection for the key lives on: it inherits delivery and watchers.
            heir = lst[-1]
            self._clients[conn.key] = heir
            heir.senders |= conn.senders
            return
        self._by_key.pop(conn.key, None)
        if self._clients.get(conn.key) is conn:
            del self._clients[conn.key]
        gone = fr.encode(fr.PeerGone(conn.key, fr.PeerGoneReason.DISCONNECTED))
        if not conn.can_mesh:
            # A region peer watches the whole relay: the key may live on at a sibling.
            link = self._remote.get(conn.key)
            elsewhere = link is not None and link.sibling
            for w in self._watchers:
                if w.sibling or not elsewhere:
                    w.outbox.put_control(gone)
        self._notify_senders(conn.senders, gone)
        log.info("%s: %s disconnected", conn, _short(conn.key))

    def _tell_region_peers(self, key: bytes, frame: bytes) -> None:
        """Pass a sibling's PeerPresent/PeerGone on to the region peers watching us (unless the
        key is also connected here, which they know from us directly)."""
        local = self._clients.get(key)
        if local is not None and not local.can_mesh:
            return
        for w in self._watchers:
            if not w.sibling:
                w.outbox.put_control(frame)

    def _notify_senders(self, senders: Iterable[bytes], frame: bytes) -> None:
        for k in senders:
            c = self._clients.get(k)
            if c is not None:
                c.outbox.put_control(frame)

    # -----------------------------------------------------------------------------------------
    # Health, restart, shutdown

    def set_health(self, problem: str) -> None:
        """Send a Health frame (empty = healthy) to every client now and to new ones later."""
        self._health = problem
        frame = fr.encode(fr.Health(problem))
        for c in self._all:
            c.outbox.put_control(frame)

    def notify_restarting(self, reconnect_in: float, try_for: float) -> None:
        """Tell every client we are restarting: reconnect after ``reconnect_in`` s, for
        ``try_for`` s. Call before shutting down; it does not close anything."""
        frame = fr.encode(fr.Restarting(int(reconnect_in * 1000), int(try_for * 1000)))
        for c in self._all:
            c.outbox.put_control(frame)

    def close_all(self) -> None:
        """Cancel every running session (each then closes its own stream)."""
        for c in list(self._all):
            c.scope.cancel()

    def metrics(self) -> dict[str, object]:
        """A snapshot of counters and gauges (plain ints and dicts, JSON-serialisable)."""
        s = self._stats
        return {
            "clients": sum(1 for c in self._all if not c.can_mesh),
            "unique_client_keys": sum(1 for k, c in self._clients.items() if not c.can_mesh),
            "mesh_peers_inbound": sum(1 for c in self._all if c.can_mesh and not c.sibling),
            "mesh_links_connected": sum(1 for l in self._links if l.connected and not l.sibling),
            "mesh_links": sum(1 for l in self._links if not l.sibling),
            "remote_keys": sum(1 for l in self._remote.values() if not l.sibling),
            "sibling_links_connected": sum(1 for l in self._links if l.connected and l.sibling),
            "sibling_links": sum(1 for l in self._links if l.sibling),
            "sibling_keys": sum(1 for l in self._remote.values() if l.sibling),
            "watchers": len(self._watchers),
            "home_clients": s.home_clients,
            "accepted_total": s.accepted,
            "refused_total": s.refused,
            "packets_received": s.packets_received,
            "bytes_received": s.bytes_received,
            "packets_relayed": s.packets_relayed,
            "bytes_relayed": s.bytes_relayed,
            "packets_forwarded_out": s.packets_forwarded_out,
            "packets_forwarded_in": s.packets_forwarded_in,
            "packets_to_siblings": s.packets_to_siblings,
            "packets_from_siblings": s.packets_from_siblings,
            "writes": s.frames_written,
            "bytes_written": s.bytes_written,
            "drops": dict(s.drops),
        }

    # -----------------------------------------------------------------------------------------
    # Meshing

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the background work (mesh links) until cancelled.

        Needed only with ``mesh_with``; without links it just sleeps, so callers may always
        start it. ``task_status.started()`` is called once the link tasks are started (not
        connected: links dial and redial with backoff on their own).
        """
        async with trio.open_nursery() as nursery:
            for link in self._links:
                nursery.start_soon(self._mesh_loop, link)
            task_status.started()
            await trio.sleep_forever()

    async def _mesh_loop(self, link: _MeshLink) -> None:
        from .client import connect_url  # client imports frames only; avoid a cycle at import

        first, most = ((SIBLING_RETRY_MIN, SIBLING_RETRY_MAX) if link.sibling
                       else (MESH_RETRY_MIN, MESH_RETRY_MAX))
        delay = first
        while True:
            try:
                with trio.fail_after(HANDSHAKE_TIMEOUT):
                    client = await connect_url(
                        link.url, self._private, ssl_context=self._mesh_ssl,
                        mesh_key=self._sibling_key_hex if link.sibling else self._mesh_key_hex,
                    )
            except (OSError, DerpError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                # (Siblings start together; the first dials often come before the listen.)
                log.log(logging.DEBUG if link.sibling else logging.INFO,
                        "%s: dial failed: %r; retry in %.2f s", link, exc, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, most)
                continue
            if client.server_public == self.public_key and not link.sibling:
                log.info("%s: that is this server; not meshing with myself", link)
                await client.aclose()
                return
            delay = first
            if link.sibling:
                try:
                    client.stream.socket.setsockopt(  # type: ignore[attr-defined]
                        socket.SOL_SOCKET, socket.SO_SNDBUF, SIBLING_SOCKET_BUFFER)
                except OSError:
                    pass
            link.connected = True
            link.peer_public = client.server_public
            log.info("%s: connected (peer %s)", link, _short(client.server_public))
            try:
                async with client:
                    await client.send(fr.WatchConns())
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._mesh_writer, link, client)
                        await self._mesh_reader(link, client)
                        nursery.cancel_scope.cancel()
            except* (DerpError, trio.BrokenResourceError, trio.ClosedResourceError,
                     trio.TooSlowError, OSError) as eg:
                log.info("%s: link lost: %r", link, eg.exceptions[0])
            finally:
                link.connected = False
                self._forget_link_keys(link)
            await trio.sleep(delay)

    async def _mesh_writer(self, link: _MeshLink, client: "object") -> None:
        """The link's only writer once it runs (the reader's Pongs go through the outbox)."""
        outbox = link.outbox
        timeout = SIBLING_WRITE_TIMEOUT if link.sibling else MESH_WRITE_TIMEOUT
        # As for a client: a lone packet for an idle link goes out from the reader at once.
        wire = outbox.wire = wire_for(client.stream)  # type: ignore[attr-defined]
        try:
            while True:
                if not outbox and not wire.pending:
                    await outbox.lot.park()
                parts, _ = outbox.take_parts(MESH_WRITE_BATCH_BYTES, MESH_QUEUE_SIZE)
                if outbox.space:
                    # Wake as many waiting readers as the room now fits (a reader takes up to
                    # a burst per step), not all of them: hundreds woken to find it full again
                    # would cost more than the packets they carry.
                    room = SIBLING_HIGH_WATER - len(outbox.packets)
                    outbox.space.unpark(count=max(1, room // (DEFAULT_QUEUE_SIZE // 2)))
                await wire.write(parts, timeout)
                await trio.lowlevel.checkpoint()  # (a link's reader must get its turns too)
        finally:
            outbox.wire = None
            wire.close()

    async def _mesh_reader(self, link: _MeshLink, client: "object") -> None:
        while True:
            ev = await client.receive()  # type: ignore[attr-defined]
            if isinstance(ev, fr.PeerPresent):
                link.keys.add(ev.key)
                self._remote[ev.key] = link
                if link.sibling:
                    link.presence[ev.key] = frame = fr.encode(ev)
                    self._tell_region_peers(ev.key, frame)
            elif isinstance(ev, fr.PeerGone):
                link.keys.discard(ev.key)
                link.presence.pop(ev.key, None)
                if self._remote.get(ev.key) is link:
                    del self._remote[ev.key]
                    self._remote_gone(link, ev.key)
            elif isinstance(ev, fr.Ping):
                link.outbox.put_control(fr.encode(fr.Pong(ev.data)))

    def _remote_gone(self, link: _MeshLink, key: bytes) -> None:
        frame = fr.encode(fr.PeerGone(key, fr.PeerGoneReason.DISCONNECTED))
        self._notify_senders(self._remote_senders.pop(key, ()), frame)
        if link.sibling:
            self._tell_region_peers(key, frame)

    def _forget_link_keys(self, link: _MeshLink) -> None:
        gone = 0
        for k in link.keys:
            if self._remote.get(k) is link:
                del self._remote[k]
                gone += 1
                self._remote_gone(link, k)
        link.keys.clear()
        link.presence.clear()
        dropped = len(link.outbox.packets)
        link.outbox.packets.clear()
        link.outbox.control.clear()
        link.outbox.space.unpark_all()
        if dropped:
            self._stats.drop("mesh_link_down", dropped)
        log.debug("%s: forgot %d remote keys", link, gone)


def _mesh_key_hex(key: bytes | str | None) -> str | None:
    if key is None:
        return None
    k = (key if isinstance(key, str) else key.hex()).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", k):
        raise ValueError("mesh key must be 32 bytes (64 hex characters)")
    return k


def _same_key(given: object, ours: str | None) -> bool:
    return (ours is not None and isinstance(given, str)
            and hmac.compare_digest(given.lower().encode(), ours.encode()))


def _peer_present(c: _Conn) -> bytes:
    ip = b"\x00" * 16
    port = 0
    if c.remote is not None:
        try:
            a = ipaddress.ip_address(c.remote[0].split("%", 1)[0])
            ip = (a.packed if a.version == 6
                  else ipaddress.IPv6Address("::ffff:" + str(a)).packed)
            port = c.remote[1]
        except ValueError:
            pass
    flags = fr.PeerPresentFlags.PROBER if c.is_prober else fr.PeerPresentFlags.REGULAR
    return fr.encode(fr.PeerPresent(c.key, ip, port, flags))


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


_REASONS = {101: b"Switching Protocols", 400: b"Bad Request", 426: b"Upgrade Required"}


def _http_response(
    status: int, headers: list[tuple[bytes, bytes]], body: bytes | None
) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Status"))]
    lines += [k + b": " + v for k, v in headers]
    if body is not None:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


async def _close_quietly(stream: trio.abc.Stream) -> None:
    try:
        await stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
