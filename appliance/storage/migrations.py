"""Forward-only schema migrations, applied at start.

Append a new entry to MIGRATIONS for every schema change, never edit an old one, and keep
schema.sql equal to the result. ``PRAGMA user_version`` holds how many have been applied.
"""

from __future__ import annotations

# Migration 1 is the first schema, frozen as it was.
_SCHEMA_1 = """
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL DEFAULT '',
    email TEXT NOT NULL DEFAULT '',
    provider TEXT NOT NULL DEFAULT '',
    provider_id TEXT NOT NULL DEFAULT '',
    profile_pic_url TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
);
CREATE TABLE pre_auth_keys (
    id INTEGER PRIMARY KEY,
    prefix TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL,
    user_id INTEGER REFERENCES users(id) ON DELETE CASCADE,
    reusable INTEGER NOT NULL DEFAULT 0,
    ephemeral INTEGER NOT NULL DEFAULT 0,
    used INTEGER NOT NULL DEFAULT 0,
    tags TEXT NOT NULL DEFAULT '[]',
    created_at TEXT NOT NULL,
    expiration TEXT
);
CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY,
    prefix TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expiration TEXT,
    last_seen TEXT
);
CREATE TABLE nodes (
    id INTEGER PRIMARY KEY,
    machine_key TEXT NOT NULL,
    node_key TEXT NOT NULL UNIQUE,
    disco_key TEXT NOT NULL DEFAULT '',
    ipv4 TEXT UNIQUE,
    ipv6 TEXT UNIQUE,
    hostname TEXT NOT NULL DEFAULT '',
    given_name TEXT NOT NULL UNIQUE,
    user_id INTEGER REFERENCES users(id) ON DELETE CASCADE,
    auth_key_id INTEGER REFERENCES pre_auth_keys(id) ON DELETE SET NULL,
    tags TEXT NOT NULL DEFAULT '[]',
    hostinfo TEXT NOT NULL DEFAULT '{}',
    endpoints TEXT NOT NULL DEFAULT '[]',
    expiry TEXT,
    last_seen TEXT,
    created_at TEXT NOT NULL,
    approved_routes TEXT NOT NULL DEFAULT '[]',
    ephemeral INTEGER NOT NULL DEFAULT 0,
    register_method TEXT NOT NULL DEFAULT 'authkey'
);
CREATE INDEX nodes_machine_key ON nodes (machine_key);
CREATE TABLE policies (
    id INTEGER PRIMARY KEY,
    data TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""

MIGRATIONS: list[str] = [
    _SCHEMA_1,
    # 2: settings an admin changes at run time through the API (DNS, DERP regions), one JSON
    # document per name; config.yaml gives the rest.
    """
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
""",
]

LATEST = len(MIGRATIONS)
