"""A real PostgreSQL server for the tests: Debian's ``postgresql`` (installed with apt-get when
missing), run as the unprivileged user ``nobody`` in a data directory of its own, listening on
127.0.0.1 and on a unix socket in a directory of its own (reachable from a test's network
namespace, which has its own loopback).

Authentication: the superuser ``postgres`` is trusted (it makes the databases); the role
``trioscale`` must give its password (``PASSWORD``, SCRAM) over TCP and is trusted over the
socket. One server per test session (``PostgresServer.shared()``); each test takes a new empty
database of its own (``new_database``).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.aptinstall import find_or_install
from tests.ports import free_port

PASSWORD = "pg-test-password"  # the role trioscale's, over TCP
ROLE = "trioscale"


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def postgres_bindir() -> Path:
    if _bindir() is None:
        find_or_install("pg_ctlcluster", "postgresql")
    bindir = _bindir()
    if bindir is None:
        pytest.skip("Debian's postgresql is installed but no /usr/lib/postgresql/*/bin/postgres was found")
    return bindir


@dataclass(frozen=True)
class Database:
    """One database of the server, owned by ``trioscale``."""

    host: str  # 127.0.0.1
    port: int
    socket_dir: str  # the unix socket's directory (a host for libpq)
    name: str
    user: str = ROLE
    password: str = PASSWORD

    @property
    def dsn(self) -> str:
        """Over TCP, with the password."""
        return f"host={self.host} port={self.port} user={self.user} password={self.password} dbname={self.name}"

    @property
    def superuser_dsn(self) -> str:
        return f"host={self.socket_dir} port={self.port} user=postgres dbname={self.name}"

    def config(self, *, socket: bool = False, **extra) -> dict:
        """trioscale's ``database`` section for this database (TCP with the password, or the socket)."""
        pg = {"host": self.socket_dir if socket else self.host, "port": self.port, "name": self.name,
              "user": self.user, "ssl": False}
        if not socket:
            pg["pass"] = self.password
        pg.update(extra)
        return {"type": "postgres", "postgres": pg}

    def connect(self):
        """A superuser connection (autocommit) to this database, for a test to look inside."""
        import psycopg

        return psycopg.connect(self.superuser_dsn, autocommit=True)


class PostgresServer:
    _shared: "PostgresServer | None" = None

    def __init__(self) -> None:
        if os.geteuid() != 0:
            pytest.skip("the PostgreSQL fixture runs the server as `nobody`, which needs root")
        bindir = postgres_bindir()
        user = pwd.getpwnam("nobody")
        self.base = Path(tempfile.mkdtemp(prefix="trioscale-pg-"))
        self.base.chmod(0o755)
        self.data = self.base / "data"
        self.socket_dir = self.base / "sock"
        for d in (self.data, self.socket_dir):
            d.mkdir()
            os.chown(d, user.pw_uid, user.pw_gid)
        self.socket_dir.chmod(0o755)
        as_nobody = ["runuser", "-u", "nobody", "--"]
        self.port = free_port()
        subprocess.run([*as_nobody, str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                        "--no-sync"], check=True, capture_output=True, timeout=120)
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        self.log_path = self.base / "postgres.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*as_nobody, str(bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-k", str(self.socket_dir), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
             "-c", "max_connections=200"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        self._names = itertools.count(1)
        try:
            self._wait_up()
            self.admin(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        except BaseException:
            self.stop()
            raise

    def _wait_up(self) -> None:
        import psycopg

        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(self._dsn("postgres"), autocommit=True, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"PostgreSQL did not start: {self.log_path.read_text()[-2000:]}")
                time.sleep(0.3)

    def _dsn(self, dbname: str) -> str:
        return f"host={self.socket_dir} port={self.port} user=postgres dbname={dbname}"

    def admin(self, sql: str, dbname: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self._dsn(dbname), autocommit=True) as conn:
            conn.execute(sql)

    def new_database(self, name: str | None = None, owner: str = ROLE) -> Database:
        """A new, empty database (owned by ``owner``)."""
        name = name or f"t{os.getpid()}_{next(self._names)}"
        self.admin(f'CREATE DATABASE "{name}" OWNER {owner}')
        return Database("127.0.0.1", self.port, str(self.socket_dir), name)

    def drop_database(self, db: Database) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        shutil.rmtree(self.base, ignore_errors=True)

    @classmethod
    def shared(cls) -> "PostgresServer":
        """The session's server, started on first use and stopped when the tests end."""
        if cls._shared is None or cls._shared.proc.poll() is not None:
            cls._shared = cls()
            atexit.register(cls._shared.stop)
        return cls._shared


@contextlib.contextmanager
def running_postgres():
    """A fresh, empty database ``headscale`` on a new server, as a dict (host, port, user, name,
    dsn; the superuser, trusted over TCP); stops the server after."""
    server = PostgresServer()
    try:
        server.admin("CREATE DATABASE headscale")
        yield {"host": "127.0.0.1", "port": server.port, "user": "postgres", "name": "headscale",
               "dsn": f"host=127.0.0.1 port={server.port} user=postgres dbname=headscale"}
    finally:
        server.stop()
