"""Response rate limiting for the UDP server, against reflection and amplification.

A UDP query's source address can be forged, so anyone could aim our answers at a victim. Each
source network (IPv4 /24, IPv6 /56, as BIND's RRL groups them) gets ``rate`` answers per
second with a burst; over that, answers are dropped, except every ``slip``-th, which goes out
as an empty truncated answer (TC set, no records: no bigger than the query). A real resolver
behind a busy network retries such an answer over TCP, where the source cannot be forged; a
victim receives no more bytes than the attacker sent. TCP is not limited here.

Above that, all sources together get ``total_rate`` answers per second: a flood from many
networks (forged or not) then costs the appliance no more than that much parsing, and the
control plane keeps its CPU.
"""

from __future__ import annotations

import ipaddress
import time
from enum import Enum
from typing import Callable

from ..ratelimit import TokenBuckets

RATE = 20.0  # answers per second per source network: far above what ACME validation needs
BURST = 40.0
SLIP = 2
V4_PREFIX = 24
V6_PREFIX = 56
MAX_NETWORKS = 10_000  # networks remembered at once (the least recently seen is forgotten)
# All sources together. A dnspython answer costs a few hundred microseconds; this keeps a flood
# to a fraction of one core, while an ACME validation needs a handful of queries.
TOTAL_RATE = 500.0
TOTAL_BURST = 1000.0


class Verdict(Enum):
    SEND = "send"
    SLIP = "slip"  # send an empty truncated answer instead
    DROP = "drop"


def source_network(address: str) -> str:
    """The network a source address is counted under."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = V4_PREFIX if ip.version == 4 else V6_PREFIX
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class ResponseLimiter:
    def __init__(self, rate: float = RATE, burst: float = BURST, *, slip: int = SLIP,
                 total_rate: float = TOTAL_RATE, total_burst: float = TOTAL_BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets = TokenBuckets(rate, burst, max_keys=MAX_NETWORKS, clock=clock)
        self._total = TokenBuckets(total_rate, total_burst, max_keys=1, clock=clock)
        self.slip = slip
        self._over: dict[str, int] = {}  # answers refused per network since it was last allowed
        self.dropped = 0
        self.slipped = 0

    def check(self, address: str) -> Verdict:
        verdict = self._per_network(source_network(address))
        # A network over its own limit is turned away before it can spend the shared budget.
        if verdict is not Verdict.DROP and not self._total.allow(None):
            verdict = Verdict.DROP
        if verdict is Verdict.DROP:
            self.dropped += 1
        elif verdict is Verdict.SLIP:
            self.slipped += 1
        return verdict

    def _per_network(self, net: str) -> Verdict:
        if self._buckets.allow(net):
            self._over.pop(net, None)
            return Verdict.SEND
        n = self._over.get(net, 0) + 1
        if len(self._over) < MAX_NETWORKS or net in self._over:
            self._over[net] = n
        return Verdict.SLIP if self.slip and n % self.slip == 0 else Verdict.DROP
