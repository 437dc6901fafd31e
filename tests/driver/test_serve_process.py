"""`trioscale serve` as a real process (issue 10, item 2): faults injected into its tasks are
logged and restarted while it serves on; an unrecoverable database error stops it with its own
status and one line; "cannot start" is one line naming what to fix. Also `trioscale backup`
online (through the running server) and offline (no server).

Faults are injected with a sitecustomize module on the server's PYTHONPATH, which wraps the
real code before the server starts: the process, its sockets and its database are real.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from appliance.serve import EXIT_CANNOT_START, EXIT_STORE_FAILED
from appliance.storage.migrations import LATEST

REPO = Path(__file__).resolve().parents[2]
from tests.ports import free_port

HOST = "127.0.0.1"

INJECT = '''
import sqlite3
import trio

from appliance import serve as _serve
from appliance.storage import store as _store
from appliance.tailnet.haprobe import HAProber
from appliance.tailnet.policy import PolicyManager

_real_probe_run = HAProber.run
_runs = {"prober": 0, "recompiler": 0, "admin": 0}
_real_serve_unix = _serve.serve_unix


async def _flaky_serve_unix(path, mode, handler, *, task_status=trio.TASK_STATUS_IGNORED):
    """The admin socket's accept loop dies once, its listening socket closed under it."""
    _runs["admin"] += 1
    if _runs["admin"] == 1:
        listener = await _serve.open_unix_listener(path, mode)
        task_status.started()
        await trio.sleep(0.3)
        await listener.aclose()
        raise OSError("injected fault in the admin socket's accept loop")
    await _real_serve_unix(path, mode, handler, task_status=task_status)


_serve.serve_unix = _flaky_serve_unix


async def _flaky_probe_run(self, *, task_status=trio.TASK_STATUS_IGNORED):
    _runs["prober"] += 1
    if _runs["prober"] <= 2:
        task_status.started()
        await trio.sleep(0.1)
        raise RuntimeError("injected fault in the HA prober")
    await _real_probe_run(self, task_status=task_status)


HAProber.run = _flaky_probe_run

_real_batch = PolicyManager._recompile_batch


async def _flaky_batch(self):
    _runs["recompiler"] += 1
    if _runs["recompiler"] == 1:
        raise KeyError("injected fault in the policy recompiler")
    await _real_batch(self)


PolicyManager._recompile_batch = _flaky_batch


class _DiskThatFails:
    """Writes of the user named fail-the-disk meet an I/O error, as on a dying disk."""

    def __init__(self, conn):
        self._conn = conn

    def execute(self, sql, *args):
        if sql.startswith("INSERT INTO users") and args and args[0][0] == "fail-the-disk":
            e = sqlite3.OperationalError("disk I/O error")
            e.sqlite_errorcode = sqlite3.SQLITE_IOERR_WRITE
            raise e
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


_real_init = _store.Store.__init__


def _init(self, where):
    _real_init(self, where)
    self._engine.conn = _DiskThatFails(self._engine.conn)


_store.Store.__init__ = _init
'''




class Proc:
    def __init__(self, tmp: Path, inject: bool = True, **extra) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.metrics_port = free_port()
        self.config = tmp / "config.yaml"
        self.config.write_text(yaml.safe_dump({
            "server_url": f"http://{HOST}:{self.port}",
            "listen_addr": f"{HOST}:{self.port}",
            "metrics_listen_addr": f"{HOST}:{self.metrics_port}",
            "data_dir": str(tmp / "data"),
            "unix_socket": str(tmp / "data" / "trioscale.sock"),
            "derp": {"server": {"enabled": False}},
            "policy": {"mode": "database"},
            "log": {"level": "info"},
            **extra,
        }))
        self.inject = tmp / "inject"
        self.inject.mkdir(exist_ok=True)
        if inject:
            (self.inject / "sitecustomize.py").write_text(textwrap.dedent(INJECT))
        self.log = tmp / "server.log"
        self.proc: subprocess.Popen | None = None

    def env(self, inject: bool) -> dict:
        path = f"{self.inject}{os.pathsep}{REPO}" if inject else str(REPO)
        return {**os.environ, "PYTHONPATH": path}

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "serve", "-c", str(self.config)], cwd=REPO,
            env=self.env(True), stdout=subprocess.PIPE, stderr=open(self.log, "wb"), text=True,
        )
        self.wait_for(lambda: self.cli("users", "list").returncode == 0, "the server to answer")

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "appliance", "-c", str(self.config), *args], cwd=REPO,
                              env=self.env(False), capture_output=True, text=True, timeout=60)

    def wait_for(self, fn, what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not fn():
            assert self.proc is None or self.proc.poll() is None, f"server exited: {self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.log.read_text()[-2000:]}"
            time.sleep(0.1)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def proc(tmp_path):
    p = Proc(tmp_path)
    yield p
    if p.proc is not None and p.proc.poll() is None:
        p.proc.kill()
        p.proc.wait()


def test_faults_in_tasks_are_restarted_and_the_process_serves_on(proc, tmp_path):
    proc.start()
    log = lambda: proc.log.read_text()  # noqa: E731
    # The admin socket's accept loop failed once and was bound again (the CLI answers).
    assert "task admin socket failed after" in log() and "task admin socket restarted" in log()
    proc.wait_for(lambda: log().count("task HA route prober restarted") >= 2, "two prober restarts")
    assert log().count("task HA route prober failed") == 2
    assert "RuntimeError: injected fault in the HA prober; restarting it in 0.5s" in log()
    # The recompiler fails once (on the first change it has to compile) and takes the batch again.
    assert proc.cli("users", "create", "alice").returncode == 0
    assert proc.cli("policy", "set", "-f", str(_policy(tmp_path))).returncode == 0
    proc.wait_for(lambda: "task policy recompiler restarted" in log(), "the recompiler's restart")
    assert "KeyError: 'injected fault in the policy recompiler'" in log()
    metrics = proc.metrics()
    assert 'trioscale_task_restarts_total{task="HA route prober"} 2' in metrics
    assert 'trioscale_task_restarts_total{task="policy recompiler"} 1' in metrics
    assert 'trioscale_task_restarts_total{task="admin socket"} 1' in metrics
    assert proc.proc.poll() is None and proc.cli("users", "list").returncode == 0

    # Online backup through the running server, then offline once it is stopped.
    online = proc.cli("backup", str(tmp_path / "online.sqlite"))
    assert online.returncode == 0 and "online" in online.stdout, online.stderr
    assert proc.cli("backup", str(tmp_path / "online.sqlite")).returncode != 0  # never overwrites
    assert proc.stop() == 0
    offline = proc.cli("backup", str(tmp_path / "offline.sqlite"))
    assert offline.returncode == 0 and "no server was running" in offline.stdout, offline.stderr
    for copy in ("online.sqlite", "offline.sqlite"):
        conn = sqlite3.connect(tmp_path / copy)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert [r[0] for r in conn.execute("SELECT name FROM users")] == ["alice"]
        conn.close()


def _policy(tmp_path: Path) -> Path:
    p = tmp_path / "policy.hujson"
    p.write_text('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}')
    return p


def test_an_unrecoverable_database_error_stops_the_process_and_says_why(proc):
    proc.start()
    proc.cli("users", "create", "fail-the-disk")
    rc = proc.proc.wait(20)
    assert rc == EXIT_STORE_FAILED
    err = proc.log.read_text().strip().splitlines()
    assert err[-1].startswith("trioscale: stopped: the database failed:") and "disk I/O error" in err[-1]
    assert not (proc.tmp / "data" / "trioscale.sock").exists()


def test_cannot_start_is_one_line_with_its_own_status(tmp_path):
    busy = socket.socket()
    busy.bind((HOST, 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        p = Proc(tmp_path / "busy", inject=False)
        p.config.write_text(p.config.read_text().replace(f"{HOST}:{p.port}", f"{HOST}:{port}"))
        res = subprocess.run([sys.executable, "-m", "appliance", "serve", "-c", str(p.config)], cwd=REPO,
                             env=p.env(False), capture_output=True, text=True, timeout=60)
    finally:
        busy.close()
    assert res.returncode == EXIT_CANNOT_START
    line = res.stderr.strip().splitlines()[-1]
    assert line == (f"trioscale: cannot start: listen_addr {HOST}:{port}: cannot listen: Address already in use; "
                    "free the port or change listen_addr")

    p = Proc(tmp_path / "newer", inject=False)
    (tmp_path / "newer" / "data").mkdir()
    db = tmp_path / "newer" / "data" / "db.sqlite"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version={LATEST + 1}")
    conn.close()
    res = subprocess.run([sys.executable, "-m", "appliance", "serve", "-c", str(p.config)], cwd=REPO,
                         env=p.env(False), capture_output=True, text=True, timeout=60)
    assert res.returncode == EXIT_CANNOT_START
    assert res.stderr.strip().splitlines()[-1].startswith("trioscale: cannot start:")
    assert "newer than this trioscale knows" in res.stderr
