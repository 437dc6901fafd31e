"""A tiny loopback DNS responder for pebble's -dnsserver.

Every name resolves to 127.0.0.1 (A) with no AAAA records, except names whose first label
starts with "nx-", which get NXDOMAIN: that is how a test makes a hostname that does not
resolve. Only what pebble's validation asks (one question, A or AAAA) is understood.
"""

from __future__ import annotations

import socket
import struct
import threading

TYPE_A = 1
RCODE_NXDOMAIN = 3


def parse_query(packet: bytes) -> tuple[int, int, bytes, str, int]:
    """Return (id, flags, raw question, lowercase name, qtype). Raises ValueError."""
    if len(packet) < 12:
        raise ValueError("short DNS header")
    qid, flags, qdcount = struct.unpack("!HHH", packet[:6])
    if qdcount != 1:
        raise ValueError("expected one question")
    pos, labels = 12, []
    while True:
        if pos >= len(packet):
            raise ValueError("truncated name")
        n = packet[pos]
        pos += 1
        if n == 0:
            break
        if n & 0xC0:
            raise ValueError("compressed name in question")
        labels.append(packet[pos:pos + n].decode("ascii", "replace").lower())
        pos += n
    if pos + 4 > len(packet):
        raise ValueError("truncated question")
    qtype = struct.unpack("!H", packet[pos:pos + 2])[0]
    return qid, flags, packet[12:pos + 4], ".".join(labels), qtype


def answer(packet: bytes) -> bytes:
    qid, flags, question, name, qtype = parse_query(packet)
    rd = flags & 0x0100
    rcode = RCODE_NXDOMAIN if name.startswith("nx-") else 0
    answers = b""
    if rcode == 0 and qtype == TYPE_A:
        # Name as a pointer to the question (0xC00C), type A, class IN, TTL 0, 4 bytes.
        answers = struct.pack("!HHHIH", 0xC00C, TYPE_A, 1, 0, 4) + socket.inet_aton("127.0.0.1")
    header = struct.pack("!HHHHHH", qid, 0x8000 | 0x0400 | rd | 0x0080 | rcode, 1,
                         1 if answers else 0, 0, 0)
    return header + question + answers


class DNSStub:
    """Serves answer() on a loopback UDP port from a daemon thread."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dnsstub", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                packet, addr = self.sock.recvfrom(2048)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            try:
                self.sock.sendto(answer(packet), addr)
            except ValueError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
