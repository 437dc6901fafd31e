"""Crash consistency (issue 10, item 7): the server is killed with SIGKILL at random moments
while writes of every kind are in flight, hundreds of times. After every kill the database
passes `PRAGMA integrity_check`, holds every write the server had acknowledged, and no
single-use key has registered two nodes; the server then starts again on it.

The writes go through the real interfaces: user creation, node renames, route approvals and
policy changes through the admin socket (HTTP on the unix socket, as the CLI sends them);
pre-auth key creation there too, and key use as real registrations over Noise + HTTP/2
(bench.controlclient), two machines racing for each single-use key. Servers are forked from a
pre-imported process (tests/driver/forkserver.py), so a start costs a tenth of a second and the
whole run stays within about a minute.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import trio
import yaml

from bench.controlclient import SimClient, fetch_server_key

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
ITERATIONS = int(os.environ.get("TRIOSCALE_CRASH_ITERATIONS", "200"))
NODES = 3  # nodes renamed and given routes
START_TIMEOUT = 20.0
WRITE_WINDOW = (0.02, 0.25)  # seconds of writes before the kill, uniformly at random
EXPIRES = (datetime.now(timezone.utc) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")


class Unacknowledged(Exception):
    """The write got no success answer (the server died, or refused it)."""


async def admin(socket_path: Path, method: str, path: str, body: dict | None = None) -> dict:
    """One admin API call over the unix socket; the decoded answer of a 200, else Unacknowledged."""
    payload = b"" if body is None else json.dumps(body).encode()
    head = (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
    try:
        stream = await trio.open_unix_socket(str(socket_path))
        async with stream:
            await stream.send_all(head + payload)
            data = bytearray()
            while chunk := await stream.receive_some(65536):
                data += chunk
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
        raise Unacknowledged(repr(e)) from None
    head, _, body_bytes = bytes(data).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        raise Unacknowledged(head[:80].decode(errors="replace"))
    return json.loads(body_bytes)


@dataclass
class Overwrites:
    """Sequential writes of one value (a node's name, its routes, the policy): what was tried,
    in order, and how many of them were acknowledged (always a prefix)."""

    before: object
    tried: list = field(default_factory=list)
    acked: int = 0

    def allowed(self) -> list:
        """What the store may hold: the last acknowledged value, or the one in flight after it."""
        last = self.tried[self.acked - 1] if self.acked else self.before
        return [last] + self.tried[self.acked:self.acked + 1]


@dataclass
class Ledger:
    users: set[str] = field(default_factory=set)  # acknowledged creations
    keys: dict[str, int] = field(default_factory=dict)  # acknowledged single-use keys: text → id
    registered: dict[str, str] = field(default_factory=dict)  # acknowledged registrations: node key → key text
    cut_off: list = field(default_factory=list)  # (client, key) of registrations the kill cut off
    retried: int = 0
    retried_committed: int = 0  # of those, committed before the kill: the answer was lost
    writes: int = 0
    acks: int = 0
    acks_by_kind: dict[str, int] = field(default_factory=dict)

    def acked(self, kind: str) -> None:
        self.acks += 1
        self.acks_by_kind[kind] = self.acks_by_kind.get(kind, 0) + 1


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        with socket.socket() as s:
            s.bind((HOST, 0))
            self.port = s.getsockname()[1]
        self.socket = tmp / "data" / "trioscale.sock"
        self.db = tmp / "data" / "db.sqlite"
        self.config = tmp / "config.yaml"
        self.config.write_text(yaml.safe_dump({
            "server_url": f"http://{HOST}:{self.port}",
            "listen_addr": f"{HOST}:{self.port}",
            "data_dir": str(tmp / "data"),
            "unix_socket": str(self.socket),
            "derp": {"server": {"enabled": False}},
            "policy": {"mode": "database"},
            "log": {"level": "warning"},
        }))
        self.log = tmp / "server.log"
        self.forker = subprocess.Popen(
            [sys.executable, "-m", "tests.driver.forkserver", str(self.config), str(self.log)],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True,
        )
        self.pid: int | None = None

    def ask(self, line: str) -> str:
        self.forker.stdin.write(line + "\n")
        self.forker.stdin.flush()
        return self.forker.stdout.readline().strip()

    async def start(self) -> None:
        self.pid = int(self.ask("start"))
        with trio.fail_after(START_TIMEOUT):
            while True:
                try:
                    await admin(self.socket, "GET", "/api/v1/version")
                    return
                except Unacknowledged:
                    await trio.sleep(0.01)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        assert int(self.ask(f"wait {self.pid}")) == -signal.SIGKILL, self.log.read_text()[-3000:]
        self.pid = None

    def close(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            self.ask(f"wait {self.pid}")
        self.forker.stdin.close()
        self.forker.wait(10)


def policy_text(tag: str) -> str:
    return json.dumps({"groups": {f"group:{tag}": []}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]})


async def overwrite(ledger: Ledger, value: Overwrites, call) -> None:
    """Write new values one after another until cancelled."""
    i = 0
    while True:
        i += 1
        v = call.make(i)
        value.tried.append(v)
        ledger.writes += 1
        try:
            await call.send(v)
        except Unacknowledged:
            return
        value.acked = len(value.tried)
        ledger.acked(type(call).__name__)


class Rename:
    def __init__(self, sock: Path, node_id: int, it: int) -> None:
        self.sock, self.node_id, self.it = sock, node_id, it

    def make(self, i: int) -> str:
        return f"n{self.node_id}-{self.it}-{i}"

    async def send(self, v: str) -> None:
        await admin(self.sock, "POST", f"/api/v1/node/{self.node_id}/rename/{v}")


class Approve:
    def __init__(self, sock: Path, node_id: int, it: int) -> None:
        self.sock, self.node_id, self.it = sock, node_id, it

    def make(self, i: int) -> list:
        return sorted([f"10.{self.node_id}.{(self.it * 7 + i) % 256}.0/24"])

    async def send(self, v: list) -> None:
        await admin(self.sock, "POST", f"/api/v1/node/{self.node_id}/approve_routes", {"routes": v})


class SetPolicy:
    def __init__(self, sock: Path, it: int) -> None:
        self.sock, self.it = sock, it

    def make(self, i: int) -> str:
        return policy_text(f"it{self.it}-{i}")

    async def send(self, v: str) -> None:
        await admin(self.sock, "PUT", "/api/v1/policy", {"policy": v})


async def create_users(ledger: Ledger, sock: Path, it: int) -> None:
    i = 0
    while True:
        i += 1
        name = f"user-{it}-{i}"
        ledger.writes += 1
        try:
            await admin(sock, "POST", "/api/v1/user", {"name": name})
        except Unacknowledged:
            return
        ledger.users.add(name)
        ledger.acked("user")


async def use_keys(ledger: Ledger, cluster: Cluster, public: bytes, it: str, nursery: trio.Nursery) -> None:
    """Create single-use keys and let two new machines race to register with each."""
    i = 0
    while True:
        i += 1
        ledger.writes += 1
        try:
            doc = await admin(cluster.socket, "POST", "/api/v1/preauthkey", {"user": "crash", "expiration": EXPIRES})
        except Unacknowledged:
            return
        key = doc["preAuthKey"]["key"]
        ledger.keys[key] = int(doc["preAuthKey"]["id"])
        ledger.acked("key")
        async with trio.open_nursery() as race:
            for side in "ab":
                race.start_soon(register, ledger, cluster, public, key, f"k{it}-{i}{side}", nursery)


async def register(ledger: Ledger, cluster: Cluster, public: bytes, key: str, name: str, nursery: trio.Nursery,
                   client: SimClient | None = None) -> bool:
    """Register a new machine (or ``client`` again) with ``key``; True when acknowledged."""
    client = client or SimClient(HOST, cluster.port, public, name)
    ledger.writes += 1
    try:
        await client.connect(nursery)
        doc = await client.register(key)
    except Exception as e:
        if "already been used" not in str(e):  # not refused: the kill cut it off
            ledger.cut_off.append((client, key))
        return False
    finally:
        await client.aclose()
    assert doc.get("MachineAuthorized")
    ledger.registered[client.node_key] = key
    ledger.acked("registration")
    return True


async def retry_cut_off(ledger: Ledger, cluster: Cluster, public: bytes, committed: set[str], nursery) -> None:
    """The machines whose registration the kill cut off try again, as a real client does. One
    whose registration was committed before the kill is answered yes (same node, and the key
    counts as used once); the others register if their key is still unused."""
    cut_off, ledger.cut_off = ledger.cut_off, []
    for client, key in cut_off:
        ledger.retried += 1
        ledger.retried_committed += client.node_key in committed
        ok = await register(ledger, cluster, public, key, client.hostname, nursery, client)
        assert ok or client.node_key not in committed, f"a committed registration with key {ledger.keys[key]} was refused on retry"


def check_database(path: Path, ledger: Ledger, names: dict[int, Overwrites], routes: dict[int, Overwrites],
                   policy: Overwrites | None) -> None:
    """The invariants, read from the file the killed server left (the WAL recovered on open)."""
    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        users = {r[0] for r in conn.execute("SELECT name FROM users")}
        missing = ledger.users - users
        assert not missing, f"acknowledged users lost: {sorted(missing)[:5]}"
        nodes = {r[0]: r[1:] for r in conn.execute("SELECT id, given_name, approved_routes, node_key, auth_key_id FROM nodes")}
        for node_id, w in names.items():
            assert nodes[node_id][0] in w.allowed(), (node_id, nodes[node_id][0], w)
        for node_id, w in routes.items():
            assert json.loads(nodes[node_id][1]) in w.allowed(), (node_id, nodes[node_id][1], w)
        if policy is not None:
            stored = conn.execute("SELECT data FROM policies ORDER BY id DESC LIMIT 1").fetchone()
            assert (stored[0] if stored else None) in policy.allowed()
        keys = {r[0]: r[1:] for r in conn.execute("SELECT id, used, reusable FROM pre_auth_keys")}
        for key_id in ledger.keys.values():
            assert key_id in keys, f"acknowledged key {key_id} lost"
        by_node_key = {v[2]: (node_id, v[3]) for node_id, v in nodes.items()}
        for node_key, key in ledger.registered.items():
            assert node_key in by_node_key, f"acknowledged registration with key {ledger.keys[key]} lost"
            assert by_node_key[node_key][1] == ledger.keys[key]
        uses: dict[int, int] = {}
        for _, _, _, auth_key_id in nodes.values():
            if auth_key_id is not None:
                uses[auth_key_id] = uses.get(auth_key_id, 0) + 1
        for key_id, (used, reusable) in keys.items():
            if not reusable:
                assert uses.get(key_id, 0) <= 1, f"single-use key {key_id} registered {uses[key_id]} nodes"
                assert used or not uses.get(key_id), f"key {key_id} registered a node but is not marked used"
    finally:
        conn.close()


async def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path, nursery):
    rng = random.Random(os.environ.get("TRIOSCALE_CRASH_SEED", "10"))
    cluster = Cluster(tmp_path)
    try:
        await cluster.start()
        public = await fetch_server_key(HOST, cluster.port)
        await admin(cluster.socket, "POST", "/api/v1/user", {"name": "crash"})
        reusable = (await admin(cluster.socket, "POST", "/api/v1/preauthkey",
                                {"user": "crash", "reusable": True, "expiration": EXPIRES}))["preAuthKey"]["key"]
        node_ids = []
        for i in range(NODES):
            c = SimClient(HOST, cluster.port, public, f"fixed{i}")
            await c.connect(nursery)
            doc = await c.register(reusable)
            assert doc["MachineAuthorized"]
            await c.aclose()
        node_ids = sorted(int(n["id"]) for n in (await admin(cluster.socket, "GET", "/api/v1/node"))["nodes"])
        ledger = Ledger()
        current_names = {n: f"fixed{i}" for i, n in enumerate(node_ids)}
        current_routes: dict[int, list] = {n: [] for n in node_ids}
        current_policy: str | None = None
        used_keys: list[str] = []
        t0 = time.monotonic()
        for it in range(ITERATIONS):
            if it:
                await cluster.start()
                await retry_cut_off(ledger, cluster, public, committed, nursery)
            if used_keys and it % 5 == 0:
                # A single-use key that registered a node before a crash stays used after it.
                key = rng.choice(used_keys)
                late = SimClient(HOST, cluster.port, public, f"late{it}")
                await late.connect(nursery)
                try:
                    await late.register(key)
                except Exception as e:
                    assert "already been used" in str(e), e
                else:
                    raise AssertionError(f"single-use key {ledger.keys[key]} was accepted again after a restart")
                finally:
                    await late.aclose()
            names = {n: Overwrites(current_names[n]) for n in node_ids}
            routes = {n: Overwrites(current_routes[n]) for n in node_ids}
            policy = Overwrites(current_policy)
            with trio.fail_after(30):  # after the kill every write in flight fails at once
                async with trio.open_nursery() as writers:
                    for n in node_ids:
                        writers.start_soon(overwrite, ledger, names[n], Rename(cluster.socket, n, it))
                        writers.start_soon(overwrite, ledger, routes[n], Approve(cluster.socket, n, it))
                    writers.start_soon(overwrite, ledger, policy, SetPolicy(cluster.socket, it))
                    writers.start_soon(create_users, ledger, cluster.socket, it)
                    for chain in range(2):
                        writers.start_soon(use_keys, ledger, cluster, public, f"{it}.{chain}", nursery)
                    await trio.sleep(rng.uniform(*WRITE_WINDOW))
                    cluster.kill()
            check_database(cluster.db, ledger, names, routes, policy)
            # What the store holds now is the starting point of the next round.
            conn = sqlite3.connect(cluster.db)
            for n, name, approved in conn.execute("SELECT id, given_name, approved_routes FROM nodes"):
                if n in current_names:
                    current_names[n], current_routes[n] = name, json.loads(approved)
            row = conn.execute("SELECT data FROM policies ORDER BY id DESC LIMIT 1").fetchone()
            current_policy = row[0] if row else None
            committed = {r[0] for r in conn.execute("SELECT node_key FROM nodes")}
            conn.close()
            used_keys = [k for k in ledger.registered.values()]
        elapsed = time.monotonic() - t0
        print(f"{ITERATIONS} kills in {elapsed:.0f} s: {ledger.writes} writes tried, {ledger.acks} acknowledged, "
              f"{len(ledger.registered)} registrations with single-use keys ({ledger.retried} retried after a kill, "
              f"{ledger.retried_committed} of them committed before it); acknowledged: {ledger.acks_by_kind}")
        # The kills came while writes of every kind were going on; most registrations were cut
        # off in flight (they queue behind the other writes), some were acknowledged first.
        assert ledger.acks > ITERATIONS and ledger.writes - ledger.acks > ITERATIONS
        assert len(ledger.registered) >= 5 and ledger.retried >= ITERATIONS / 4
        # Every kind of write was acknowledged many times (an API change would show here).
        kinds = ("Rename", "Approve", "SetPolicy", "user", "key", "registration")
        assert all(ledger.acks_by_kind.get(k, 0) >= 5 for k in kinds), ledger.acks_by_kind
        # A last start: the server comes up on what the last kill left, and serves it.
        await cluster.start()
        listed = await admin(cluster.socket, "GET", "/api/v1/user")
        assert ledger.users <= {u["name"] for u in listed["users"]}
    finally:
        cluster.close()
