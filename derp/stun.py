"""STUN binding responder: a sans-IO parser/builder and a thin Trio UDP loop (stun.md).

Request (always 40 bytes from tailscaled)::

    00 01 | len (2) | 21 12 a4 42 | txid (12) | attributes (SOFTWARE "tailnode", FINGERPRINT)

Response::

    01 01 | len (2) | 21 12 a4 42 | txid (12) | 00 20 | alen | 00 | family | port^0x2112 | addr^...
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
import zlib
from dataclasses import dataclass, field
from typing import Final

import trio

from .errors import StunError

log = logging.getLogger(__name__)

MAGIC_COOKIE: Final = b"\x21\x12\xa4\x42"
HEADER_LEN: Final = 20
TXID_LEN: Final = 12
BINDING_REQUEST: Final = 0x0001
BINDING_SUCCESS: Final = 0x0101
ATTR_XOR_MAPPED_ADDRESS: Final = 0x0020
ATTR_SOFTWARE: Final = 0x8022
ATTR_FINGERPRINT: Final = 0x8028
FINGERPRINT_XOR: Final = 0x5354554E
# Binding requests are tiny (40 bytes); anything this large is not one, and reading more would
# only cost memory. Also the receive buffer size of the UDP loop.
MAX_DATAGRAM: Final = 2048

_HDR = struct.Struct(">HH4s12s")


def parse_binding_request(data: bytes, *, strict: bool = False) -> bytes:
    """Return the 12-byte transaction id of a STUN binding request.

    Raises StunError for anything else (not STUN, wrong type, truncated attributes). With
    ``strict``, also require SOFTWARE ``tailnode`` and a correct FINGERPRINT, as the reference
    parser does; the responder does not need it (answering any well-formed request is harmless).
    """
    if len(data) < HEADER_LEN or len(data) > MAX_DATAGRAM:
        raise StunError("bad length")
    mtype, alen, cookie, txid = _HDR.unpack_from(data)
    if cookie != MAGIC_COOKIE:
        raise StunError("no magic cookie")
    if mtype != BINDING_REQUEST:
        raise StunError("not a binding request")
    if alen % 4 or HEADER_LEN + alen != len(data):
        raise StunError("attribute length mismatch")
    software = None
    fingerprint_ok = False
    off = HEADER_LEN
    while off < len(data):
        if off + 4 > len(data):
            raise StunError("truncated attribute header")
        atype, l = struct.unpack_from(">HH", data, off)
        vstart = off + 4
        vend = vstart + l
        if vend > len(data):
            raise StunError("truncated attribute")
        if atype == ATTR_SOFTWARE:
            software = data[vstart:vend]
        elif atype == ATTR_FINGERPRINT:
            if l != 4 or vend != len(data):
                raise StunError("bad fingerprint attribute")
            want = (zlib.crc32(data[:off]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
            fingerprint_ok = int.from_bytes(data[vstart:vend], "big") == want
            if not fingerprint_ok:
                raise StunError("bad fingerprint")
        off = vend + (-l % 4)  # attributes are padded to 4 bytes
    if strict and (software != b"tailnode" or not fingerprint_ok):
        raise StunError("not a tailnode request")
    return bytes(txid)


def build_binding_request(txid: bytes) -> bytes:
    """The 40-byte request tailscaled sends (SOFTWARE tailnode + FINGERPRINT); for tests."""
    if len(txid) != TXID_LEN:
        raise ValueError("txid is 12 bytes")
    body = struct.pack(">HH", ATTR_SOFTWARE, 8) + b"tailnode"
    head = _HDR.pack(BINDING_REQUEST, len(body) + 8, MAGIC_COOKIE, txid)
    crc = (zlib.crc32(head + body) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    return head + body + struct.pack(">HHI", ATTR_FINGERPRINT, 4, crc)


def build_binding_response(txid: bytes, ip: str, port: int) -> bytes:
    """A success response carrying only XOR-MAPPED-ADDRESS for ``ip``:``port``.

    IPv4-mapped IPv6 addresses are reported as IPv4 (family 1), which the client expects when
    a dual-stack socket received its IPv4 request.
    """
    if len(txid) != TXID_LEN:
        raise ValueError("txid is 12 bytes")
    addr = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    xport = port ^ 0x2112
    if addr.version == 4:
        xaddr = bytes(a ^ b for a, b in zip(addr.packed, MAGIC_COOKIE))
        attr = struct.pack(">HHBBH", ATTR_XOR_MAPPED_ADDRESS, 8, 0, 1, xport) + xaddr
    else:
        mask = MAGIC_COOKIE + txid
        xaddr = bytes(a ^ b for a, b in zip(addr.packed, mask))
        attr = struct.pack(">HHBBH", ATTR_XOR_MAPPED_ADDRESS, 20, 0, 2, xport) + xaddr
    return _HDR.pack(BINDING_SUCCESS, len(attr), MAGIC_COOKIE, txid) + attr


def parse_binding_response(data: bytes) -> tuple[bytes, str, int]:
    """(txid, ip, port) from a success response with XOR-MAPPED-ADDRESS; for tests and tools."""
    if len(data) < HEADER_LEN + 12:
        raise StunError("short response")
    mtype, alen, cookie, txid = _HDR.unpack_from(data)
    if mtype != BINDING_SUCCESS or cookie != MAGIC_COOKIE or HEADER_LEN + alen > len(data):
        raise StunError("not a binding success response")
    off = HEADER_LEN
    while off + 4 <= HEADER_LEN + alen:
        atype, l = struct.unpack_from(">HH", data, off)
        v = data[off + 4 : off + 4 + l]
        if atype in (ATTR_XOR_MAPPED_ADDRESS, 0x8020) and len(v) >= 8:
            family, xport = v[1], struct.unpack_from(">H", v, 2)[0]
            if family == 1:
                raw = bytes(a ^ b for a, b in zip(v[4:8], MAGIC_COOKIE))
            else:
                raw = bytes(a ^ b for a, b in zip(v[4:20], MAGIC_COOKIE + txid))
            return bytes(txid), str(ipaddress.ip_address(raw)), xport ^ 0x2112
        off += 4 + l + (-l % 4)
    raise StunError("no mapped address")


@dataclass
class StunStats:
    """Counters of one responder (read them any time; the loop only increments)."""

    requests: int = 0
    responses: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def as_dict(self) -> dict[str, object]:
        return {"requests": self.requests, "responses": self.responses,
                "dropped": dict(self.dropped)}


async def serve_stun(
    host: str = "::",
    port: int = 3478,
    *,
    stats: StunStats | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer STUN binding requests on UDP ``host``:``port`` until cancelled.

    ``host="::"`` binds a dual-stack socket (IPv4 and IPv6) where the OS allows it, else
    falls back to ``0.0.0.0``. Calls ``task_status.started((host, port))`` with the bound
    address once bound (port 0 picks a free port). Malformed datagrams are dropped silently
    and counted in ``stats``. The socket is owned and closed here.
    """
    stats = stats if stats is not None else StunStats()
    sock = await _bind_udp(host, port)
    with sock:
        bound = sock.getsockname()
        log.info("stun: listening on %s port %d", bound[0], bound[1])
        task_status.started((bound[0], bound[1]))
        while True:
            try:
                data, addr = await sock.recvfrom(MAX_DATAGRAM)
            except OSError as exc:
                # ICMP errors from earlier sends surface here on some systems; keep serving.
                log.debug("stun: recvfrom failed: %s", exc)
                stats.drop("recv_error")
                continue
            stats.requests += 1
            try:
                txid = parse_binding_request(data)
                resp = build_binding_response(txid, addr[0], addr[1])
            except (StunError, ValueError):
                stats.drop("malformed")
                continue
            try:
                await sock.sendto(resp, addr)
            except OSError as exc:
                log.debug("stun: sendto %s failed: %s", addr, exc)
                stats.drop("send_error")
                continue
            stats.responses += 1


async def _bind_udp(host: str, port: int) -> trio.socket.SocketType:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = None
    try:
        sock = trio.socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6 and host in ("::", ""):
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:
                pass
        await sock.bind((host, port))
    except OSError as exc:
        if sock is not None:
            sock.close()
        if family == socket.AF_INET6 and host in ("::", "") and exc.errno in (
            errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL,
        ):
            return await _bind_udp("0.0.0.0", port)
        raise
    return sock
