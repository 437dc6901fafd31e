"""A simulated Tailscale client that speaks the control protocol itself.

Used by the load generator (``bench/control_load.py``) and by driver tests. It does what the
real client does on the wire, in layers that a test can stop at or bypass:

- ``fetch_server_key``: ``GET /key`` with h11 on its own TCP connection.
- ``dial_noise``: ``POST /ts2021`` upgrade (h11), the Noise IK handshake
  (``appliance.noise.handshake.ClientHandshake``), the early payload read and skipped.
- ``H2Client``: HTTP/2 with prior knowledge inside Noise (h2, client side). One reader task
  (``run``) owns the input; requests send under a lock and wait on their stream's events.
- ``SimClient``: a node: register with an auth key, open the streaming map poll, track the
  peer set from ``Peers`` / ``PeersChanged`` / ``PeersRemoved``, send lite updates.

Every wait on the server is bounded by the caller (``trio.fail_after``), every buffer by a
named constant. Nothing here is used by the server.
"""

from __future__ import annotations

import base64
import json
import logging
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import h11
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from appliance.control.mapframes import MapFrameReader
from appliance.noise.handshake import RESPONSE_LEN, ClientHandshake
from appliance.noise.stream import NoiseStream
from appliance.noise.transport import NoiseTransport

log = logging.getLogger(__name__)

CAPABILITY_VERSION = 133
CONTROL_UPGRADE = "tailscale-control-protocol"
EARLY_MAGIC = b"\xff\xff\xffTS"
# Our own limits on what the server may make us buffer; the real client allows 10 MiB of early
# JSON, but our server sends ~80 bytes, so anything near the limit is a server bug.
MAX_EARLY_JSON = 1 << 20
MAX_HTTP1_RESPONSE = 64 * 1024  # /key answer and the 101 head
MAX_RESPONSE_BODY = 4 << 20  # register and one-shot map answers
READ_SIZE = 65536
# HTTP/2 settings the 1.96 client sends (control-transport.md §6, captured live).
CLIENT_SETTINGS = {
    h2.settings.SettingCodes.ENABLE_PUSH: 0,
    h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4 << 20,
    h2.settings.SettingCodes.MAX_FRAME_SIZE: 16384,
    h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 10 << 20,
}
CONNECTION_WINDOW_BOOST = 1 << 30


class ControlClientError(Exception):
    """The server answered something the protocol does not allow, or refused us."""


def new_private_key() -> bytes:
    return X25519PrivateKey.generate().private_bytes_raw()


def public_of(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def key_text(prefix: str, raw: bytes) -> str:
    return f"{prefix}:{raw.hex()}"


# --- HTTP/1.1 part --------------------------------------------------------------------------


async def _read_h11_event(stream: trio.abc.Stream, conn: h11.Connection) -> Any:
    while True:
        ev = conn.next_event()
        if ev is not h11.NEED_DATA:
            return ev
        data = await stream.receive_some(READ_SIZE)
        conn.receive_data(data)  # b"" tells h11 the peer closed


async def fetch_server_key(host: str, port: int) -> bytes:
    """``GET /key?v=133``; the server's Noise public key. Raises ControlClientError."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HTTP1_RESPONSE)
        req = h11.Request(
            method="GET", target=f"/key?v={CAPABILITY_VERSION}",
            headers=[("host", f"{host}:{port}"), ("user-agent", "trioscale-bench"), ("connection", "close")],
        )
        await stream.send_all(conn.send(req) + conn.send(h11.EndOfMessage()))
        resp = await _read_h11_event(stream, conn)
        if not isinstance(resp, h11.Response) or resp.status_code != 200:
            raise ControlClientError(f"/key answered {resp!r}")
        body = bytearray()
        while True:
            ev = await _read_h11_event(stream, conn)
            if isinstance(ev, h11.Data):
                body += ev.data
                if len(body) > MAX_HTTP1_RESPONSE:
                    raise ControlClientError("/key answer too large")
            elif isinstance(ev, h11.EndOfMessage):
                break
            else:
                raise ControlClientError(f"/key: unexpected {ev!r}")
    doc = json.loads(body)
    text = doc.get("publicKey", "")
    if not text.startswith("mkey:"):
        raise ControlClientError(f"/key has no publicKey: {doc!r}")
    return bytes.fromhex(text[5:])


async def upgrade_ts2021(stream: trio.abc.Stream, authority: str, initiation: bytes) -> tuple[bytes, bytes]:
    """Send the ``/ts2021`` upgrade carrying ``initiation``; return (the 51-byte Noise
    response, bytes that followed it). Raises ControlClientError if the server refuses."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HTTP1_RESPONSE)
    req = h11.Request(
        method="POST", target="/ts2021",
        headers=[
            ("host", authority), ("user-agent", "Go-http-client/1.1"), ("content-length", "0"),
            ("connection", "upgrade"), ("upgrade", CONTROL_UPGRADE),
            ("x-tailscale-handshake", base64.b64encode(initiation).decode()),
        ],
    )
    await stream.send_all(conn.send(req) + conn.send(h11.EndOfMessage()))
    resp = await _read_h11_event(stream, conn)
    if not isinstance(resp, h11.InformationalResponse) or resp.status_code != 101:
        detail = ""
        if isinstance(resp, h11.Response):
            ev = await _read_h11_event(stream, conn)
            detail = ev.data[:200].decode(errors="replace") if isinstance(ev, h11.Data) else ""
        raise ControlClientError(f"/ts2021 upgrade refused: {getattr(resp, 'status_code', resp)} {detail.strip()}")
    if dict(resp.headers).get(b"upgrade") != CONTROL_UPGRADE.encode():
        raise ControlClientError("101 without the control protocol upgrade")
    rest, closed = conn.trailing_data
    rest = bytes(rest)
    while len(rest) < RESPONSE_LEN:
        more = await stream.receive_some(READ_SIZE)
        if not more:
            raise ControlClientError("connection closed during the Noise handshake")
        rest += more
    return rest[:RESPONSE_LEN], rest[RESPONSE_LEN:]


@dataclass
class NoiseChannel:
    """An open Noise session: plaintext in ``stream`` (which owns the TCP stream)."""

    stream: NoiseStream
    raw: trio.abc.Stream
    initiation: bytes
    response: bytes
    tx_key: bytes  # client → server
    rx_key: bytes
    early: dict | None


async def read_early_payload(stream: trio.abc.Stream) -> tuple[dict | None, bytes]:
    """Read the server's optional early payload; returns (its JSON or None, plaintext read
    past it, which belongs to HTTP/2)."""
    buf = bytearray()
    while len(buf) < 9:
        data = await stream.receive_some(READ_SIZE)
        if not data:
            raise ControlClientError("connection closed before the early payload")
        buf += data
    if bytes(buf[:5]) != EARLY_MAGIC:
        return None, bytes(buf)  # no early payload: these bytes start HTTP/2 (as the Go client)
    (n,) = struct.unpack(">I", buf[5:9])
    if n > MAX_EARLY_JSON:
        raise ControlClientError(f"early payload of {n} bytes")
    while len(buf) < 9 + n:
        data = await stream.receive_some(READ_SIZE)
        if not data:
            raise ControlClientError("connection closed inside the early payload")
        buf += data
    return json.loads(bytes(buf[9 : 9 + n])), bytes(buf[9 + n :])


class _Replay(trio.abc.Stream):
    """Gives back plaintext already read, then reads on from the wrapped stream."""

    def __init__(self, inner: NoiseStream, head: bytes) -> None:
        self.inner = inner
        self.head = head

    async def send_all(self, data) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.head:
            out, self.head = self.head, b""
            return out
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def dial_noise(
    host: str, port: int, server_public: bytes, machine_private: bytes,
    version: int = CAPABILITY_VERSION, initiation_from: ClientHandshake | None = None,
    local_address: str | None = None,
) -> tuple[trio.abc.Stream, NoiseChannel]:
    """Connect (from ``local_address`` if given: many loopback addresses look like many
    sources), upgrade and finish the handshake; skip the early payload.

    Returns (a plaintext stream positioned at the server's first HTTP/2 byte, the channel).
    The caller closes the returned stream (it owns the TCP connection).
    """
    hs = initiation_from or ClientHandshake(server_public, machine_private, version)
    raw = await trio.open_tcp_stream(host, port, local_address=local_address)
    try:
        response, leftover = await upgrade_ts2021(raw, f"{host}:{port}", hs.initiation)
        tx, rx = hs.finish(response)
        noise = NoiseStream(raw, NoiseTransport(tx, rx), leftover)
        early, rest = await read_early_payload(noise)
    except BaseException:
        with trio.move_on_after(1, shield=True):
            await raw.aclose()
        raise
    return _Replay(noise, rest), NoiseChannel(noise, raw, hs.initiation, response, tx, rx, early)


# --- HTTP/2 part ----------------------------------------------------------------------------


class H2Stream:
    """One request's answer. ``on_data`` (if set) gets the body as it arrives instead of it
    being kept in ``body``."""

    def __init__(
        self, stream_id: int, on_data: Callable[[bytes], None] | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self.id = stream_id
        self.on_end = on_end
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.on_data = on_data
        self.got_headers = trio.Event()
        self.ended = trio.Event()
        self.reset_code: int | None = None
        self.error: BaseException | None = None

    def finish(self, *, error: BaseException | None = None, reset_code: int | None = None) -> None:
        if self.ended.is_set():
            return
        self.error = error
        self.reset_code = reset_code
        self.got_headers.set()
        self.ended.set()
        if self.on_end is not None:
            self.on_end()

    async def wait_response(self) -> bytes:
        """The whole body once the stream ends; ControlClientError on reset or loss."""
        await self.ended.wait()
        if self.error is not None:
            raise ControlClientError(f"stream {self.id}: {self.error}")
        if self.reset_code is not None:
            raise ControlClientError(f"stream {self.id} reset by the server (code {self.reset_code})")
        return bytes(self.body)

    async def wait_headers(self) -> int:
        await self.got_headers.wait()
        if self.status is None:
            await self.wait_response()  # raises the reason
            raise ControlClientError(f"stream {self.id} ended without a status")
        return self.status


class H2Client:
    """HTTP/2 client over a plaintext stream (prior knowledge). ``run`` must be running in a
    task for anything to be received; it returns when the server closes."""

    def __init__(self, stream: trio.abc.Stream, authority: str) -> None:
        self.stream = stream
        self.authority = authority
        self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self._lock = trio.Lock()
        self._streams: dict[int, H2Stream] = {}
        self._window = trio.Event()
        self.closed = False
        self.close_reason: str | None = None

    async def start(self) -> None:
        """Preface and SETTINGS, as the Go client sends them."""
        self._h2.local_settings = h2.settings.Settings(client=True, initial_values=CLIENT_SETTINGS)
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(CONNECTION_WINDOW_BOOST)
        await self._flush()

    async def _flush(self) -> None:
        async with self._lock:
            data = self._h2.data_to_send()
            if data and not self.closed:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                    self._close(f"send failed: {e!r}")
                    raise ControlClientError("connection closed") from e

    def _close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        for s in list(self._streams.values()):
            s.finish(error=ControlClientError(f"connection closed: {reason}"))
        self._window.set()

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: list[tuple[str, str]] = (),
        on_data: Callable[[bytes], None] | None = None, on_end: Callable[[], None] | None = None,
    ) -> H2Stream:
        """Send a request (body respects flow control); returns its stream at once."""
        if self.closed:
            raise ControlClientError(f"connection closed: {self.close_reason}")
        sid = self._h2.get_next_available_stream_id()
        st = H2Stream(sid, on_data, on_end)
        self._streams[sid] = st
        hdrs = [
            (":method", method), (":scheme", "https"), (":authority", self.authority), (":path", path),
            *headers, ("content-length", str(len(body))), ("user-agent", "Go-http-client/2.0"),
        ]
        self._h2.send_headers(sid, hdrs, end_stream=not body)
        await self._flush()
        view = memoryview(body)
        while view:
            if st.ended.is_set() or self.closed:
                break  # reset (e.g. body too large) or connection gone: the answer says which
            n = min(len(view), self._h2.local_flow_control_window(sid), self._h2.max_outbound_frame_size)
            if n <= 0:
                self._window = trio.Event()
                await self._window.wait()
                continue
            chunk, view = view[:n], view[n:]
            self._h2.send_data(sid, bytes(chunk), end_stream=not view)
            await self._flush()
        return st

    async def run(self) -> None:
        """Read until the server closes; never raises for the server's faults (they end the
        connection and are in ``close_reason``)."""
        try:
            while True:
                try:
                    data = await self.stream.receive_some(READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                    self._close(f"receive failed: {e!r}")
                    return
                except Exception as e:  # Noise errors and the like: the session is dead
                    self._close(f"{type(e).__name__}: {e}")
                    return
                if not data:
                    self._close("server closed the connection")
                    return
                try:
                    events = self._h2.receive_data(data)
                except h2.exceptions.ProtocolError as e:
                    self._close(f"HTTP/2 error: {e}")
                    return
                for ev in events:
                    self._on_event(ev)
                try:
                    await self._flush()
                except ControlClientError:
                    return
        finally:
            self._close("reader stopped")

    def _on_event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.ResponseReceived):
            st = self._streams.get(ev.stream_id)
            if st is not None:
                st.headers = [(k, v) for k, v in ev.headers if not k.startswith(":")]
                st.status = int(dict(ev.headers).get(":status", "0"))
                st.got_headers.set()
        elif isinstance(ev, h2.events.DataReceived):
            self._h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            st = self._streams.get(ev.stream_id)
            if st is None:
                return
            if st.on_data is not None:
                try:
                    st.on_data(ev.data)
                except Exception as e:  # a bad map frame: this stream is useless now
                    self._streams.pop(ev.stream_id, None)
                    st.finish(error=e)
                    try:
                        self._h2.reset_stream(ev.stream_id, h2.errors.ErrorCodes.CANCEL)
                    except h2.exceptions.ProtocolError:
                        pass
            else:
                st.body += ev.data
                if len(st.body) > MAX_RESPONSE_BODY:
                    self._streams.pop(ev.stream_id, None)
                    st.finish(error=ControlClientError("response body too large"))
                    self._h2.reset_stream(ev.stream_id, h2.errors.ErrorCodes.CANCEL)
        elif isinstance(ev, h2.events.StreamEnded):
            st = self._streams.pop(ev.stream_id, None)
            if st is not None:
                st.finish()
        elif isinstance(ev, h2.events.StreamReset):
            st = self._streams.pop(ev.stream_id, None)
            if st is not None:
                st.finish(reset_code=int(ev.error_code))
            self._window.set()
        elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._window.set()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self._close(f"GOAWAY {ev.error_code!r}")

    async def aclose(self) -> None:
        self._close("closed by us")
        with trio.move_on_after(1, shield=True):
            await self.stream.aclose()


# --- the map stream -------------------------------------------------------------------------


@dataclass
class MapState:
    """What a client knows from one map stream (state restarts with each stream)."""

    keep_nodes: bool = True
    self_node: dict | None = None
    peers: dict[int, dict | None] = field(default_factory=dict)  # id → node (None if not kept)
    frames: int = 0
    keepalives: int = 0
    full_peer_lists: int = 0  # messages with a non-empty Peers
    messages: list[dict] = field(default_factory=list)  # non-keepalive messages, if recording
    record: bool = False

    def apply(self, msg: dict) -> None:
        self.frames += 1
        if msg.get("KeepAlive"):
            self.keepalives += 1
            return
        if self.record:
            self.messages.append(msg)
        if msg.get("Node"):
            self.self_node = msg["Node"]
        peers = msg.get("Peers")
        if peers:
            # A non-empty Peers replaces the set and every delta field beside it is ignored.
            self.full_peer_lists += 1
            self.peers = {p["ID"]: (p if self.keep_nodes else None) for p in peers}
            return
        for p in msg.get("PeersChanged") or ():
            self.peers[p["ID"]] = p if self.keep_nodes else None
        for node_id in msg.get("PeersRemoved") or ():
            self.peers.pop(node_id, None)
        if self.keep_nodes:
            for patch in msg.get("PeersChangedPatch") or ():
                node = self.peers.get(patch.get("NodeID"))
                if node is not None:
                    for k, v in patch.items():
                        if k == "DERPRegion":
                            node["HomeDERP"] = v
                        elif k != "NodeID":
                            node[k] = v
            for node_id, online in (msg.get("OnlineChange") or {}).items():
                node = self.peers.get(int(node_id))
                if node is not None:
                    node["Online"] = online


def _glance(body: bytes) -> dict:
    """What a light client takes from a map message without parsing it."""
    if body.startswith(b'{"Node":'):
        return {"Node": {"ID": None}}
    if body.startswith(b'{"KeepAlive":true'):
        return {"KeepAlive": True}
    return {}


class SimClient:
    """One simulated node. Typical use, inside a nursery::

        c = SimClient(host, port, server_pub, "node-1")
        await c.connect(nursery)
        await c.register(auth_key)
        await c.open_map()              # returns once the first full netmap arrived
        ...
        await c.aclose()

    ``on_message(client, msg, now)`` is called for every non-keepalive map message.
    """

    def __init__(
        self, host: str, port: int, server_public: bytes, hostname: str, *,
        keep_nodes: bool = True, record: bool = False,
        on_message: Callable[["SimClient", dict, float], None] | None = None,
        version: int = CAPABILITY_VERSION, light: bool = False, local_address: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.local_address = local_address
        self.server_public = server_public
        self.hostname = hostname
        self.version = version
        self.machine_private = new_private_key()
        self.node_private = new_private_key()
        self.disco_private = new_private_key()
        self.node_key = key_text("nodekey", public_of(self.node_private))
        self.disco_key = key_text("discokey", public_of(self.disco_private))
        self.machine_key = key_text("mkey", public_of(self.machine_private))
        self.map = MapState(keep_nodes=keep_nodes, record=record)
        self.on_message = on_message
        self.changed = trio.Event()  # set (and replaced) on every map message
        self.h2: H2Client | None = None
        self.channel: NoiseChannel | None = None
        self.register_response: dict | None = None
        self.map_stream: H2Stream | None = None
        self.node_id: int | None = None
        # light: map messages are not parsed, only told apart (netmap with a Node, keepalive, or
        # other), so that one generator process can hold a thousand clients' netmaps coming in.
        self.light = light
        self._reader = self._new_reader()

    def _new_reader(self) -> MapFrameReader:
        return MapFrameReader(compressed=True, decode=_glance if self.light else json.loads)

    def hostinfo(self) -> dict:
        return {
            "IPNVersion": "1.96.4-bench", "OS": "linux", "OSVersion": "bench", "Hostname": self.hostname,
            "GoArch": "amd64", "Userspace": True, "UserspaceRouter": True,
            "NetInfo": {"PreferredDERP": 900, "WorkingUDP": True},
        }

    async def connect(self, nursery: trio.Nursery) -> None:
        """Noise + HTTP/2; the connection's reader runs in ``nursery``."""
        stream, self.channel = await dial_noise(self.host, self.port, self.server_public, self.machine_private,
                                                self.version, local_address=self.local_address)
        self.h2 = H2Client(stream, f"{self.host}:{self.port}")
        await self.h2.start()
        nursery.start_soon(self.h2.run)

    async def post_json(self, path: str, doc: Any, *, headers: list[tuple[str, str]] = ()) -> tuple[int, bytes]:
        st = await self.h2.request("POST", path, json.dumps(doc).encode(), [("ts-lb", self.node_key), *headers])
        body = await st.wait_response()
        return st.status or 0, body

    async def register(self, auth_key: str) -> dict:
        """Register with a pre-auth key; raises ControlClientError unless authorized."""
        status, body = await self.post_json("/machine/register", {
            "Version": self.version, "NodeKey": self.node_key,
            "OldNodeKey": key_text("nodekey", bytes(32)),
            "Auth": {"AuthKey": auth_key}, "Expiry": "0001-01-01T00:00:00Z", "Followup": "",
            "Hostinfo": self.hostinfo(), "NodeKeySignature": None,
        })
        if status != 200:
            raise ControlClientError(f"register: HTTP {status}: {body[:200]!r}")
        doc = json.loads(body)
        self.register_response = doc
        if doc.get("Error") or not doc.get("MachineAuthorized"):
            raise ControlClientError(f"register refused: {doc.get('Error') or doc}")
        return doc

    async def login(self, followup: str = "", hostinfo: dict | None = None) -> dict:
        """Register without a key, as `tailscale up` does: the first call gets an AuthURL,
        the call with ``followup`` set to it waits for the decision. Returns the response."""
        status, body = await self.post_json("/machine/register", {
            "Version": self.version, "NodeKey": self.node_key,
            "OldNodeKey": key_text("nodekey", bytes(32)), "Expiry": "0001-01-01T00:00:00Z",
            "Followup": followup, "Hostinfo": self.hostinfo() if hostinfo is None else hostinfo,
        })
        if status != 200:
            raise ControlClientError(f"register: HTTP {status}: {body[:200]!r}")
        self.register_response = json.loads(body)
        return self.register_response

    def _map_request(self, *, stream: bool, omit_peers: bool, endpoints: list[str] | None) -> dict:
        doc: dict[str, Any] = {
            "Version": self.version, "Compress": "zstd", "KeepAlive": True,
            "NodeKey": self.node_key, "DiscoKey": self.disco_key,
        }
        if stream:
            doc["Stream"] = True
            doc["Hostinfo"] = self.hostinfo()
        if omit_peers:
            doc["OmitPeers"] = True
        if endpoints is not None:
            doc["Endpoints"] = endpoints
            doc["EndpointTypes"] = [1] * len(endpoints)
        return doc

    def _on_map_data(self, data: bytes) -> None:
        now = time.monotonic()
        for msg in self._reader.receive_data(data):
            self.map.apply(msg)
            if msg.get("KeepAlive"):
                continue
            if self.node_id is None and msg.get("Node") and msg["Node"]["ID"] is not None:
                self.node_id = msg["Node"]["ID"]
            if self.on_message is not None:
                self.on_message(self, msg, now)
            self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def open_map(self, endpoints: list[str] | None = None) -> None:
        """Open the streaming poll and wait for the first full netmap; then send a lite update
        with ``endpoints``, as the real client does right after. Raises ControlClientError."""
        self.map = MapState(keep_nodes=self.map.keep_nodes, record=self.map.record)
        self._reader = self._new_reader()
        body = json.dumps(self._map_request(stream=True, omit_peers=False, endpoints=None)).encode()
        self.map_stream = await self.h2.request(
            "POST", "/machine/map", body, [("ts-lb", self.node_key)],
            on_data=self._on_map_data, on_end=self._wake,
        )
        status = await self.map_stream.wait_headers()
        if status != 200:
            body = await self.map_stream.wait_response()
            raise ControlClientError(f"map: HTTP {status}: {body[:200]!r}")
        while self.map.self_node is None:
            if self.map_stream.ended.is_set():
                await self.map_stream.wait_response()
                raise ControlClientError("map stream ended before the first netmap")
            await self.changed.wait()
        if endpoints is not None:
            await self.lite_update(endpoints)

    async def lite_update(self, endpoints: list[str]) -> None:
        """``OmitPeers``, non-streaming map request: store endpoints, answer is discarded."""
        st = await self.h2.request(
            "POST", "/machine/map",
            json.dumps(self._map_request(stream=False, omit_peers=True, endpoints=endpoints)).encode(),
            [("ts-lb", self.node_key)],
        )
        await st.wait_response()
        if st.status != 200:
            raise ControlClientError(f"lite map update: HTTP {st.status}")

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait (caller bounds it) until ``predicate()`` holds after some map message."""
        while not predicate():
            if self.map_stream is not None and self.map_stream.ended.is_set():
                raise ControlClientError(f"map stream of {self.hostname} ended")
            await self.changed.wait()

    def peer_ids(self) -> set[int]:
        return set(self.map.peers)

    async def aclose(self) -> None:
        if self.h2 is not None:
            await self.h2.aclose()
