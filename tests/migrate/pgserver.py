"""A real PostgreSQL server for the tests: Debian's ``postgresql`` (installed with apt-get when
missing), run as the unprivileged user ``nobody`` in a data directory of its own, listening on
127.0.0.1 only, with trust authentication for that loopback address."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.aptinstall import find_or_install
from tests.ports import free_port as _free_port


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




@contextlib.contextmanager
def running_postgres():
    """Yields a DSN for a fresh, empty database ``headscale`` on a new server; stops it after."""
    if os.geteuid() != 0:
        pytest.skip("the PostgreSQL fixture runs the server as `nobody`, which needs root")
    bindir = postgres_bindir()
    user = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="trioscale-pg-"))
    base.chmod(0o755)
    data = base / "data"
    data.mkdir()
    os.chown(data, user.pw_uid, user.pw_gid)
    as_nobody = ["runuser", "-u", "nobody", "--"]
    port = _free_port()
    subprocess.run([*as_nobody, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                    "--no-sync"], check=True, capture_output=True, timeout=120)
    log = open(base / "postgres.log", "wb")
    proc = subprocess.Popen(
        [*as_nobody, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(data),
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    try:
        import psycopg

        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
                    conn.execute("CREATE DATABASE headscale")
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"PostgreSQL did not start: {(base / 'postgres.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield {"host": "127.0.0.1", "port": port, "user": "postgres", "name": "headscale",
               "dsn": f"host=127.0.0.1 port={port} user=postgres dbname=headscale"}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(base, ignore_errors=True)
