"""`trioscale serve` on a real PostgreSQL, as a process: what the database can do to it and what
an admin does around it (issue 16).

- the database drops the server's sessions (a PostgreSQL restart, a network cut): the server
  steps down to standby instead of exiting, and takes the active role back (a new epoch);
- `backup` with the server running and without it, and `restore` into PostgreSQL, which keeps
  what it replaces as an SQLite file;
- a server whose Noise key is not the tailnet's, or a database that holds other tables, cannot
  start, and says why;
- SIGHUP reloads the policy of the term being served: a standby has none and keeps running, and
  a server that took over reloads its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from appliance.serve import EXIT_CANNOT_START
from tests.pgserver import PostgresServer
from tests.stores import pg_database  # noqa: F401

from .test_serve_process import HOST, REPO, free_port


class PgServer:
    """A trioscale process on ``db`` (over the unix socket)."""

    def __init__(self, tmp: Path, db, name: str, **extra) -> None:
        self.dir = tmp / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = self.dir / "config.yaml"
        self.config.write_text(yaml.safe_dump({
            "server_url": f"http://{HOST}:{self.port}", "listen_addr": f"{HOST}:{self.port}",
            "data_dir": str(self.dir / "data"), "unix_socket": str(self.dir / "data" / "trioscale.sock"),
            "derp": {"server": {"enabled": False}}, "log": {"level": "info"},
            "database": db.config(socket=True, lease_timeout="2s"), **extra,
        }))
        self.log = self.dir / "server.log"
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict:
        return {**os.environ, "PYTHONPATH": str(REPO)}

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "-c", str(self.config)], cwd=REPO,
                                     env=self.env(), stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "appliance", "-c", str(self.config), *args], cwd=REPO,
                              env=self.env(), capture_output=True, text=True, timeout=60)

    def role(self) -> str | None:
        p = self.cli("status", "-o", "json")
        return json.loads(p.stdout)["role"] if p.returncode == 0 else None

    def wait_for(self, fn, what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not fn():
            assert self.proc.poll() is None, f"server exited: {self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.log.read_text()[-2000:]}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def db(pg_database):
    return pg_database


@pytest.fixture
def server(tmp_path, db):
    s = PgServer(tmp_path, db, "one")
    yield s
    s.stop()


def test_a_dropped_database_session_is_a_step_down_not_an_exit(server, db):
    server.start()
    server.wait_for(lambda: server.role() == "active", "the server to be active")
    assert server.cli("users", "create", "alice").returncode == 0
    epoch = json.loads(server.cli("status", "-o", "json").stdout)["epoch"]
    with db.connect() as conn:  # what a PostgreSQL restart does to every session
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
                     " AND pid <> pg_backend_pid()")
    server.wait_for(lambda: json.loads(server.cli("status", "-o", "json").stdout or "{}").get("epoch", 0) > epoch,
                    "the server to take the active role back")
    assert server.role() == "active" and server.proc.poll() is None
    assert "this server lost the active role" in server.log.read_text()
    assert server.cli("users", "create", "bob").returncode == 0
    assert [u["name"] for u in json.loads(server.cli("users", "list", "-o", "json").stdout)] == ["alice", "bob"]


def test_backup_and_restore_on_postgresql(server, tmp_path):
    server.start()
    server.wait_for(lambda: server.role() == "active", "the server to be active")
    server.cli("users", "create", "in-the-backup")
    online = tmp_path / "online.sqlite"
    res = server.cli("backup", str(online))
    assert res.returncode == 0 and "taken online by the running server" in res.stdout, res.stderr
    server.cli("users", "create", "after-the-backup")
    refused = server.cli("restore", str(online))
    assert refused.returncode != 0 and "stop it first" in refused.stderr
    server.stop()
    offline = tmp_path / "offline.sqlite"
    res = server.cli("backup", str(offline))
    assert res.returncode == 0 and "no server was running here" in res.stdout, res.stderr
    assert _users(offline) == {"in-the-backup", "after-the-backup"}
    assert offline.stat().st_mode & 0o777 == 0o600

    res = server.cli("restore", str(online))
    assert res.returncode == 0 and "the previous database is kept as" in res.stdout, res.stderr
    kept = Path(res.stdout.rsplit("kept as ", 1)[1].strip())
    assert _users(kept) == {"in-the-backup", "after-the-backup"}
    assert _users(online) == {"in-the-backup"}  # the backup itself is left as it was
    server.start()
    server.wait_for(lambda: server.role() == "active", "the server to be active")
    names = [u["name"] for u in json.loads(server.cli("users", "list", "-o", "json").stdout)]
    assert names == ["in-the-backup"]
    # The ID the user made after the backup had stays retired.
    server.cli("users", "create", "new")
    ids = {u["name"]: int(u["id"]) for u in json.loads(server.cli("users", "list", "-o", "json").stdout)}
    assert ids["new"] == 3


def _users(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM users")}
    finally:
        conn.close()


def test_a_server_with_another_noise_key_or_a_foreign_database_cannot_start(server, db, tmp_path):
    server.start()
    server.wait_for(lambda: server.role() == "active", "the server to be active")
    other = PgServer(tmp_path, db, "other")  # never given the tailnet's key: it makes its own
    other.start()
    assert other.proc.wait(30) == EXIT_CANNOT_START
    assert "Noise key is not the one the tailnet" in other.log.read_text()
    server.stop()

    foreign = PostgresServer.shared().new_database()
    try:
        with foreign.connect() as conn:
            conn.execute("CREATE TABLE nodes (id bigint)")
        stranger = PgServer(tmp_path, foreign, "stranger")
        stranger.start()
        assert stranger.proc.wait(30) == EXIT_CANNOT_START
        assert "holds tables that are not trioscale's" in stranger.log.read_text()
    finally:
        PostgresServer.shared().drop_database(foreign)


ALLOW_ALL = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}\n'
ONLY_WEB = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:443"]}]}\n'


def test_sighup_reloads_the_policy_of_the_term_being_served(db, tmp_path):
    policy = tmp_path / "policy.hujson"
    policy.write_text(ALLOW_ALL)
    extra = {"policy": {"mode": "file", "path": str(policy)}}
    a = PgServer(tmp_path, db, "a", **extra)
    a.start()
    b = None
    try:
        a.wait_for(lambda: a.role() == "active", "the first server to be active")
        b = PgServer(tmp_path, db, "b", **extra)
        (b.dir / "data").mkdir(parents=True, exist_ok=True)
        shutil.copy(a.dir / "data" / "noise_private.key", b.dir / "data" / "noise_private.key")
        b.start()
        b.wait_for(lambda: b.role() == "standby", "the second server to stand by")
        b.proc.send_signal(signal.SIGHUP)
        b.wait_for(lambda: "received SIGHUP on a standby" in b.log.read_text(), "the standby to take the SIGHUP")
        a.proc.kill()
        a.proc.wait()
        b.wait_for(lambda: b.role() == "active", "the standby to take over")
        mtime = policy.stat().st_mtime
        policy.write_text(ONLY_WEB)
        os.utime(policy, (mtime, mtime))  # same mtime: only SIGHUP, not the file watcher, picks it up
        b.proc.send_signal(signal.SIGHUP)
        b.wait_for(lambda: b.cli("policy", "get").stdout == ONLY_WEB, "the new active server to reload its policy")
        assert b.proc.poll() is None and "Traceback" not in b.log.read_text()
    finally:
        a.stop()
        if b is not None:
            b.stop()
