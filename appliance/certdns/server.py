"""The embedded authoritative DNS server: the Trio driver of ``authority`` over UDP and TCP.

One task per UDP socket reads, answers and sends (answers are computed synchronously and are
small, so nothing queues). TCP connections are bounded in number and idle time.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Callable

import trio

from ..config import split_host_port
from ..logthrottle import LogThrottle
from .authority import Authority
from .framing import FrameError, FrameReader, frame
from .responselimit import ResponseLimiter, Verdict

log = logging.getLogger(__name__)
throttled = LogThrottle(log)

MAX_UDP_QUERY = 4096  # a query is a few dozen bytes; larger datagrams are cut and then FORMERR
MAX_TCP_CONNECTIONS = 64  # at once; more are closed at accept
TCP_IDLE_TIMEOUT = 10.0  # RFC 7766 6.2.3: seconds, not minutes, for a busy server
TCP_WRITE_TIMEOUT = 10.0
# A connection trickling bytes would otherwise hold one of the few slots forever.
TCP_MAX_LIFETIME = 60.0


class DNSServer:
    """Serves ``authority`` on UDP and TCP; ``now`` is the clock its records expire on."""

    def __init__(self, authority: Authority, listen_addr: str, *, limiter: ResponseLimiter | None = None,
                 now: Callable[[], float] = trio.current_time) -> None:
        self.authority = authority
        self.listen_addr = listen_addr
        self.limiter = limiter or ResponseLimiter()
        self.now = now
        self.tcp_connections = 0
        self.port: int | None = None

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Bind UDP and TCP on listen_addr (the same port for both), ``task_status.started``
        with the port, answer until cancelled. Raises OSError naming the address when it
        cannot bind."""
        host, port = split_host_port(self.listen_addr)
        tcp: list[trio.SocketListener] = []
        try:
            tcp = await trio.open_tcp_listeners(port, host=host or None)
            port = tcp[0].socket.getsockname()[1]  # port 0 (tests): UDP takes the one TCP got
            udp = await _bind_udp(host, port)
        except OSError as e:
            for listener in tcp:
                await listener.aclose()
            raise OSError(e.errno, f"dns.certificates.listen_addr {self.listen_addr}: cannot listen: {e.strerror or e}") from None
        self.port = port
        log.info("authoritative DNS for %s on %s (UDP and TCP)", self.authority.origin.to_text(omit_final_dot=True),
                 ", ".join(_name(s) for s in udp))
        async with trio.open_nursery() as nursery:
            for sock in udp:
                nursery.start_soon(self._udp_loop, sock)
            nursery.start_soon(trio.serve_listeners, self._tcp_connection, tcp)
            task_status.started(port)

    async def _udp_loop(self, sock: trio.socket.SocketType) -> None:
        with sock:
            while True:
                try:
                    data, addr = await sock.recvfrom(MAX_UDP_QUERY)
                except OSError as e:  # ICMP errors surface here on Linux (ECONNREFUSED)
                    throttled.info("udp-recv", "DNS UDP receive: %s", e)
                    continue
                try:
                    reply = self._udp_reply(data, addr[0])
                except Exception as e:  # our bug: one query unanswered, the server goes on
                    throttled.log(logging.ERROR, "udp-bug", "DNS: answering a query from %s failed: %r", addr[0], e)
                    continue
                if reply is None:
                    continue
                try:
                    await sock.sendto(reply, addr)
                except OSError as e:
                    throttled.info("udp-send", "DNS UDP answer to %s: %s", addr[0], e)

    def _udp_reply(self, data: bytes, source: str) -> bytes | None:
        verdict = self.limiter.check(source)
        if verdict is Verdict.DROP:
            return None
        if verdict is Verdict.SLIP:
            return self.authority.truncated(data)
        return self.authority.respond(data, self.now())

    async def _tcp_connection(self, stream: trio.SocketStream) -> None:
        if self.tcp_connections >= MAX_TCP_CONNECTIONS:
            throttled.warning("tcp-full", "DNS over TCP: %d connections open, closing a new one",
                              self.tcp_connections)
            await trio.aclose_forcefully(stream)
            return
        self.tcp_connections += 1
        reader = FrameReader()
        try:
            with trio.move_on_after(TCP_MAX_LIFETIME):
                while True:
                    data = b""
                    with trio.move_on_after(TCP_IDLE_TIMEOUT):
                        data = await stream.receive_some(MAX_UDP_QUERY)
                    if not data:
                        return  # closed by the client, or idle too long
                    reader.receive_data(data)
                    while (query := reader.next_message()) is not None:
                        reply = self.authority.respond(query, self.now(), tcp=True)
                        if reply is None:
                            return
                        with trio.fail_after(TCP_WRITE_TIMEOUT):
                            await stream.send_all(frame(reply))
        except FrameError as e:
            throttled.warning("tcp-frame", "DNS over TCP from %s: %s", _peer(stream), e)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass
        except Exception as e:  # our bug: this connection ends, the server goes on
            throttled.log(logging.ERROR, "tcp-bug", "DNS over TCP from %s failed: %r", _peer(stream), e)
        finally:
            self.tcp_connections -= 1
            await trio.aclose_forcefully(stream)


async def _bind_udp(host: str, port: int) -> list[trio.socket.SocketType]:
    """One UDP socket per address ``host`` names ("" = every IPv4 and IPv6 address), as
    trio.open_tcp_listeners does for TCP."""
    infos = await trio.socket.getaddrinfo(host or None, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
    socks = []
    try:
        for family, type_, proto, _, addr in infos:
            try:
                sock = trio.socket.socket(family, type_, proto)
            except OSError as e:
                if e.errno == errno.EAFNOSUPPORT:
                    continue  # a kernel without IPv6: the other family serves
                raise
            socks.append(sock)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            await sock.bind(addr)
    except BaseException:
        for s in socks:
            s.close()
        raise
    if not socks:
        raise OSError(errno.EAFNOSUPPORT, "no address family available")
    return socks


def _name(sock: trio.socket.SocketType) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _peer(stream: trio.SocketStream) -> str:
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return "?"
