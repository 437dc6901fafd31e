"""The tailnet model: the one source netmaps are built from.

Loaded from the store at start; every change goes through a method here, which writes one store
transaction, then updates memory, then tells the change bus. That single path is where an audit
log or webhooks can later hook in.

Two kinds of state (issue 10):

- Acknowledged state (registrations, key use, names, tags, routes, owners, expiry) is written
  and committed before memory changes and before anyone is answered.
- Soft state that clients report all the time (endpoints, disco key, hostinfo, last seen) and
  online status change memory and reach peers at once; the soft columns are written in batches
  by ``run_flusher``. A slow store never delays them; a crash loses at most one interval of
  them, and each client reports its state again when it reconnects.

Whatever changes what a node's peers (or the node itself) see reaches the map sessions through
one method, ``changed``, which also bumps the node's version (the key of every cache of its
JSON). Node IDs come from the store and are never reused (migration 2); everything kept per
node is dropped with the node (``_drop`` and ``on_node_removed``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import logging
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable

import trio

from ..control.codec import Prefix, WireError
from ..control.hostinfo import Hostinfo
from .. import meters
from ..errors import AuthFailed, Conflict, Invalid, NotFound
from ..policy.model import ROLES, roles_of
from ..storage import Store
from ..storage.records import NodeRecord, PreAuthKeyRecord, UserRecord
from ..storage.store import Conflict as StoreConflict
from . import secrets as keysecrets
from .addresses import AddressPool
from .changes import FULL, ChangeBus
from .journal import Journal
from .loadcheck import checked_keys, checked_nodes
from .names import (
    check_display_name, check_email, check_given_name, check_tag, check_user_name, clean_display_name,
    dns_label, is_email, unique_name, user_name_from,
)
from .routes import RouteTable, served

log = logging.getLogger(__name__)

# Tailscale shows tagged nodes as owned by this synthetic user; Headscale uses the same ID.
TAGGED_DEVICES_USER_ID = 2147455555
TAGGED_DEVICES_LOGIN = "tagged-devices"


def _is_address(text: object) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


# The soft columns of a node (see the module docstring).
SOFT_FIELDS = frozenset({"last_seen", "endpoints", "disco_key", "hostinfo"})
FLUSH_INTERVAL = 2.0  # seconds of soft state a crash may lose

# Versions are unique across nodes and time, so a (node, version) cache key is never reused.
_versions = itertools.count(1)


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _registered_by(node: NodeRecord | None, key: PreAuthKeyRecord) -> bool:
    return node is not None and node.auth_key_id == key.id


class Tailnet:
    def __init__(
        self,
        store: Store,
        *,
        v4: ipaddress.IPv4Network | None,
        v6: ipaddress.IPv6Network | None,
        allocation: str = "sequential",
        node_expiry: timedelta | None = None,
        approval_required: bool = False,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        # node.approval_required: a new node waits for `nodes approve` (unless its pre-auth key
        # was made pre-approved); it sees no peers and no peer sees it until then.
        self.approval_required = approval_required
        self._roles: tuple[tuple, dict[int, str]] = ((), {})
        self.bus = ChangeBus()
        self.clock = clock
        self.node_expiry = node_expiry
        self.pool4 = AddressPool(v4, allocation) if v4 else None
        self.pool6 = AddressPool(v6, allocation) if v6 else None
        self.users: dict[int, UserRecord] = {}
        self.nodes: dict[int, NodeRecord] = {}
        self.keys: dict[int, PreAuthKeyRecord] = {}
        self._by_node_key: dict[str, int] = {}
        self.online: dict[int, int] = {}  # node id → open map streams
        self.version: dict[int, int] = {}  # node id → bumped on every change (mapper cache key)
        self.capver: dict[int, int] = {}  # node id → capability version its client reported
        self.routes = RouteTable()
        self._lock = trio.Lock()  # one writer at a time keeps memory in step with the store
        self._held_names: set[str] = set()  # names of stored nodes left out at load
        self._unflushed: set[int] = set()  # nodes whose soft columns the store has not seen
        # Set when the server shuts down: its streams all end, and announcing each end to all
        # the others would cost N² for nothing.
        self.stopping = False
        # Called with the ids of nodes whose policy inputs changed; set by the policy layer.
        self.on_nodes_changed: Callable[[set[int]], None] = lambda ids: None
        self.on_users_changed: Callable[[], None] = lambda: None
        # Called with the id of a node that is gone, by whoever keeps something per node.
        self.on_node_removed: list[Callable[[int], None]] = []
        # Told of every committed change and of presence (audit log, events); see journal.py.
        self.journal = Journal()

    async def load(self) -> None:
        users, nodes, keys = await self.store.load_all()
        self.users = {u.id: u for u in users}
        # Stored data that today's rules refuse is repaired or left out, never fatal.
        nodes = checked_nodes(nodes, set(self.users))
        self.keys = {k.id: k for k in checked_keys(keys)}
        for n in nodes:
            self._put(n)
            for pool, addr in ((self.pool4, n.ipv4), (self.pool6, n.ipv6)):
                if pool:
                    pool.mark_used([addr])
        # Rows left out above keep their addresses and names in the database, where they are
        # unique: never hand them out again (a new node would fail to be stored).
        held = await self.store.held_identities()
        self._held_names = {r[2] for r in held} - {n.given_name for n in nodes}
        for pool in (self.pool4, self.pool6):
            if pool:
                pool.mark_used(a for r in held for a in r[:2] if _is_address(a))

    def _put(self, n: NodeRecord) -> None:
        old = self.nodes.get(n.id)
        if old is not None and old.node_key != n.node_key:
            self._by_node_key.pop(old.node_key, None)
        self.nodes[n.id] = n
        self._by_node_key[n.node_key] = n.id

    def _put_written(self, before: NodeRecord | None, saved: NodeRecord) -> NodeRecord:
        """Memory after a durable write of ``saved``: a soft field that a client reported while
        the write was in flight is newer than what was written, so it is kept (and flushed)."""
        now = self.nodes.get(saved.id)
        if before is not None and now is not None and now is not before:
            newer = {f: getattr(now, f) for f in SOFT_FIELDS if getattr(now, f) != getattr(before, f)}
            if newer:
                saved = dataclasses.replace(saved, **newer)
                self._unflushed.add(saved.id)
        self._put(saved)
        return saved

    def _drop(self, node_id: int) -> NodeRecord | None:
        """Forget a deleted node and everything kept about it, here and (hooks) elsewhere."""
        n = self.nodes.pop(node_id, None)
        if n is not None:
            self._by_node_key.pop(n.node_key, None)
            for pool, addr in ((self.pool4, n.ipv4), (self.pool6, n.ipv6)):
                if pool:
                    pool.release(addr)
        self.version.pop(node_id, None)
        self.capver.pop(node_id, None)
        self.online.pop(node_id, None)
        self._unflushed.discard(node_id)
        self.routes.unhealthy.discard(node_id)
        for forget in self.on_node_removed:
            forget(node_id)
        return n

    # --- queries ------------------------------------------------------------------------

    def node_by_key(self, node_key: str) -> NodeRecord | None:
        i = self._by_node_key.get(node_key)
        return None if i is None else self.nodes.get(i)

    def get_node(self, node_id: int) -> NodeRecord:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise NotFound(f"node {node_id} not found") from None

    def find_user(self, ref: str | int) -> UserRecord:
        """A user by ID, name or email (emails without regard to case). Names start with a
        letter, so a number is always an ID."""
        text = str(ref)
        if text.isdigit():
            u = self.users.get(int(text))
            if u is not None:
                return u
        folded = text.casefold()
        for u in self.users.values():
            if u.name == text or (u.email and u.email.casefold() == folded):
                return u
        raise NotFound(f"user {text[:80]!r} not found")

    def is_expired(self, n: NodeRecord, now: datetime | None = None) -> bool:
        return n.expiry is not None and n.expiry <= (now or self.clock())

    def is_usable(self, n: NodeRecord, now: datetime | None = None) -> bool:
        """May the node take part in the tailnet: approved and its key not expired."""
        return n.authorized and not self.is_expired(n, now)

    def is_online(self, node_id: int) -> bool:
        return self.online.get(node_id, 0) > 0

    def is_tagged(self, n: NodeRecord) -> bool:
        return bool(n.tags)

    # --- users --------------------------------------------------------------------------

    def _check_unique(self, name: str | None, email: str | None, user_id: int | None = None) -> None:
        """Names and emails are unique without regard to case: a policy matches them so."""
        for o in self.users.values():
            if o.id == user_id:
                continue
            if name is not None and o.name.casefold() == name.casefold():
                raise Conflict(f"user {name!r} already exists")
            if email and o.email.casefold() == email.casefold():
                raise Conflict(f"another user already has the email {email!r}")

    async def create_user(
        self, name: str, display_name: str = "", email: str = "", picture_url: str = "",
    ) -> UserRecord:
        check_user_name(name)
        check_email(email)
        check_display_name(display_name)
        async with self._lock:
            self._check_unique(name, email)
            u = await self.store.create_user(name, display_name, email, self.clock(), picture_url)
            self.users[u.id] = u
        self.journal.change("createUser", None, u)
        self.on_users_changed()
        return u

    async def sign_in_user(
        self, *, provider: str, provider_id: str, name_hint: str, display_name: str, email: str,
        picture: str, groups: tuple[str, ...],
    ) -> UserRecord:
        """The user a person signed in as through their identity provider: matched by the
        provider's identity (issuer/subject, never by email alone), created on first sign-in,
        its profile and groups brought up to date at every sign-in. The user name stays as
        it was first made, since policies may name it. What the provider says is held to the
        rules of names: a name is derived, a display name cleaned, an email that is invalid or
        another user's is not taken (that user keeps it; an admin decides)."""
        display_name = clean_display_name(display_name)
        if not is_email(email):
            email = ""
        async with self._lock:
            u = next((x for x in self.users.values() if x.provider_id == provider_id), None)
            if email and any(x.email.casefold() == email.casefold() for x in self.users.values() if x is not u):
                log.warning("sign-in through %s: the email %s belongs to another user; not given to %s",
                            provider, email, u.name if u else "the new user")
                email = ""
            if u is None:
                name = user_name_from(name_hint, {x.name for x in self.users.values()})
                u = await self.store.create_user(name, display_name, email, self.clock(), picture, provider=provider,
                                                 provider_id=provider_id, groups=groups)
                log.info("user %d (%s) created at first sign-in through %s", u.id, u.name, provider)
                self.journal.change("createUser", None, u)
            else:
                new = dataclasses.replace(u, display_name=display_name or u.display_name, email=email or u.email,
                                          profile_pic_url=picture, groups=groups, provider=provider)
                if new == u:
                    return u
                old, u = u, await self.store.update_user(new)
                self.journal.change("updateUser", old, u)
            self.users[u.id] = u
        self.on_users_changed()
        self.bus.everything_changed()  # user profiles are in every netmap
        return u

    def roles(self) -> dict[int, str]:
        """Each user's role as the policy engine resolves it: the stored one, and a tailnet
        whose store names no owner (an import, the owner deleted) is owned by its first user."""
        key = tuple((u.id, u.role) for u in self.users.values())
        if key != self._roles[0]:  # the API asks once per user it shows
            self._roles = (key, roles_of(self.users.values()))
        return self._roles[1]

    async def set_role(self, ref: str | int, role: str) -> UserRecord:
        """Give a user a role. A tailnet has one owner: making someone owner hands ownership
        over (the old owner becomes an admin, in the same transaction), and the owner cannot
        just step down."""
        if role not in ROLES:
            raise Invalid(f"{role!r} is not a role: one of {', '.join(ROLES)}")
        async with self._lock:
            u = self.find_user(ref)
            roles = self.roles()
            if roles[u.id] == "owner" and role != "owner":
                raise Conflict(f"{u.name} owns the tailnet: make another user owner instead")
            changed = [dataclasses.replace(self.users[uid], role="admin")
                       for uid, r in roles.items() if role == "owner" and r == "owner" and uid != u.id]
            if u.role != role:
                changed.append(dataclasses.replace(u, role=role))
            for saved in await self.store.update_users(changed):
                self.journal.change("setUserRole", self.users[saved.id], saved)
                self.users[saved.id] = saved
            u = self.users[u.id]
        if changed:
            log.info("user %d (%s) now has the role %s", u.id, u.name, role)
            self.on_users_changed()
        return u

    async def rename_user(self, ref: str | int, new_name: str) -> UserRecord:
        check_user_name(new_name)
        async with self._lock:
            u = self.find_user(ref)
            self._check_unique(new_name, None, u.id)
            await self.store.rename_user(u.id, new_name)
            old, u = u, dataclasses.replace(u, name=new_name)
            self.users[u.id] = u
            self.journal.change("renameUser", old, u)
            owned = {n.id for n in self.nodes.values() if n.user_id == u.id}
        self.on_users_changed()
        self.on_nodes_changed(owned)
        self.bus.everything_changed()  # user profiles are in every netmap
        return u

    async def delete_user(self, ref: str | int) -> None:
        async with self._lock:
            u = self.find_user(ref)
            if any(n.user_id == u.id for n in self.nodes.values()):
                raise Conflict(f"user {u.name!r} still has nodes; delete or move them first")
            await self.store.delete_user(u.id)
            del self.users[u.id]
            self.journal.change("deleteUser", u, None)
            self.keys = {k.id: k for k in self.keys.values() if k.user_id != u.id}
        self.on_users_changed()

    # --- pre-auth keys ------------------------------------------------------------------

    async def create_preauth_key(
        self, user_ref: str | int | None, *, reusable: bool = False, ephemeral: bool = False,
        expiration: timedelta | None = timedelta(hours=1), tags: Iterable[str] = (),
        pre_approved: bool = False,
    ) -> tuple[PreAuthKeyRecord, str]:
        """Returns the record and the key text (shown once; only its hash is kept)."""
        tags = tuple(sorted({check_tag(t) for t in tags}))
        user = self.find_user(user_ref) if user_ref not in (None, "") else None
        if user is None and not tags:
            raise Invalid("a pre-auth key needs a user, or tags for the nodes it registers")
        text, prefix, hashed = keysecrets.new_secret("auth")
        now = self.clock()
        exp = now + expiration if expiration is not None else None
        async with self._lock:
            rec = await self.store.create_preauth_key(
                prefix, hashed, user.id if user else None, reusable, ephemeral, tags, now, exp,
                pre_approved,
            )
            self.keys[rec.id] = rec
        self.journal.change("createPreAuthKey", None, rec)
        return rec, text

    def find_preauth_key(self, ref: str) -> PreAuthKeyRecord:
        """By ID, prefix or full key text."""
        prefix = keysecrets.split_prefix("auth", ref) or ref
        for k in self.keys.values():
            if str(k.id) == ref or k.prefix == prefix:
                return k
        raise NotFound(f"pre-auth key {ref[:24]!r} not found")

    async def expire_preauth_key(self, ref: str) -> PreAuthKeyRecord:
        async with self._lock:
            k = self.find_preauth_key(ref)
            now = self.clock()
            await self.store.expire_preauth_key(k.id, now)
            old, k = k, dataclasses.replace(k, expiration=now)
            self.keys[k.id] = k
        self.journal.change("expirePreAuthKey", old, k)
        return k

    async def delete_preauth_key(self, ref: str) -> None:
        """Nodes it registered stay; they just no longer name it."""
        async with self._lock:
            k = self.find_preauth_key(ref)
            await self.store.delete_preauth_key(k.id)
            del self.keys[k.id]
            self.journal.change("deletePreAuthKey", k, None)
            for n in list(self.nodes.values()):
                if n.auth_key_id == k.id:  # the store's ON DELETE SET NULL, in memory
                    self.nodes[n.id] = dataclasses.replace(n, auth_key_id=None)

    def check_preauth_key(self, text: str, *, node: NodeRecord | None = None) -> PreAuthKeyRecord:
        """The key record for a key a client presented; raises AuthFailed with the reason.

        ``node``: the node the presenting machine already has under the node key it presents.
        If this very key registered it, the machine is retrying a registration whose answer it
        never got (a crash between the commit and the reply): not a second use of the key.
        """
        prefix = keysecrets.split_prefix("auth", text)
        rec = None
        if prefix is not None:
            rec = next((k for k in self.keys.values() if k.prefix == prefix), None)
        elif text:
            # A plain-text key imported from Headscale before 0.28: found by its hash.
            hashed = keysecrets.hash_secret(text)
            rec = next((k for k in self.keys.values() if k.hash == hashed), None)
        if rec is None or not keysecrets.matches(text, rec.hash):
            raise AuthFailed("invalid key: this auth key is not known to the server")
        if rec.expiration is not None and rec.expiration <= self.clock():
            raise AuthFailed("invalid key: this auth key has expired")
        if rec.used and not rec.reusable and not _registered_by(node, rec):
            raise AuthFailed("invalid key: this single-use auth key has already been used")
        return rec

    # --- nodes: registration ------------------------------------------------------------

    async def register_with_key(
        self, key: PreAuthKeyRecord, *, machine_key: str, node_key: str, old_node_key: str | None,
        hostinfo: Hostinfo | None, ephemeral_request: bool = False, requested_tags: tuple[str, ...] = (),
    ) -> NodeRecord:
        """Create the node, or re-authenticate the machine's existing node (same ID, same
        addresses, same name), consuming the key in the same transaction. A tagged key's tags
        win; else ``requested_tags`` (already checked against tagOwners by the caller)."""
        return await self._register(
            machine_key=machine_key, node_key=node_key, old_node_key=old_node_key,
            hostinfo=hostinfo, user_id=key.user_id, tags=key.tags or requested_tags,
            ephemeral=key.ephemeral or ephemeral_request, key=key, method="authkey",
        )

    async def register_interactive(
        self, user: UserRecord, *, machine_key: str, node_key: str, hostinfo: Hostinfo | None,
        tags: tuple[str, ...] = (), method: str = "cli", expiry: datetime | None = None,
    ) -> NodeRecord:
        """A pending interactive login was decided for ``user`` (by an admin: "cli", or by the
        person's identity provider: "oidc"). ``expiry`` overrides node.expiry (the ID token's
        with oidc.use_expiry_from_token)."""
        return await self._register(
            machine_key=machine_key, node_key=node_key, old_node_key=None, hostinfo=hostinfo,
            user_id=user.id, tags=tags, ephemeral=False, key=None, method=method, expiry=expiry,
        )

    def previous_owner(self, machine_key: str) -> UserRecord | None:
        """The user whose (untagged) node this machine had, if any: it may log in again."""
        for n in self.nodes.values():
            if n.machine_key == machine_key and not n.tags and n.user_id in self.users:
                return self.users[n.user_id]
        return None

    async def _register(
        self, *, machine_key: str, node_key: str, old_node_key: str | None, hostinfo: Hostinfo | None,
        user_id: int | None, tags: tuple[str, ...], ephemeral: bool,
        key: PreAuthKeyRecord | None, method: str, expiry: datetime | None = None,
    ) -> NodeRecord:
        hostname = hostinfo.hostname if hostinfo is not None else ""
        async with self._lock:
            now = self.clock()
            if expiry is None:
                expiry = now + self.node_expiry if self.node_expiry else None
            existing = self._find_reauth_target(machine_key, node_key, old_node_key, user_id, tags)
            key_id = key.id if key else None
            # A retry of the registration that used this key uses nothing more.
            mark_used = None if key is None or (key.used and _registered_by(existing, key)) else key_id
            if existing is not None:
                rec = dataclasses.replace(
                    existing, node_key=node_key, hostinfo=hostinfo if hostinfo is not None else existing.hostinfo,
                    hostname=hostname or existing.hostname, expiry=expiry,
                    auth_key_id=key_id if key_id is not None else existing.auth_key_id,
                    tags=tags or existing.tags,
                    user_id=user_id if user_id is not None else existing.user_id,
                    register_method=method,
                    # Approval belongs to the machine: logging in again does not undo it, and
                    # a pre-approved key approves a machine still waiting.
                    authorized=existing.authorized or (key is not None and key.pre_approved),
                )
            else:
                taken = {n.given_name for n in self.nodes.values()} | self._held_names
                v4 = self.pool4.allocate() if self.pool4 else None
                v6 = self.pool6.allocate() if self.pool6 else None
                rec = NodeRecord(
                    id=0, machine_key=machine_key, node_key=node_key, disco_key="",
                    ipv4=str(v4) if v4 else None, ipv6=str(v6) if v6 else None,
                    hostname=hostname, given_name=unique_name(dns_label(hostname), taken),
                    user_id=user_id, auth_key_id=key_id, tags=tags, hostinfo=hostinfo or Hostinfo(),
                    endpoints=(), expiry=expiry, last_seen=None, created_at=now,
                    ephemeral=ephemeral, register_method=method,
                    authorized=not self.approval_required or (key is not None and key.pre_approved),
                )
            try:
                saved = await self.store.save_node(rec, mark_key_used=mark_used)
            except StoreConflict as e:
                if existing is None:
                    for pool, addr in ((self.pool4, rec.ipv4), (self.pool6, rec.ipv6)):
                        if pool:
                            pool.release(addr)
                raise AuthFailed("invalid key: this single-use auth key has already been used") from e
            if key is not None:
                self.keys[key.id] = dataclasses.replace(key, used=True)
            saved = self._put_written(existing, saved)
        self.journal.change("registerNode", existing, saved)
        meters.registrations.inc(method)
        self._record_changed(saved.id)
        return saved

    def _find_reauth_target(
        self, machine_key: str, node_key: str, old_node_key: str | None, user_id: int | None,
        tags: tuple[str, ...],
    ) -> NodeRecord | None:
        for candidate_key in (node_key, old_node_key):
            n = self.node_by_key(candidate_key) if candidate_key else None
            if n is not None and n.machine_key == machine_key:
                return n
        # A machine that logged out and logs in again for the same owner keeps its node.
        for n in self.nodes.values():
            if n.machine_key == machine_key and (
                (user_id is not None and n.user_id == user_id) or (tags and n.tags)
            ):
                return n
        return None

    async def logout(self, node: NodeRecord, when: datetime) -> None:
        """The client asked to log out: its key is expired (or an ephemeral node deleted)."""
        if node.ephemeral:
            await self.delete_node(node.id)
            return
        await self.update_node(node.id, expiry=when, operation="logoutNode")

    # --- nodes: changes -----------------------------------------------------------------

    async def update_node(self, node_id: int, *, operation: str = "updateNode", **changes) -> NodeRecord:
        """Write ``changes`` (NodeRecord fields), durably, then tell everyone who sees the node.
        Returns when the change is committed: the caller may acknowledge it. ``operation``
        names the change in the audit log when no API operation is in progress."""
        async with self._lock:
            n = self.get_node(node_id)
            rec = dataclasses.replace(n, **changes)
            if rec == n:
                return n
            saved = self._put_written(n, await self.store.save_node(rec))
        self.journal.change(operation, n, saved)
        self._record_changed(node_id)
        return saved

    def client_reported(self, node_id: int, *, patch: dict | None = FULL, capver: int | None = None,
                        **changes) -> NodeRecord | None:
        """The node's client reported soft state (SOFT_FIELDS; its capability version): memory
        and peers learn it now, the store in the next flush. ``patch`` names the
        PeersChangedPatch fields that describe the change, or FULL for a whole-node resend.
        Never waits. Returns the node, or None when it is gone."""
        if not set(changes) <= SOFT_FIELDS:
            raise ValueError(f"not soft state: {sorted(set(changes) - SOFT_FIELDS)}")
        n = self.nodes.get(node_id)
        if n is None:
            return None
        rec = dataclasses.replace(n, **changes)
        new_cap = capver is not None and self.capver.get(node_id) != capver
        if rec == n and not new_cap:
            return n
        if new_cap:
            self.capver[node_id] = capver
        if rec != n:
            self.nodes[node_id] = rec
            self._unflushed.add(node_id)
        if patch is FULL:
            self._record_changed(node_id)
        else:
            self.changed(node_id, patch)
        return rec

    def _record_changed(self, node_id: int) -> None:
        self.changed(node_id, FULL, policy=True)
        self.update_routes()

    def changed(self, node_id: int, patch: dict | None = FULL, *, policy: bool = False) -> None:
        """The one way a change to node ``node_id`` reaches the map sessions; call it after the
        model changed. Bumps the node's version (every cache of its JSON is rebuilt), tells the
        policy layer when ``policy`` (its policy inputs may have moved), and marks the sessions:
        peers get ``patch`` (FULL: the whole node), the node's own sessions a new self node. A
        node that is gone leaves every peer's netmap, and its own streams end."""
        if node_id not in self.nodes:
            self.on_nodes_changed({node_id})
            self.bus.node_removed(node_id)
            return
        self.version[node_id] = next(_versions)
        if policy:
            self.on_nodes_changed({node_id})
        if patch is FULL or patch:  # an empty patch: nothing a client shows (cached JSON only)
            self.bus.node_changed(node_id, patch)

    def update_routes(self) -> None:
        """Re-elect primary routers (after a node or its online state changed)."""
        for node_id in self.routes.recompute(self.nodes, set(self.online)):
            self.changed(node_id)

    async def delete_node(self, node_id: int) -> NodeRecord:
        async with self._lock:
            n = self.get_node(node_id)
            await self.store.delete_node(node_id)
            self._drop(node_id)
        self.journal.change("deleteNode", n, None)
        self.changed(node_id)
        self.update_routes()
        return n

    async def approve_node(self, node_id: int) -> NodeRecord:
        """Device approval: the node joins the tailnet. Peers learn of it as of a new node,
        and the node itself gets its peers (its own view changed, not only its record)."""
        n = await self.update_node(node_id, authorized=True, operation="approveNode")
        self.bus.access_changed({node_id})
        return n

    async def expire_node(self, node_id: int) -> NodeRecord:
        return await self.update_node(node_id, expiry=self.clock(), operation="expireNode")

    async def rename_node(self, node_id: int, new_name: str) -> NodeRecord:
        check_given_name(new_name)
        if new_name in self._held_names or any(n.given_name == new_name and n.id != node_id for n in self.nodes.values()):
            raise Conflict(f"the name {new_name!r} is taken by another node")
        return await self.update_node(node_id, given_name=new_name, operation="renameNode")

    async def set_tags(self, node_id: int, tags: Iterable[str]) -> NodeRecord:
        tags = tuple(sorted({check_tag(t) for t in tags}))
        if not tags and self.get_node(node_id).user_id is None:
            raise Invalid("this node has no user: it must keep at least one tag")
        return await self.update_node(node_id, tags=tags, operation="setTags")

    async def move_node(self, node_id: int, user_ref: str | int) -> NodeRecord:
        u = self.find_user(user_ref)
        return await self.update_node(node_id, user_id=u.id, operation="moveNode")

    async def set_approved_routes(self, node_id: int, routes: Iterable[str]) -> NodeRecord:
        clean = []
        for r in routes:
            try:
                clean.append(Prefix().parse(r, "route"))  # the rule advertised routes follow
            except WireError:
                raise Invalid(f"{str(r)[:64]!r} is not a route (a prefix like 10.0.0.0/24)") from None
        return await self.update_node(node_id, approved_routes=tuple(sorted(set(clean))),
                                      operation="setApprovedRoutes")

    # --- online status ------------------------------------------------------------------

    def stream_opened(self, node_id: int) -> bool:
        """Count a map stream; True when the node just came online."""
        self.online[node_id] = self.online.get(node_id, 0) + 1
        if self.online[node_id] == 1:
            self.changed(node_id, {"Online": True})
            self.journal.event("node.online", {}, node_id)
            self._routes_after_presence(node_id)
            return True
        return False

    def _routes_after_presence(self, node_id: int) -> None:
        # Only a router's coming and going can move a primary route; skipping the election for
        # everyone else keeps a reconnect storm linear instead of quadratic.
        n = self.nodes.get(node_id)
        if (n is not None and served(n)) or node_id in self.routes.primary.values():
            self.update_routes()

    def stream_closed(self, node_id: int) -> None:
        """A map stream ended; the node's last one makes it offline, which peers and the route
        election learn at once, never behind a store write (issue 10)."""
        left = self.online.get(node_id, 1) - 1
        if left > 0:
            self.online[node_id] = left
            return
        self.online.pop(node_id, None)
        if node_id not in self.nodes:
            return
        now = self.clock()
        if self.stopping:  # every stream is closing: record the time, tell no one
            self.client_reported(node_id, last_seen=now, patch={})
            return
        self.client_reported(node_id, last_seen=now, patch={"LastSeen": now, "Online": False})
        self.journal.event("node.offline", {}, node_id)
        self._routes_after_presence(node_id)

    # --- soft state in the store ---------------------------------------------------------

    async def flush_soft_state(self) -> int:
        """Write the soft columns of every node that changed since the last flush, in one
        transaction; returns how many. On failure they stay queued for the next flush."""
        async with self._lock:  # a durable write of the same node never interleaves
            ids, self._unflushed = self._unflushed, set()
            rows = [self.nodes[i] for i in sorted(ids) if i in self.nodes]
            if not rows:
                return 0
            try:
                await self.store.save_soft_state(rows)
            except BaseException:
                self._unflushed |= ids
                raise
        return len(rows)

    async def run_flusher(self, interval: float = FLUSH_INTERVAL, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(interval)
            await self.flush_soft_state()
