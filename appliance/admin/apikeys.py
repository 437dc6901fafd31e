"""API keys: Bearer credentials of the public /api/v1, kept hashed, checked in memory.

Failed attempts are rate-limited per source address (an IPv6 source counts by its /64, which
one host can fill), counted, and logged with their source through the per-reason log throttle;
a source over its limit gets 429 without its key being looked at. The last use of each key is
kept in memory and written in one transaction every FLUSH_INTERVAL (and at shutdown), not once
per request.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections import OrderedDict
from datetime import datetime

import trio

from ..errors import NotFound
from ..logthrottle import LogThrottle
from ..ratelimit import TokenBuckets
from ..storage import Store
from ..storage.records import ApiKeyRecord
from ..tailnet import secrets as keysecrets
from ..tailnet.journal import Journal
from .problem import RateLimited, Unauthorized

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 60.0
# A source may fail this many times at once, then once per FAIL_PERIOD seconds.
FAIL_BURST = 10
FAIL_PERIOD = 6.0
MAX_SOURCES = 10_000  # sources whose failures are remembered (least recent forgotten first)
MAX_KEY_TEXT = 200  # a longer Authorization value is not one of our keys


def source_key(source: str) -> str:
    """The rate-limit key of a peer address: the address, or its /64 for IPv6."""
    try:
        addr = ipaddress.ip_address(source)
    except ValueError:
        return source
    if addr.version == 6:
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


def masked(prefix: str) -> str:
    """How a stored key is shown: its prefix only, in Headscale's form."""
    return f"hskey-api-{prefix}-***"


class ApiKeys:
    def __init__(self, store: Store, clock) -> None:
        self.store = store
        self.clock = clock
        self.keys: dict[int, ApiKeyRecord] = {}
        self._used: dict[int, datetime] = {}  # last use not yet written
        self.failures = TokenBuckets(1.0 / FAIL_PERIOD, FAIL_BURST, max_keys=MAX_SOURCES)
        self.failed_total = 0
        self.failed_by_source: OrderedDict[str, int] = OrderedDict()
        self._log = LogThrottle(log)
        self.journal = Journal()  # the tailnet's (AdminAPI sets it): changes are audited

    async def load(self) -> None:
        self.keys = {k.id: k for k in await self.store.list_api_keys()}

    # --- changes ------------------------------------------------------------------------

    async def create(self, expiration: datetime | None) -> tuple[ApiKeyRecord, str]:
        """A new key; returns its record and its text (shown once: only the hash is kept)."""
        text, prefix, hashed = keysecrets.new_secret("api")
        rec = await self.store.create_api_key(prefix, hashed, self.clock(), expiration)
        self.keys[rec.id] = rec
        self.journal.change("createApiKey", None, rec)
        return rec, text

    def find(self, ref: str) -> ApiKeyRecord:
        """By ID, prefix, the masked form ``hskey-api-PREFIX-***`` or the whole key."""
        prefix = keysecrets.split_prefix("api", ref) or ref
        for k in self.keys.values():
            if str(k.id) == ref or k.prefix == prefix:
                return k
        raise NotFound(f"API key {ref[:30]!r} not found")

    async def expire(self, rec: ApiKeyRecord) -> ApiKeyRecord:
        now = self.clock()
        await self.store.expire_api_key(rec.id, now)
        old, rec = rec, dataclasses.replace(rec, expiration=now)
        self.keys[rec.id] = rec
        self.journal.change("expireApiKey", old, rec)
        return rec

    async def delete(self, rec: ApiKeyRecord) -> None:
        await self.store.delete_api_key(rec.id)
        self.keys.pop(rec.id, None)
        self._used.pop(rec.id, None)
        self.journal.change("deleteApiKey", rec, None)

    def listed(self) -> list[ApiKeyRecord]:
        """The keys with their latest use, written or not."""
        return [dataclasses.replace(k, last_seen=self._used.get(k.id, k.last_seen))
                for k in sorted(self.keys.values(), key=lambda k: k.id)]

    # --- checking -----------------------------------------------------------------------

    async def authenticate(self, authorization: str | None, source: str) -> ApiKeyRecord:
        """The key record for ``Authorization: Bearer <key>``; raises Unauthorized (401) or,
        when ``source`` failed too often, RateLimited (429)."""
        who = source_key(source)
        tokens = self.failures.available(who)
        if tokens < 1:
            wait = max(1, round((1 - tokens) * FAIL_PERIOD))
            raise RateLimited(f"too many failed API key attempts from {source}; retry in {wait} s",
                              headers=(("retry-after", str(wait)),))
        rec, why = await self._check(authorization)
        if rec is None:
            self._failed(who, source, why)
            raise Unauthorized("a valid API key is needed: Authorization: Bearer <key> "
                               "(`trioscale apikeys create`)", headers=(("www-authenticate", "Bearer"),))
        self._used[rec.id] = self.clock()
        return rec

    async def _check(self, authorization: str | None) -> tuple[ApiKeyRecord | None, str]:
        if not authorization:
            return None, "no Authorization header"
        scheme, _, text = authorization.partition(" ")
        text = text.strip()
        if scheme.lower() != "bearer" or not text:
            return None, "not a Bearer credential"
        if len(text) > MAX_KEY_TEXT:
            return None, "malformed key"
        prefix = keysecrets.lookup_prefix("api", text)
        if prefix is None:
            return None, "malformed key"
        rec = next((k for k in self.keys.values() if k.prefix == prefix), None)
        if rec is not None and keysecrets.is_bcrypt(rec.hash):
            # A key imported from Headscale: its bcrypt check costs ~0.1 s, off the event loop.
            ok = await trio.to_thread.run_sync(keysecrets.matches, text, rec.hash)
        else:
            ok = rec is not None and keysecrets.matches(text, rec.hash)
        if rec is None or not ok:
            return None, f"unknown key {masked(prefix)}"
        if rec.expiration is not None and rec.expiration <= self.clock():
            return None, f"expired key {masked(prefix)}"
        return rec, ""

    def _failed(self, who: str, source: str, why: str) -> None:
        self.failures.allow(who)
        self.failed_total += 1
        count = self.failed_by_source.pop(who, 0) + 1
        self.failed_by_source[who] = count
        while len(self.failed_by_source) > MAX_SOURCES:
            self.failed_by_source.popitem(last=False)
        self._log.warning("api-key-refused", "API key refused from %s: %s (%d failed attempts from %s)",
                          source, why, count, who)

    # --- last use -----------------------------------------------------------------------

    async def flush(self) -> None:
        """Write the last uses seen since the previous flush, in one transaction."""
        used = {i: t for i, t in self._used.items() if i in self.keys}
        self._used = {}
        if not used:
            return
        try:
            await self.store.touch_api_keys(used)
        except BaseException:
            for i, t in used.items():  # kept for the next flush, unless a newer use came
                self._used.setdefault(i, t)
            raise
        for i, t in used.items():
            if i in self.keys:
                self.keys[i] = dataclasses.replace(self.keys[i], last_seen=t)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Load the keys, then flush last uses periodically; a last flush when cancelled."""
        await self.load()
        task_status.started()
        try:
            while True:
                await trio.sleep(FLUSH_INTERVAL)
                try:
                    await self.flush()
                except Exception:  # noqa: BLE001 - a failed flush is retried, never fatal
                    log.exception("could not record API keys' last use; will retry")
        finally:
            with trio.move_on_after(5, shield=True):
                await self.flush()
