"""The certificate zone: the challenge records that set-dns publishes, their expiry, and what
``trioscale certs`` shows about it."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import trio

from ..config.model import CertificateSettings
from ..logthrottle import LogThrottle
from .authority import Authority
from .errors import ProviderError
from .providers import EmbeddedProvider, Provider, make_provider
from .records import ChallengeRecords, Record
from .server import DNSServer

log = logging.getLogger(__name__)
throttled = LogThrottle(log)

# How long a challenge record stays after set-dns: the ACME server looks within seconds of the
# client accepting the challenge; ten minutes covers a slow CA and a retry or two.
CHALLENGE_LIFETIME = 600.0
SWEEP_INTERVAL = 15.0  # how often expired records are withdrawn
WITHDRAW_TIMEOUT = 30.0  # per sweep, for all withdrawals together


class CertZone:
    """``base_domain`` as the zone of certificate names, published through ``provider``."""

    def __init__(self, settings: CertificateSettings, base_domain: str, *, provider: Provider | None = None,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.settings = settings
        self.zone = base_domain
        self.provider = provider or make_provider(settings, base_domain)
        self.clock = clock
        # A serial that only grows across restarts (RFC 1912 2.2 suggests the date; seconds do).
        self.records = ChallengeRecords(CHALLENGE_LIFETIME, serial=int(time.time()))
        self.server: DNSServer | None = None
        if isinstance(self.provider, EmbeddedProvider):
            self.server = DNSServer(Authority(base_domain, settings.ns_name, self.records), settings.listen_addr,
                                    now=clock)
        self.published = 0
        self.refused = 0
        self.last_error: str | None = None

    @property
    def ns_record(self) -> str | None:
        """The one record that delegates the zone to the embedded server."""
        if self.server is None:
            return None
        return f"{self.zone}. NS {self.settings.ns_name}."

    async def publish(self, name: str, value: str) -> None:
        """Publish the TXT ``value`` at ``name`` until CHALLENGE_LIFETIME passes. Raises
        TooMany (the zone is full) or ProviderError (the provider failed; nothing is kept)."""
        gone = self.records.add(name, value, self.clock())
        try:
            await self.provider.publish(name, value)
        except ProviderError as e:
            self.records.remove(name, value)
            self.last_error = str(e)
            raise
        self.published += 1
        await self._withdraw(gone)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The sweeper, and the embedded DNS server if that is the provider. Starts when the
        server is bound (``task_status.started`` with its port, or None)."""
        async with trio.open_nursery() as nursery:
            port = await nursery.start(self.server.serve) if self.server is not None else None
            log.info("certificates for *.%s through %s%s", self.zone, self.provider.name,
                     f"; delegate the zone with: {self.ns_record}" if self.ns_record else "")
            task_status.started(port)
            while True:
                await trio.sleep(SWEEP_INTERVAL)
                await self._withdraw(self.records.expire(self.clock()))

    async def _withdraw(self, records: list[Record]) -> None:
        if not records or isinstance(self.provider, EmbeddedProvider):
            return
        with trio.move_on_after(WITHDRAW_TIMEOUT):
            for r in records:
                try:
                    await self.provider.withdraw(r.name, r.value)
                except ProviderError as e:
                    # Left behind, it only costs a stale TXT value; a later order uses a new one.
                    self.last_error = str(e)
                    throttled.warning("withdraw", "could not withdraw the challenge record at %s: %s", r.name, e)

    def status(self) -> dict[str, Any]:
        now = self.clock()
        doc: dict[str, Any] = {
            "zone": self.zone,
            "provider": self.provider.name,
            **self.provider.describe(),
            "records": [{"name": r.name, "value": r.value, "expires_in": round(r.expires - now)}
                        for r in self.records.live(now)],
            "published": self.published,
            "refused": self.refused,
            "last_error": self.last_error,
        }
        if self.server is not None:
            doc["ns_record"] = self.ns_record
            doc["serial"] = self.records.serial
            doc["queries"] = dict(self.server.authority.counts)
            doc["rate_limited"] = {"dropped": self.server.limiter.dropped, "slipped": self.server.limiter.slipped}
        return doc
