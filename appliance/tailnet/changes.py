"""The change bus: a change to the model → the open map sessions it concerns.

Changes are coalesced, not queued: a session keeps one ``Pending`` record of what is dirty and
a wake-up event; its writer sends one delta built from the *current* model, however many
changes happened in between. A slow client therefore never makes the bus block or grow.

A peer's patch is recorded as the *names* of the PeersChangedPatch fields that changed (one
shared frozenset per combination); their values are read from the model when the delta is
built. In a reconnect storm every session hears of every node: N² marks, which must not be N²
objects for the garbage collector to walk (issue 10: its pauses held the admin socket).
"""

from __future__ import annotations

from dataclasses import dataclass, field
import time
from typing import Iterable, Iterator

import trio

FULL = None  # a peer marked with FULL gets its whole node resent, not a patch
_ABSENT = object()

Fields = frozenset  # names of PeersChangedPatch fields, e.g. {"Online", "LastSeen"}
_fields: dict[frozenset, frozenset] = {}
_unions: dict[tuple[frozenset, frozenset], frozenset] = {}


def patch_fields(patch: Iterable[str]) -> Fields:
    """The shared frozenset of these field names (a dict gives its keys)."""
    f = frozenset(patch)
    return _fields.setdefault(f, f)


def _union(a: Fields, b: Fields) -> Fields:
    u = _unions.get((a, b))
    if u is None:
        u = _unions[(a, b)] = patch_fields(a | b)
    return u


@dataclass
class Pending:
    """What one session still has to tell its client."""

    self_node: bool = False
    everything: bool = False  # DERP map, DNS, packet filter, profiles, peer set: recompute all
    peers: dict[int, Fields | None] = field(default_factory=dict)  # node id → patch fields or FULL
    removed: set[int] = field(default_factory=set)
    # Pieces to bring up to date: "dns", "derp" (tailnet-wide), "access" (this node's packet
    # filter, SSH policy, attributes and peer set, after a policy result changed).
    parts: set[str] = field(default_factory=set)
    ping_url: str | None = None  # a PingRequest to send: the HA probe asks "are you there?"

    def mark_peer(self, node_id: int, fields: Fields | None) -> None:
        """Peer ``node_id`` changed: ``fields`` (from patch_fields) or FULL. Called for every
        session on every change, so kept lean."""
        if self.removed:
            self.removed.discard(node_id)
        if fields is FULL:
            self.peers[node_id] = FULL
            return
        old = self.peers.get(node_id, _ABSENT)
        if old is _ABSENT:
            self.peers[node_id] = fields
        elif old is not FULL and old is not fields:
            self.peers[node_id] = _union(old, fields)

    def mark_removed(self, node_id: int) -> None:
        self.peers.pop(node_id, None)
        self.removed.add(node_id)

    def empty(self) -> bool:
        return not (self.self_node or self.everything or self.peers or self.removed or self.parts
                    or self.ping_url)

    def take(self) -> "Pending":
        taken = Pending(self.self_node, self.everything, self.peers, self.removed, self.parts, self.ping_url)
        self.self_node, self.everything, self.peers, self.removed, self.parts = False, False, {}, set(), set()
        self.ping_url = None
        return taken


class SessionHandle:
    """The bus's view of one open map stream."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.pending = Pending()
        self._wake = trio.Event()
        self.closed = False
        self.dirty_since: float | None = None  # when the oldest change not yet sent was marked

    def wake(self) -> None:
        if self.dirty_since is None:
            self.dirty_since = time.monotonic()
        self._wake.set()

    def take_dirty_since(self) -> float | None:
        since, self.dirty_since = self.dirty_since, None
        return since

    async def wait(self) -> None:
        await self._wake.wait()
        self._wake = trio.Event()


class ChangeBus:
    def __init__(self) -> None:
        self._sessions: dict[int, list[SessionHandle]] = {}

    def open(self, node_id: int) -> SessionHandle:
        handle = SessionHandle(node_id)
        self._sessions.setdefault(node_id, []).append(handle)
        return handle

    def close(self, handle: SessionHandle) -> bool:
        """Forget a session; True when it was the node's last one."""
        handle.closed = True
        handle.wake()
        lst = self._sessions.get(handle.node_id, [])
        if handle in lst:
            lst.remove(handle)
        if not lst:
            self._sessions.pop(handle.node_id, None)
            return True
        return False

    def sessions_of(self, node_id: int) -> list[SessionHandle]:
        return list(self._sessions.get(node_id, ()))

    def connected_nodes(self) -> set[int]:
        return set(self._sessions)

    def _all(self) -> Iterator[SessionHandle]:
        for lst in self._sessions.values():
            yield from lst

    # --- what the model calls --------------------------------------------------------

    def node_changed(self, node_id: int, patch: Iterable[str] | None = FULL) -> None:
        """Node ``node_id`` changed: its own sessions get a new self node (unless the change
        is a patch only peers care about) and every other session re-judges it as a peer."""
        fields = FULL if patch is FULL else patch_fields(patch)
        for owner, handles in self._sessions.items():
            for h in handles:
                if owner != node_id:
                    h.pending.mark_peer(node_id, fields)
                    h.wake()
                elif patch is FULL:
                    h.pending.self_node = True
                    h.wake()

    def node_removed(self, node_id: int) -> None:
        """Node ``node_id`` is gone: peers drop it; its own streams learn it and end."""
        for h in self._all():
            if h.node_id != node_id:
                h.pending.mark_removed(node_id)
            else:
                h.pending.self_node = True
            h.wake()

    def ping(self, node_id: int, url: str) -> None:
        """Ask the node's client to answer ``url`` (a PingRequest; the HA prober's question)."""
        for h in self._sessions.get(node_id, ()):
            h.pending.ping_url = url
            h.wake()

    def peers_moved(self, node_id: int, peers: set[int]) -> None:
        """These peers came into or went out of ``node_id``'s sight (its filter did not
        change): each is re-judged as a peer, which adds or removes it."""
        for h in self._sessions.get(node_id, ()):
            for peer in peers:
                h.pending.mark_peer(peer, FULL)
            h.wake()

    def replace_sessions(self, node_id: int) -> None:
        """A newer stream of the node opens: the older ones end."""
        for h in self._sessions.get(node_id, ()):
            h.closed = True
            h.wake()

    def everything_changed(self) -> None:
        """Something every netmap depends on changed (policy, DNS, DERP map, users)."""
        for h in self._all():
            h.pending.everything = True
            h.wake()

    def part_changed(self, part: str) -> None:
        """A tailnet-wide piece every netmap carries changed ("dns" or "derp"): each client gets
        just that piece, not a whole netmap."""
        for h in self._all():
            h.pending.parts.add(part)
            h.wake()

    def access_changed(self, node_ids: set[int] | None = None) -> None:
        """What these nodes (None: all) may see and reach changed: each gets its new filter,
        SSH policy and attributes, and only the peers that came or went, not a whole netmap
        (at 1000 nodes a policy change would otherwise resend a million peer entries)."""
        handles = self._all() if node_ids is None else (
            h for node_id in node_ids for h in self._sessions.get(node_id, ())
        )
        for h in list(handles):
            h.pending.parts.add("access")
            h.wake()
