"""The policy in the running server: which policy is in force, where it is kept, and how its
results reach connected clients.

No policy at all means every node may reach every node (Headscale's default). Once a policy is
in force, the PolicyEngine decides peers, packet filters, SSH policy and node attributes. A
change to the policy, a user or a node recompiles, and only nodes whose results changed are
told: by a per-peer delta where only their peer set moved, by a fresh netmap otherwise.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Callable

import trio

from ..errors import Forbidden, Invalid
from ..policy import PolicyEngine, PolicyError
from ..policy.hujson import MAX_POLICY_BYTES
from ..policy.model import Node as PolicyNode
from ..policy.model import User as PolicyUser
from ..storage.records import NodeRecord, UserRecord
from ..audit.actors import Actor, acting
from .access import Access, AllowAll
from .journal import Document
from .model import Tailnet

log = logging.getLogger(__name__)

FILE_POLL_INTERVAL = 1.0
# Changes within this window are compiled together.
RECOMPILE_COALESCE = 0.02


def policy_user(u: UserRecord) -> PolicyUser:
    return PolicyUser(id=u.id, name=u.name, email=u.email, groups=u.groups, role=u.role)


def policy_node(n: NodeRecord) -> PolicyNode:
    return PolicyNode(
        id=n.id, hostname=n.given_name, user_id=None if n.tags else n.user_id, tags=n.tags,
        ipv4=n.ipv4, ipv6=n.ipv6, routable_ips=n.hostinfo.routable_ips, approved_routes=n.approved_routes,
    )


def _add_isolating(engine: PolicyEngine, chunk: list[PolicyNode], left_out: set[int]) -> set[int]:
    """Add ``chunk`` to an engine that compiles without it; a node whose own data makes the
    compilation fail is found by halving and left out. Returns the ids whose results changed."""
    if not chunk:
        return set()
    try:
        return engine.apply(nodes=chunk)
    except Exception as e:
        failure = e
    changed = engine.apply(removed_nodes=[n.id for n in chunk])  # back to what compiled
    if len(chunk) == 1:
        n = chunk[0]
        log.error("node %d (%s) left out of the policy, it sees no peers until its data changes: "
                  "compiling it failed: %r", n.id, n.hostname, failure)
        left_out.add(n.id)
        return changed | {n.id}
    mid = len(chunk) // 2
    return changed | _add_isolating(engine, chunk[:mid], left_out) | _add_isolating(engine, chunk[mid:], left_out)


def apply_isolating(engine: PolicyEngine, *, nodes: list[PolicyNode], removed_nodes: list[int],
                    users: list[PolicyUser], removed_users: list[int]) -> set[int]:
    """``engine.apply``, except that a failure concerning one node affects only that node:
    it is left out of the engine (no peers, no filter) and the others are compiled."""
    try:
        return engine.apply(nodes=nodes, removed_nodes=removed_nodes, users=users, removed_users=removed_users)
    except Exception:
        log.exception("policy compilation failed; looking for the node that causes it")
    # Without the changed nodes; if that fails too, the cause is not a node and it is raised.
    changed = engine.apply(removed_nodes=removed_nodes + [n.id for n in nodes], users=users,
                           removed_users=removed_users)
    return changed | _add_isolating(engine, list(nodes), set())


def build_isolating(text: str, users: list[PolicyUser], nodes: list[PolicyNode], server_url: str) -> PolicyEngine:
    """An engine for policy ``text`` and the tailnet. Raises PolicyError for a policy that is
    refused; a node whose data makes compilation fail is left out (logged), never the policy."""
    try:
        engine = PolicyEngine(None, users, nodes, server_url=server_url)
        engine.set_policy(text)
        return engine
    except PolicyError:
        raise
    except Exception:
        log.exception("policy compilation failed; looking for the node that causes it")
    engine = PolicyEngine(None, users, (), server_url=server_url)
    engine.set_policy(text)
    _add_isolating(engine, list(nodes), set())
    return engine


class PolicyAccess:
    """Access decisions from a PolicyEngine (see access.Access)."""

    def __init__(self, engine: PolicyEngine) -> None:
        self.engine = engine

    def _result(self, node_id: int):
        try:
            return self.engine.result(node_id)
        except KeyError:
            return None

    def peers(self, viewer_id: int, candidates: set[int]) -> set[int]:
        r = self._result(viewer_id)
        return set() if r is None else set(r.peers) & candidates

    def packet_filter(self, node_id: int) -> list:
        r = self._result(node_id)
        return [] if r is None else r.packet_filter_rules

    def ssh_policy(self, node_id: int) -> dict | None:
        r = self._result(node_id)
        return None if r is None else r.ssh_policy

    def cap_map(self, node_id: int) -> dict:
        r = self._result(node_id)
        return {} if r is None else r.self_cap_map


class PolicyManager:
    """Owns the policy text, its storage (file or database) and the engine built from it."""

    def __init__(
        self, tailnet: Tailnet, set_access: Callable[[Access], None], *, mode: str,
        path: Path | None, server_url: str,
    ) -> None:
        self.tailnet = tailnet
        self._set_access = set_access
        self.mode = mode
        self.path = Path(path) if path else None
        self.server_url = server_url
        self.text: str | None = None
        self.updated_at: datetime | None = None
        self.engine: PolicyEngine | None = None
        self._known: dict[int, PolicyNode] = {}
        self._known_users: dict[int, PolicyUser] = {}
        self._mtime: float | None = None
        self._dirty_nodes: set[int] = set()
        self._dirty_users = False
        self._recompile_wake = trio.Event()
        self._engine_lock = trio.Lock()  # one engine mutation (thread) at a time
        self._approve_pending: set[int] = set()
        self._approve_wake = trio.Event()
        tailnet.on_nodes_changed = self.nodes_changed
        tailnet.on_users_changed = self.users_changed

    # --- loading ------------------------------------------------------------------------

    async def load(self) -> None:
        """The policy in force at start. Raises PolicyError (with the file named) when the
        stored policy is invalid: the server must not start with a policy it cannot apply."""
        text = None
        if self.mode == "database":
            text = await self.tailnet.store.get_policy()
        elif self.path is not None:
            text, self._mtime = self._read_file()
        if text is not None and text.strip():
            try:
                await self._install(text)
            except PolicyError as e:
                where = f"{self.path}" if self.mode == "file" else "the policy stored in the database"
                raise PolicyError(f"{where}: {e}") from None

    def _read_file(self) -> tuple[str, float]:
        """The policy file's text and modification time. Raises PolicyError when it cannot be
        read, is larger than the policy limit (read no further than that) or is not UTF-8."""
        assert self.path is not None
        try:
            with self.path.open("rb") as f:
                mtime = os.fstat(f.fileno()).st_mtime
                data = f.read(MAX_POLICY_BYTES + 1)
        except OSError as e:
            raise PolicyError(f"policy.path: cannot read {self.path}: {e.strerror or e}") from None
        if len(data) > MAX_POLICY_BYTES:
            raise PolicyError(f"the file is larger than {MAX_POLICY_BYTES} bytes, the most a policy may be")
        try:
            return data.decode("utf-8"), mtime
        except UnicodeDecodeError as e:
            raise PolicyError(f"the file is not UTF-8 text (byte {e.start}: {e.reason})") from None

    async def _build(self, text: str) -> tuple[PolicyEngine, dict[int, PolicyNode], dict[int, PolicyUser]]:
        """Compile ``text`` against a snapshot of the tailnet, in a worker thread.
        Raises PolicyError and changes nothing when the policy is refused."""
        users = {u.id: policy_user(u) for u in self.tailnet.users.values()}
        nodes = {n.id: policy_node(n) for n in self.tailnet.nodes.values()}

        engine = await trio.to_thread.run_sync(
            build_isolating, text, list(users.values()), list(nodes.values()), self.server_url)
        return engine, nodes, users

    async def _install(self, text: str, built=None) -> None:
        async with self._engine_lock:
            engine, nodes, users = built or await self._build(text)
            self.engine, self.text = engine, text
            self._known, self._known_users = nodes, users
            self.updated_at = self.tailnet.clock()
            self._set_access(PolicyAccess(engine))
            self.tailnet.bus.access_changed()
            self._queue_auto_approval(set(nodes))  # this engine already knows these nodes
            # Whatever changed while it compiled is applied by the recompiler.
            self._dirty_nodes |= set(self.tailnet.nodes) | set(nodes)
            self._dirty_users = True
            self._recompile_wake.set()

    def _queue_auto_approval(self, ids: set[int]) -> None:
        self._approve_pending |= ids
        self._approve_wake.set()

    async def run_auto_approver(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Approve advertised routes that the policy's autoApprovers cover (Headscale persists
        them as approved, so they survive a later policy change)."""
        task_status.started()
        while True:
            await self._approve_wake.wait()
            self._approve_wake = trio.Event()
            ids, self._approve_pending = self._approve_pending, set()
            for node_id in sorted(ids):
                node = self.tailnet.nodes.get(node_id)
                if self.engine is None or node is None:
                    continue
                try:
                    auto = set(self.engine.auto_approved_routes(node_id))
                except KeyError:
                    continue
                except Exception:
                    # One node's routes must not stop approvals for the others.
                    log.exception("node %d (%s): autoApprovers could not be evaluated", node_id, node.given_name)
                    continue
                have = set(node.approved_routes)
                if not auto <= have:
                    log.info("node %d (%s): routes %s approved by autoApprovers", node_id,
                             node.given_name, ", ".join(sorted(auto - have)))
                    with acting(Actor("server", "auto-approver", source="")):
                        await self.tailnet.set_approved_routes(node_id, have | auto)

    async def check(self, text: str) -> None:
        """Raises PolicyError if ``text`` would be refused against the live tailnet."""
        await self._build(text)

    async def set(self, text: str, author: str = "") -> None:
        """``policy set``: validate, store (as a new version, with who saved it), apply. The
        old policy stays on any error."""
        if self.mode != "database":
            raise Forbidden(
                f"policy.mode is 'file': edit {self.path or 'the policy file'} instead; the server "
                "reloads it on change and on SIGHUP (set policy.mode: database to use `policy set`)"
            )
        try:
            built = await self._build(text)  # refuse a bad policy before storing anything
        except PolicyError as e:
            raise Invalid(str(e)) from None
        await self.tailnet.store.set_policy(text, self.tailnet.clock(), author)
        old = self.text
        await self._install(text, built)
        self._journal("setPolicy", old, text)
        log.info("policy updated (%d bytes)", len(text))

    def _journal(self, operation: str, old: str | None, new: str | None) -> None:
        self.tailnet.journal.change(operation, Document("policy", {"policy": old or ""}, name="policy"),
                                    Document("policy", {"policy": new or ""}, name="policy"))

    async def reload(self) -> bool:
        """Re-read the policy file; keep the old policy (and log why) when the new one is bad."""
        if self.mode != "file" or self.path is None:
            return False
        try:
            self._mtime = self.path.stat().st_mtime  # a refused file is not retried until it changes
        except OSError:
            pass
        try:
            text, self._mtime = self._read_file()
            if text == self.text:
                return False
            old = self.text
            if not text.strip():
                self.engine, self.text = None, None
                self._set_access(AllowAll())
                self.tailnet.bus.access_changed()
                self._journal("reloadPolicy", old, None)
                log.info("policy file %s is empty: every node may reach every node", self.path)
                return True
            await self._install(text)
            self._journal("reloadPolicy", old, text)
        except PolicyError as e:
            log.error("policy file %s was not applied, the previous policy stays: %s", self.path, e)
            return False
        except Exception:  # our fault, not the file's: still never the end of the server
            log.exception("policy file %s was not applied (internal error), the previous policy stays",
                          self.path)
            return False
        log.info("policy reloaded from %s", self.path)
        return True

    async def watch_file(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Reload when the file's modification time changes (editors replace files, so poll)."""
        task_status.started()
        if self.mode != "file" or self.path is None:
            return
        while True:
            await trio.sleep(FILE_POLL_INTERVAL)
            try:
                mtime = self.path.stat().st_mtime
            except OSError:
                continue
            if mtime != self._mtime:
                with acting(Actor("server", "policy-file", source="")):
                    await self.reload()

    # --- keeping the engine in step with the tailnet ------------------------------------

    def nodes_changed(self, ids: set[int]) -> None:
        if self.engine is None:
            return
        self._dirty_nodes |= ids
        self._recompile_wake.set()

    def users_changed(self) -> None:
        if self.engine is None:
            return
        self._dirty_users = True
        self._recompile_wake.set()

    async def run_recompiler(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Apply node and user changes to the engine in batches, compiling in a worker thread:
        a burst of joins costs one recompilation, and the event loop never waits for one."""
        task_status.started()
        while True:
            await self._recompile_wake.wait()
            self._recompile_wake = trio.Event()
            await trio.sleep(RECOMPILE_COALESCE)
            async with self._engine_lock:
                await self._recompile_batch()

    async def _recompile_batch(self) -> None:
        engine = self.engine
        ids, self._dirty_nodes = self._dirty_nodes, set()
        users_dirty, self._dirty_users = self._dirty_users, False
        if engine is None:
            return
        upserts, removals = [], []
        for node_id in ids:
            rec = self.tailnet.nodes.get(node_id)
            if rec is None:
                if node_id in self._known:
                    removals.append(node_id)
                continue
            pn = policy_node(rec)
            if self._known.get(node_id) == pn:
                continue  # nothing the policy looks at changed
            upserts.append(pn)
        user_upserts, user_removals, users = [], [], None
        if users_dirty:
            users = {u.id: policy_user(u) for u in self.tailnet.users.values()}
            user_removals = [uid for uid in self._known_users if uid not in users]
            user_upserts = [pu for uid, pu in users.items() if self._known_users.get(uid) != pu]
        if not (upserts or removals or user_upserts or user_removals):
            return
        before = engine.results()
        try:
            changed = await trio.to_thread.run_sync(
                lambda: apply_isolating(engine, nodes=upserts, removed_nodes=removals, users=user_upserts,
                                        removed_users=user_removals)
            )
        except BaseException:
            # Not applied: the supervisor restarts the recompiler, which takes the batch again.
            self._dirty_nodes |= ids
            self._dirty_users = self._dirty_users or users_dirty
            raise
        # What the engine was given is known only once it took it.
        new_routes = set()
        for node_id in removals:
            self._known.pop(node_id, None)
        for pn in upserts:
            old = self._known.get(pn.id)
            if old is None or old.routable_ips != pn.routable_ips:
                new_routes.add(pn.id)
            self._known[pn.id] = pn
        if users is not None:
            self._known_users = users
        if engine is self.engine:
            self._dispatch(changed, before)
            # Only now does the engine know the advertised routes it may auto-approve.
            self._queue_auto_approval(new_routes)

    def _dispatch(self, changed: set[int], before: dict) -> None:
        bus = self.tailnet.bus
        for node_id in changed:
            old = before.get(node_id)
            try:
                new = self.engine.result(node_id)
            except KeyError:
                if node_id in self.tailnet.nodes:
                    bus.access_changed({node_id})  # left out of the policy: no peers, no filter
                continue
            if old is not None and (old.packet_filter_rules, old.ssh_policy, old.self_cap_map) == (
                new.packet_filter_rules, new.ssh_policy, new.self_cap_map
            ):
                # Only who it sees moved: per-peer deltas, not a whole netmap.
                bus.peers_moved(node_id, old.peers ^ new.peers)
            else:
                bus.access_changed({node_id})
