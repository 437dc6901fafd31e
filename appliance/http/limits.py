"""Bounds on what anyone on the internet can make the public listener do before proving who
they are: connections open per source and in total, and per-source rates of the
unauthenticated operations that cost CPU (``/key``, Noise handshakes, registrations without a
valid key).

A *source* is an IPv4 address or an IPv6 /64: one host gets a whole /64 from its provider, so
counting single IPv6 addresses would give one attacker 2**64 budgets.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Awaitable, Callable, Iterable

import trio

from derp.transport import peer_address

from ..logthrottle import LogThrottle
from ..ratelimit import TokenBuckets

log = logging.getLogger(__name__)
_throttled = LogThrottle(log)

# Per-source token buckets: (tokens per second, burst). A burst lets every node behind one
# NAT reconnect at once after a restart; the rate caps what one host costs us afterwards.
# A /key answer is a few µs of work; a Noise connection is four X25519 operations and then up
# to HTTP/2's limits of streams (h2server), about 10 ms of CPU at worst: 20/s is 20 % of a core.
KEY_RATE = (50.0, 1000)
NOISE_HANDSHAKE_RATE = (20.0, 1000)
# Registrations with a wrong pre-auth key or none (interactive logins): a person types these,
# so a few per second from one address is already generous.
UNKEYED_REGISTER_RATE = (2.0, 60)
# Per-source buckets kept; past this the least recently seen source starts afresh.
MAX_TRACKED_SOURCES = 65_536

# Request bytes buffered on the public listener before their requests are complete, over all
# connections (HTTP/1.1 bodies and HTTP/2 streams): what slow or half-open requests from many
# sources can hold at most. Complete requests no longer count.
BODY_BUDGET = 32 << 20

# Steps of a few milliseconds of CPU each (a Noise handshake, parsing a chunk of HTTP/2 frames)
# that may run per scheduling round. Trio runs every ready task once per round, so 200 new
# connections arriving together would otherwise put ~1 s of such work ahead of every other
# task, a new client's /key included; behind this limiter the rest wait their turn instead.
HEAVY_STEPS = 4

Handler = Callable[[trio.abc.Stream], Awaitable[None]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def source_of(address: str) -> str:
    """The rate-limiting source of a peer address: IPv4 as is, IPv6 as its /64 (an IPv4-mapped
    IPv6 address counts as the IPv4 address). Text that is not an address is its own source."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def source_of_peer(peer: str) -> str:
    """The source of a peer named as ``ip:port`` (http.server.peer_name; IPv6 without brackets)
    or "local"."""
    return source_of(peer.rsplit(":", 1)[0])


def source_of_stream(stream: trio.abc.Stream) -> str:
    addr = peer_address(stream)
    return source_of(addr[0]) if addr else "local"


class ConnectionGate:
    """Counts open connections per source and in total; refuses (closes at once) a connection
    over either cap. Sources inside ``exempt`` (trusted reverse proxies, which carry many
    clients on one address) count only toward the total. The caps are config's ``limits``."""

    def __init__(self, max_connections: int, max_per_source: int, exempt: Iterable[Network] = ()) -> None:
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self.exempt = tuple(exempt)
        self.open = 0
        self.refused = 0
        self._per_source: dict[str, int] = {}

    def _is_exempt(self, source: str) -> bool:
        try:
            ip = ipaddress.ip_network(source, strict=False).network_address
        except ValueError:
            return False
        return any(ip in net for net in self.exempt)

    def try_enter(self, source: str) -> bool:
        """Count a new connection from ``source``; False (counting nothing) when over a cap."""
        if self.open >= self.max_connections:
            self.refused += 1
            _throttled.warning("conn-cap-total", "connection from %s refused: %d connections open "
                               "(limits.max_connections)", source, self.open)
            return False
        n = self._per_source.get(source, 0)
        if n >= self.max_per_source and not self._is_exempt(source):
            self.refused += 1
            _throttled.warning("conn-cap-source", "connection from %s refused: it has %d open "
                               "(limits.max_connections_per_source)", source, n)
            return False
        self._per_source[source] = n + 1
        self.open += 1
        return True

    def leave(self, source: str) -> None:
        self.open -= 1
        n = self._per_source.pop(source) - 1
        if n:
            self._per_source[source] = n

    def wrap(self, handler: Handler) -> Handler:
        """``handler`` behind the caps: a refused connection is closed before any byte is read
        (before TLS too), so it costs a socket for an instant."""

        async def gated(stream: trio.abc.Stream) -> None:
            source = source_of_stream(stream)
            if not self.try_enter(source):
                await trio.aclose_forcefully(stream)
                return
            try:
                await handler(stream)
            finally:
                self.leave(source)

        return gated


class BodyBudget:
    """Bytes of incomplete request bodies held over all connections, with a cap."""

    def __init__(self, limit: int = BODY_BUDGET) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        """Reserve ``n`` bytes; False (reserving nothing) when that would pass the cap."""
        if not self.fits(n):
            return False
        self.used += n
        return True

    def fits(self, n: int) -> bool:
        """Whether ``n`` more bytes would fit now (reserves nothing; logs when not)."""
        if self.used + n <= self.limit:
            return True
        _throttled.warning("body-budget", "%d bytes of incomplete requests are buffered: "
                           "refusing more", self.used)
        return False

    def give(self, n: int) -> None:
        self.used -= n


class SourceRates:
    """Per-source token buckets for the unauthenticated operations that cost CPU."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        kw = {"max_keys": MAX_TRACKED_SOURCES}
        if clock is not None:
            kw["clock"] = clock
        self.key = TokenBuckets(*KEY_RATE, **kw)
        self.noise_handshake = TokenBuckets(*NOISE_HANDSHAKE_RATE, **kw)
        self.unkeyed_register = TokenBuckets(*UNKEYED_REGISTER_RATE, **kw)


class RegisterGate:
    """The register handler's view of the per-source limit on registrations without a valid
    key: it asks ``blocked`` before trying a key or starting an interactive login, and calls
    ``failed`` when the attempt used no valid key. Peers are named "ip:port" there."""

    def __init__(self, buckets: TokenBuckets) -> None:
        self._buckets = buckets

    def blocked(self, remote: str) -> bool:
        source = source_of_peer(remote)
        if not self._buckets.exhausted(source):
            return False
        _throttled.warning("rate-register", "%s: too many registrations without a valid key, "
                           "answering 429", source)
        return True

    def failed(self, remote: str) -> None:
        self._buckets.allow(source_of_peer(remote))
