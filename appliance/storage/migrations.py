"""Forward-only schema migrations, applied at start.

Append a new entry to MIGRATIONS for every schema change, never edit an old one, and keep
schema.sql equal to the result (tests/unit/test_storage.py checks it). ``PRAGMA user_version``
holds how many have been applied. The runner (store.open_database) runs each migration in one
transaction with foreign keys off and ``legacy_alter_table`` on, so a table can be rebuilt by
renaming it away, creating it anew and copying its rows; it checks the foreign keys before it
commits.
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

_V3 = """\
-- 3: IDs are never reused (issue 10): AUTOINCREMENT keeps the highest ID ever handed out in
-- sqlite_sequence, so the ID of a deleted node, user or key stays retired, as in Headscale's
-- schema. SQLite cannot add AUTOINCREMENT to a table: each is rebuilt. The runner turns
-- foreign keys off and legacy_alter_table on around a migration, so the rename leaves the
-- other tables' REFERENCES naming the new table, and checks the foreign keys before COMMIT.
ALTER TABLE users RENAME TO users_v1;
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL DEFAULT '',
    email TEXT NOT NULL DEFAULT '',
    provider TEXT NOT NULL DEFAULT '',
    provider_id TEXT NOT NULL DEFAULT '',
    profile_pic_url TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
);
INSERT INTO users (id, name, display_name, email, provider, provider_id, profile_pic_url, created_at)
    SELECT id, name, display_name, email, provider, provider_id, profile_pic_url, created_at FROM users_v1;
DROP TABLE users_v1;
ALTER TABLE pre_auth_keys RENAME TO pre_auth_keys_v1;
CREATE TABLE pre_auth_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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
INSERT INTO pre_auth_keys (id, prefix, hash, user_id, reusable, ephemeral, used, tags, created_at, expiration)
    SELECT id, prefix, hash, user_id, reusable, ephemeral, used, tags, created_at, expiration FROM pre_auth_keys_v1;
DROP TABLE pre_auth_keys_v1;
ALTER TABLE api_keys RENAME TO api_keys_v1;
CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prefix TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expiration TEXT,
    last_seen TEXT
);
INSERT INTO api_keys (id, prefix, hash, created_at, expiration, last_seen)
    SELECT id, prefix, hash, created_at, expiration, last_seen FROM api_keys_v1;
DROP TABLE api_keys_v1;
ALTER TABLE nodes RENAME TO nodes_v1;
CREATE TABLE nodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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
INSERT INTO nodes (id, machine_key, node_key, disco_key, ipv4, ipv6, hostname, given_name, user_id, auth_key_id, tags, hostinfo, endpoints, expiry, last_seen, created_at, approved_routes, ephemeral, register_method)
    SELECT id, machine_key, node_key, disco_key, ipv4, ipv6, hostname, given_name, user_id, auth_key_id, tags, hostinfo, endpoints, expiry, last_seen, created_at, approved_routes, ephemeral, register_method FROM nodes_v1;
DROP TABLE nodes_v1;
CREATE INDEX nodes_machine_key ON nodes (machine_key);
"""

_V4 = """\
-- 4: sign-in for people (issue 11). Users get a role (the first user owns the tailnet) and the
-- groups their identity provider gave at their last login, and one provider identity
-- (issuer/subject) is one user; nodes wait for an admin's approval when
-- node.approval_required is on, and a pre-auth key may register them pre-approved.
ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'member';
ALTER TABLE users ADD COLUMN groups TEXT NOT NULL DEFAULT '[]';
UPDATE users SET role = 'owner' WHERE id = (SELECT MIN(id) FROM users);
ALTER TABLE nodes ADD COLUMN authorized INTEGER NOT NULL DEFAULT 1;
ALTER TABLE pre_auth_keys ADD COLUMN pre_approved INTEGER NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX users_provider_id ON users (provider_id) WHERE provider_id != '';
"""

_V5 = """\
-- 5: the audit log, webhooks and their delivery log, and the coarse samples the console's
-- charts draw (issue 12). Times are UTC ISO 8601 to the second, so text order is time order.
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor_kind TEXT NOT NULL,
    actor_id TEXT NOT NULL DEFAULT '',
    actor_name TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '',
    operation TEXT NOT NULL,
    target_kind TEXT NOT NULL DEFAULT '',
    target_id TEXT NOT NULL DEFAULT '',
    target_name TEXT NOT NULL DEFAULT '',
    node_id INTEGER,
    user_id INTEGER,
    before TEXT,
    after TEXT,
    request TEXT
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_node ON audit_log (node_id) WHERE node_id IS NOT NULL;
CREATE INDEX audit_log_user ON audit_log (user_id) WHERE user_id IS NOT NULL;
CREATE TABLE webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    events TEXT NOT NULL DEFAULT '["*"]',
    created_at TEXT NOT NULL
);
CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    node_id INTEGER,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    response_status INTEGER,
    last_error TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook, id);
CREATE UNIQUE INDEX webhook_deliveries_event ON webhook_deliveries (webhook, event_id);
CREATE TABLE stats_samples (
    step INTEGER NOT NULL,
    at TEXT NOT NULL,
    nodes_online INTEGER NOT NULL,
    nodes_total INTEGER NOT NULL,
    map_sessions INTEGER NOT NULL,
    relayed_bytes INTEGER NOT NULL,
    registrations INTEGER NOT NULL,
    PRIMARY KEY (step, at)
);
"""

_CONSOLE = """\
-- 6: the web console (issue 12). One-time login links and sessions, each kept as the SHA-256
-- of its secret (a stolen database signs nobody in); a user's links and sessions go with the
-- user. Who saved each policy version, for its history.
CREATE TABLE console_links (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash TEXT NOT NULL UNIQUE,
    user_id INTEGER REFERENCES users(id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE TABLE console_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash TEXT NOT NULL UNIQUE,
    user_id INTEGER REFERENCES users(id) ON DELETE CASCADE,
    method TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
ALTER TABLE policies ADD COLUMN author TEXT NOT NULL DEFAULT '';
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
    _V3,
    _V4,
    _V5,
    _CONSOLE,
]

LATEST = len(MIGRATIONS)


# --- PostgreSQL ----------------------------------------------------------------------------
#
# PostgreSQL's schema is numbered as SQLite's: version N holds the same tables, columns, NOT
# NULLs, defaults and keys as SQLite's version N, in PostgreSQL's types (identity IDs, which
# never go back; timestamptz; boolean), so that a snapshot copies between them unchanged
# (trioscale db migrate). Its first version is 3. Append an entry for every SQLite migration
# that follows, and keep schema_postgres.sql equal to the result (tests/unit/test_storage.py
# checks both). The runner (postgres.migrate) runs them in one transaction under an advisory
# lock, so two servers starting together migrate once; the version is in trioscale_schema.

FIRST_POSTGRES = 3

_PG_V3 = """\
CREATE TABLE users (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    display_name text NOT NULL DEFAULT '',
    email text NOT NULL DEFAULT '',
    provider text NOT NULL DEFAULT '',
    provider_id text NOT NULL DEFAULT '',
    profile_pic_url text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL
);
CREATE TABLE pre_auth_keys (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    prefix text NOT NULL UNIQUE,
    hash text NOT NULL,
    user_id bigint REFERENCES users(id) ON DELETE CASCADE,
    reusable boolean NOT NULL DEFAULT false,
    ephemeral boolean NOT NULL DEFAULT false,
    used boolean NOT NULL DEFAULT false,
    tags text NOT NULL DEFAULT '[]',
    created_at timestamptz NOT NULL,
    expiration timestamptz
);
CREATE TABLE api_keys (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    prefix text NOT NULL UNIQUE,
    hash text NOT NULL,
    created_at timestamptz NOT NULL,
    expiration timestamptz,
    last_seen timestamptz
);
CREATE TABLE nodes (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    machine_key text NOT NULL,
    node_key text NOT NULL UNIQUE,
    disco_key text NOT NULL DEFAULT '',
    ipv4 text UNIQUE,
    ipv6 text UNIQUE,
    hostname text NOT NULL DEFAULT '',
    given_name text NOT NULL UNIQUE,
    user_id bigint REFERENCES users(id) ON DELETE CASCADE,
    auth_key_id bigint REFERENCES pre_auth_keys(id) ON DELETE SET NULL,
    tags text NOT NULL DEFAULT '[]',
    hostinfo text NOT NULL DEFAULT '{}',
    endpoints text NOT NULL DEFAULT '[]',
    expiry timestamptz,
    last_seen timestamptz,
    created_at timestamptz NOT NULL,
    approved_routes text NOT NULL DEFAULT '[]',
    ephemeral boolean NOT NULL DEFAULT false,
    register_method text NOT NULL DEFAULT 'authkey'
);
CREATE INDEX nodes_machine_key ON nodes (machine_key);
CREATE TABLE policies (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    data text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE settings (
    name text PRIMARY KEY,
    value text NOT NULL,
    updated_at timestamptz NOT NULL
);
-- PostgreSQL only: the servers sharing the database. One row: the Noise public key the tailnet
-- is served with (every server must hold its private key), and the active server's lease
-- (whose epoch counts how often the role changed hands).
CREATE TABLE trioscale_cluster (
    id integer PRIMARY KEY CHECK (id = 1),
    noise_public text NOT NULL DEFAULT '',
    epoch bigint NOT NULL DEFAULT 0,
    active_name text NOT NULL DEFAULT '',
    active_since timestamptz
);
INSERT INTO trioscale_cluster (id) VALUES (1);
"""

_PG_V4 = """\
-- 4: sign-in for people (SQLite's migration 4).
ALTER TABLE users ADD COLUMN role text NOT NULL DEFAULT 'member';
ALTER TABLE users ADD COLUMN groups text NOT NULL DEFAULT '[]';
UPDATE users SET role = 'owner' WHERE id = (SELECT MIN(id) FROM users);
ALTER TABLE nodes ADD COLUMN authorized boolean NOT NULL DEFAULT true;
ALTER TABLE pre_auth_keys ADD COLUMN pre_approved boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX users_provider_id ON users (provider_id) WHERE provider_id <> '';
"""

_PG_V5 = """\
-- 5: the audit log, webhooks, their deliveries and chart samples (SQLite's migration 5).
CREATE TABLE audit_log (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL,
    actor_kind text NOT NULL,
    actor_id text NOT NULL DEFAULT '',
    actor_name text NOT NULL DEFAULT '',
    source text NOT NULL DEFAULT '',
    operation text NOT NULL,
    target_kind text NOT NULL DEFAULT '',
    target_id text NOT NULL DEFAULT '',
    target_name text NOT NULL DEFAULT '',
    node_id bigint,
    user_id bigint,
    before text,
    after text,
    request text
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_node ON audit_log (node_id) WHERE node_id IS NOT NULL;
CREATE INDEX audit_log_user ON audit_log (user_id) WHERE user_id IS NOT NULL;
CREATE TABLE webhooks (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    url text NOT NULL,
    secret text NOT NULL,
    events text NOT NULL DEFAULT '["*"]',
    created_at timestamptz NOT NULL
);
CREATE TABLE webhook_deliveries (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    webhook text NOT NULL,
    event_id text NOT NULL,
    event_type text NOT NULL,
    node_id bigint,
    status text NOT NULL,
    attempts integer NOT NULL,
    response_status integer,
    last_error text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook, id);
CREATE UNIQUE INDEX webhook_deliveries_event ON webhook_deliveries (webhook, event_id);
CREATE TABLE stats_samples (
    step integer NOT NULL,
    at timestamptz NOT NULL,
    nodes_online integer NOT NULL,
    nodes_total integer NOT NULL,
    map_sessions integer NOT NULL,
    relayed_bytes bigint NOT NULL,
    registrations integer NOT NULL,
    PRIMARY KEY (step, at)
);
"""

_PG_CONSOLE = """\
-- 6: the web console (SQLite's migration 6).
CREATE TABLE console_links (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    hash text NOT NULL UNIQUE,
    user_id bigint REFERENCES users(id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE TABLE console_sessions (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    hash text NOT NULL UNIQUE,
    user_id bigint REFERENCES users(id) ON DELETE CASCADE,
    method text NOT NULL,
    source text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
ALTER TABLE policies ADD COLUMN author text NOT NULL DEFAULT '';
"""

POSTGRES_MIGRATIONS: dict[int, str] = {
    3: _PG_V3,
    4: _PG_V4,
    5: _PG_V5,
    6: _PG_CONSOLE,
}
