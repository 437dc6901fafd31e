"""The store under test, on each engine: SQLite (a file in the test's directory) and PostgreSQL
(a new database on the session's real server, tests/pgserver.py).

Import the fixtures into a test module (``from tests.stores import new_store, open_store_again,
store_engine  # noqa: F401``) and every test that uses them runs once per engine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config.model import DatabaseConfig, PostgresConfig
from appliance.storage import Store, open_store
from tests.pgserver import Database, PostgresServer

ENGINES = ("sqlite", "postgres")


def postgres_config(db: Database, *, socket: bool = False, **changes) -> PostgresConfig:
    """trioscale's settings for ``db`` (TCP with the password, or the unix socket)."""
    values = dict(
        host=db.socket_dir if socket else db.host, port=db.port, name=db.name, user=db.user,
        password="" if socket else db.password, password_path=None, ssl="disable" if not socket else "",
        max_open_conns=4, max_idle_conns=2, conn_max_idle_time=60.0, lease_timeout=5.0,
    )
    values.update(changes)
    return PostgresConfig(**values)


def database_config(engine: str, tmp_path: Path | None, pg: PostgresConfig | None = None) -> DatabaseConfig:
    return DatabaseConfig(type=engine, sqlite_path=(tmp_path or Path("/nonexistent")) / "db.sqlite", write_ahead_log=True,
                          wal_autocheckpoint=1000, postgres=pg)


@pytest.fixture(params=ENGINES)
def store_engine(request) -> str:
    return request.param


@pytest.fixture
def pg_database():
    """A new, empty database on the session's PostgreSQL server (dropped after the test)."""
    server = PostgresServer.shared()
    db = server.new_database()
    yield db
    server.drop_database(db)


@pytest.fixture
def open_store_again(store_engine, tmp_path, request):
    """``open_store_again(**postgres_settings)``: open the test's database (the same one each
    call), as a restarted server would; every store opened is closed after the test."""
    pg_db = request.getfixturevalue("pg_database") if store_engine == "postgres" else None
    opened: list[Store] = []

    def reopen(**changes) -> Store:
        pg = postgres_config(pg_db, **changes) if pg_db is not None else None
        store = open_store(database_config(store_engine, tmp_path, pg))
        opened.append(store)
        return store

    reopen.database = pg_db  # type: ignore[attr-defined]
    yield reopen
    for store in opened:
        store.close()


@pytest.fixture
async def new_store(open_store_again) -> Store:
    """The test's store, empty, on each engine; it holds the active role (as a server would)."""
    store = open_store_again()
    assert await store.try_become_active("test", "nodekey-of-the-test") is not None
    return store
