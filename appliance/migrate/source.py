"""Reading a Headscale database, SQLite or PostgreSQL, as plain rows.

Headscale's tables were made by gorm, whose column types differ between the two engines
(SQLite: text times, 0/1 booleans, text or blob hashes; PostgreSQL: timestamptz, boolean,
bytea). A source hands out rows as dicts of whatever the driver returns; ``values`` turns
each into one Python type.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Protocol

from .errors import ImportRefused


class Source(Protocol):
    description: str

    def tables(self) -> set[str]: ...

    def columns(self, table: str) -> set[str]: ...

    def rows(self, table: str) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


class _Closing:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SQLiteSource(_Closing):
    """A Headscale SQLite file, opened read-only (Headscale may still be running for a dry run)."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise ImportRefused(f"{path}: no such database file")
        self.description = f"SQLite {path}"
        try:
            self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("BEGIN")  # one consistent read of every table
            self._tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as e:
            raise ImportRefused(f"{path}: cannot read it as an SQLite database: {e}") from None

    def tables(self) -> set[str]:
        return set(self._tables)

    def columns(self, table: str) -> set[str]:
        if table not in self._tables:
            return set()
        return {r[1] for r in self._conn.execute(f'PRAGMA table_info("{table}")')}

    def rows(self, table: str) -> list[dict[str, Any]]:
        if table not in self._tables:
            return []
        return [dict(r) for r in self._conn.execute(f'SELECT * FROM "{table}"')]

    def close(self) -> None:
        self._conn.close()


class PostgresSource(_Closing):
    """A Headscale PostgreSQL database, read in one read-only transaction."""

    def __init__(self, dsn: str) -> None:
        try:
            import psycopg
            from psycopg.rows import dict_row
        except ImportError:
            raise ImportRefused("reading PostgreSQL needs the psycopg package (pip install 'psycopg[binary]')") from None
        try:
            self._conn = psycopg.connect(dsn, row_factory=dict_row, connect_timeout=15)
            self._conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            info = self._conn.info
            self.description = f"PostgreSQL database {info.dbname!r} on {info.host}:{info.port}"
            self._tables = {
                r["table_name"] for r in self._conn.execute(
                    "SELECT table_name FROM information_schema.tables"
                    " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'")
            }
        except psycopg.Error as e:
            raise ImportRefused(f"cannot read the PostgreSQL database: {str(e).strip()}") from None

    def tables(self) -> set[str]:
        return set(self._tables)

    def columns(self, table: str) -> set[str]:
        if table not in self._tables:
            return set()
        return {
            r["column_name"] for r in self._conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = %s", (table,))
        }

    def rows(self, table: str) -> list[dict[str, Any]]:
        if table not in self._tables:
            return []
        from psycopg import sql

        return list(self._conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table))))

    def close(self) -> None:
        self._conn.close()
