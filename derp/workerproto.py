"""The control channel between a relay's main process and each of its workers (derp.workers).

One ``SOCK_SEQPACKET`` unix socket pair per worker: every message is one JSON object in one
datagram (so no framing is needed), and a message may carry one file descriptor
(``SCM_RIGHTS``): a connection handed to the worker, or a connection the worker hands back.
Both ends are our own processes, but a message is still checked once, here, into a typed
value; a malformed one is a :class:`~derp.errors.ProtocolError` and ends the channel.

The messages, by direction::

    main → worker   Setup (first, once), AcceptRaw + fd, AcceptUpgrade + fd, Verdict,
                    Certificate, Health, Restarting, CloseAll, Poll
    worker → main   Ready, Closed, Verify, Stats, Proxy + fd
"""

from __future__ import annotations

import array
import json
import socket
import typing
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import trio

from .errors import ConnectionClosed, ProtocolError

# Largest message: Setup with a few mesh URLs, or Stats with the drop reasons, is ~2 KiB; a
# request head handed over is at most 16 KiB (+ base64). Bounds what a receive allocates.
MAX_MESSAGE = 64 << 10

Address = list  # [host, port]: a peer address as JSON has it


@dataclass(frozen=True, slots=True)
class Setup:
    """Everything a worker needs, sent once, first."""

    op: ClassVar[str] = "setup"
    index: int
    private_key: str  # the relay's key (hex): all workers are one server to clients
    sibling_key: str  # hex; how the workers recognise each other as mesh peers
    listen: str  # unix socket path this worker's siblings dial
    siblings: list  # unix:/path URLs of the other workers
    mesh_key: str | None  # the region's (hex), for mesh_with and inbound region peers
    mesh_with: list
    mesh_ca: str | None  # CA bundle for https mesh URLs; None: the system's
    verify: bool  # ask the main process about each client key (Verify/Verdict)
    front: str  # "derp": serve every request (standalone relay); "proxy": /derp here, the
    #             rest of a connection goes back to the main process (Proxy)
    cert: str | None  # TLS certificate chain and key files, for AcceptRaw with tls
    key: str | None
    log_level: int  # a logging module level number
    log_format: str  # "text" or "json" (one object per line), as the main process logs


@dataclass(frozen=True, slots=True)
class AcceptRaw:
    """A new TCP connection (fd attached); ``prefix``: bytes already read from it (base64).
    ``id``: what the worker's Closed names it by."""

    op: ClassVar[str] = "accept_raw"
    id: int
    tls: bool
    prefix: str
    remote: Address | None


@dataclass(frozen=True, slots=True)
class AcceptUpgrade:
    """A connection (fd attached) whose ``GET /derp`` head the main process has read."""

    op: ClassVar[str] = "accept_upgrade"
    id: int
    method: str
    target: str
    headers: list  # [[name, value], ...], latin-1
    leftover: str  # base64
    remote: Address | None


@dataclass(frozen=True, slots=True)
class Closed:
    """A connection handed over has ended (the main process counts open connections)."""

    op: ClassVar[str] = "closed"
    id: int


@dataclass(frozen=True, slots=True)
class Verify:
    op: ClassVar[str] = "verify"
    id: int
    key: str  # hex


@dataclass(frozen=True, slots=True)
class Verdict:
    op: ClassVar[str] = "verdict"
    id: int
    ok: bool


@dataclass(frozen=True, slots=True)
class Certificate:
    """Load the TLS certificate from these files again (it was renewed)."""

    op: ClassVar[str] = "certificate"
    cert: str
    key: str


@dataclass(frozen=True, slots=True)
class Health:
    op: ClassVar[str] = "health"
    problem: str


@dataclass(frozen=True, slots=True)
class Restarting:
    op: ClassVar[str] = "restarting"
    reconnect_in: float
    try_for: float


@dataclass(frozen=True, slots=True)
class CloseAll:
    op: ClassVar[str] = "close_all"


@dataclass(frozen=True, slots=True)
class Poll:
    """Ask for a Stats now (id > 0 is echoed back)."""

    op: ClassVar[str] = "poll"
    id: int


@dataclass(frozen=True, slots=True)
class Ready:
    op: ClassVar[str] = "ready"
    pid: int


@dataclass(frozen=True, slots=True)
class Stats:
    """The worker's DerpServer.metrics(), its open connections and how many it has been
    handed so far (the main process counts those it sent); id 0 = unasked."""

    op: ClassVar[str] = "stats"
    id: int
    metrics: dict
    connections: int
    received: int


@dataclass(frozen=True, slots=True)
class Proxy:
    """A connection (fd attached) that is not DERP, for the main process's own front door."""

    op: ClassVar[str] = "proxy"
    remote: Address | None


Message = (Setup | AcceptRaw | AcceptUpgrade | Closed | Verify | Verdict | Certificate | Health
           | Restarting | CloseAll | Poll | Ready | Stats | Proxy)
_TYPES: dict[str, type] = {c.op: c for c in typing.get_args(Message)}
# Which messages carry a file descriptor.
_WITH_FD = {"accept_raw", "accept_upgrade", "proxy"}


def encode(msg: Message) -> bytes:
    data = json.dumps({"op": msg.op, **asdict(msg)}, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ValueError("control message of %d bytes exceeds %d" % (len(data), MAX_MESSAGE))
    return data


def decode(data: bytes) -> Message:
    """The message in ``data``; ProtocolError if it is not one."""
    try:
        doc = json.loads(data)
    except ValueError:
        raise ProtocolError("control message is not JSON") from None
    if not isinstance(doc, dict) or doc.get("op") not in _TYPES:
        raise ProtocolError("unknown control message")
    cls = _TYPES[doc.pop("op")]
    hints = typing.get_type_hints(cls)
    args: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in doc:
            raise ProtocolError("control message %s lacks %s" % (cls.op, f.name))
        value = doc[f.name]
        if not _fits(value, hints[f.name]):
            raise ProtocolError("control message %s: bad %s" % (cls.op, f.name))
        args[f.name] = value
    return cls(**args)


_UnionType = type(int | None)


def _fits(value: object, hint: object) -> bool:
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _UnionType) \
        else (hint,)
    for t in options:
        if t is type(None) and value is None:
            return True
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t in (str, bool, list, dict) and isinstance(value, t):  # type: ignore[arg-type]
            return True
    return False


class Channel:
    """One end of a control channel (a ``SOCK_SEQPACKET`` trio socket, owned: :meth:`close`).

    Any number of tasks may send; one task receives.
    """

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self._send_lock = trio.Lock()

    async def send(self, msg: Message, fd: int | None = None) -> None:
        """Send ``msg`` (with a duplicate of ``fd``: the caller still owns and closes its own).
        Raises trio.BrokenResourceError if the other end is gone."""
        if (fd is not None) != (msg.op in _WITH_FD):
            raise ValueError("%s %s a file descriptor" % (
                msg.op, "needs" if fd is None else "takes no"))
        anc = [] if fd is None else [
            (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        data = encode(msg)
        async with self._send_lock:
            try:
                await self.sock.sendmsg([data], anc)
            except OSError as exc:
                raise trio.BrokenResourceError("control channel: %s" % exc) from exc

    async def receive(self) -> tuple[Message, int | None]:
        """The next message and the descriptor it carried (now the caller's to close).

        Raises ConnectionClosed at EOF, ProtocolError for a malformed message (after closing
        any descriptor that came with it).
        """
        try:
            data, anc, flags, _ = await self.sock.recvmsg(
                MAX_MESSAGE, socket.CMSG_SPACE(4 * array.array("i").itemsize))
        except OSError as exc:
            raise ConnectionClosed("control channel: %s" % exc) from exc
        fds: list[int] = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(payload[: len(payload) - len(payload) % a.itemsize])
                fds.extend(a)
        try:
            if not data and not fds:
                raise ConnectionClosed("control channel closed")
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise ProtocolError("control message cut short")
            msg = decode(data)
            want = 1 if msg.op in _WITH_FD else 0
            if len(fds) != want:
                raise ProtocolError("%s came with %d descriptors" % (msg.op, len(fds)))
        except BaseException:
            for fd in fds:
                _close_fd(fd)
            raise
        return msg, (fds[0] if fds else None)

    def close(self) -> None:
        self.sock.close()


def _close_fd(fd: int) -> None:
    try:
        socket.close(fd)
    except OSError:
        pass


def stream_from_fd(fd: int | None) -> trio.SocketStream:
    """A trio stream owning the socket descriptor ``fd`` that came with a message."""
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


def address(remote: Address | None) -> tuple[str, int] | None:
    """A peer address from a message, or None when it has none (or a malformed one)."""
    if isinstance(remote, list) and len(remote) == 2 and isinstance(remote[0], str) \
            and isinstance(remote[1], int) and not isinstance(remote[1], bool):
        return remote[0], remote[1]
    return None


def channel_pair() -> tuple[Channel, socket.socket]:
    """A new channel: our end, and the other end as a blocking stdlib socket to give a child
    process (``pass_fds``)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    return Channel(trio.socket.from_stdlib_socket(ours)), theirs
