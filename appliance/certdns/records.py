"""The challenge TXT records held now, each with its expiry. Pure: every call is given ``now``.

A record lives for ``lifetime`` seconds after set-dns asked for it: long enough for the ACME
server to look (it does so within seconds of the client accepting the challenge), short enough
that the zone does not collect stale tokens.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .errors import TooMany

# A wildcard and a plain certificate for one node need two values at one name at once; a retry
# or an overlapping renewal adds one or two more. Beyond this the oldest value goes.
MAX_VALUES_PER_NAME = 4
# All names together: bounds memory however many nodes ask (each asks only for its own name).
MAX_RECORDS = 10_000
SERIAL_MODULUS = 2**32  # RFC 1982 serial number arithmetic


def normalize(name: str) -> str:
    """Names are compared lower-case and without the final dot."""
    return name.rstrip(".").lower()


@dataclass(frozen=True, slots=True)
class Record:
    name: str  # normalized
    value: str
    expires: float  # on the clock ``now`` comes from


class ChallengeRecords:
    def __init__(self, lifetime: float, *, serial: int = 1, max_per_name: int = MAX_VALUES_PER_NAME,
                 max_records: int = MAX_RECORDS) -> None:
        self.lifetime = lifetime
        self.max_per_name = max_per_name
        self.max_records = max_records
        self.serial = serial % SERIAL_MODULUS  # the zone's SOA serial: changes with every change
        self._by_name: dict[str, list[Record]] = {}
        self._ancestors: Counter[str] = Counter()  # names above a record: they exist, empty
        self._count = 0

    def add(self, name: str, value: str, now: float) -> list[Record]:
        """Hold ``value`` at ``name`` for ``lifetime`` from ``now`` (again, if it is held).

        Returns the records this pushed out: the oldest of the name beyond its limit, and any
        that had expired. Raises TooMany when the zone holds its maximum of live records.
        """
        name = normalize(name)
        gone = self.expire(now)
        held = self._by_name.get(name, [])
        same = [r for r in held if r.value == value]
        if same:
            held.remove(same[0])
            self._count -= 1
        elif self._count >= self.max_records:
            raise TooMany("too many challenge records are pending in the zone; try again in a few minutes")
        if not held and name not in self._by_name:
            self._link(name, +1)
        held.append(Record(name, value, now + self.lifetime))
        self._by_name[name] = held
        self._count += 1
        while len(held) > self.max_per_name:
            gone.append(held.pop(0))
            self._count -= 1
        self._changed()
        return gone

    def remove(self, name: str, value: str) -> bool:
        name = normalize(name)
        held = self._by_name.get(name, [])
        for r in held:
            if r.value == value:
                self._drop(r)
                self._changed()
                return True
        return False

    def expire(self, now: float) -> list[Record]:
        """Forget the records whose time is up; returns them (a provider withdraws them)."""
        gone = [r for held in self._by_name.values() for r in held if r.expires <= now]
        for r in gone:
            self._drop(r)
        if gone:
            self._changed()
        return gone

    def values(self, name: str, now: float) -> tuple[str, ...]:
        return tuple(r.value for r in self._by_name.get(normalize(name), ()) if r.expires > now)

    def exists(self, name: str, now: float) -> bool:
        """Whether ``name`` holds live records or lies above one (an empty non-terminal)."""
        name = normalize(name)
        if self.values(name, now):
            return True
        return self._ancestors[name] > 0 and any(
            r.expires > now for held_name, held in self._by_name.items()
            if held_name.endswith("." + name) for r in held
        )

    def live(self, now: float) -> list[Record]:
        return sorted((r for held in self._by_name.values() for r in held if r.expires > now),
                      key=lambda r: (r.name, r.expires))

    def __len__(self) -> int:
        return self._count

    def _drop(self, r: Record) -> None:
        held = self._by_name[r.name]
        held.remove(r)
        self._count -= 1
        if not held:
            del self._by_name[r.name]
            self._link(r.name, -1)

    def _link(self, name: str, delta: int) -> None:
        labels = name.split(".")
        for i in range(1, len(labels)):
            parent = ".".join(labels[i:])
            self._ancestors[parent] += delta
            if self._ancestors[parent] <= 0:
                del self._ancestors[parent]

    def _changed(self) -> None:
        self.serial = (self.serial + 1) % SERIAL_MODULUS or 1
