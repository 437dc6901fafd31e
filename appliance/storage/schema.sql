-- The truth of the current schema. Migrations in migrations.py must produce exactly this;
-- tests/unit/test_storage.py checks it.
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL DEFAULT '',
    email TEXT NOT NULL DEFAULT '',
    provider TEXT NOT NULL DEFAULT '',
    provider_id TEXT NOT NULL DEFAULT '',
    profile_pic_url TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
, role TEXT NOT NULL DEFAULT 'member', groups TEXT NOT NULL DEFAULT '[]');
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
, pre_approved INTEGER NOT NULL DEFAULT 0);
CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prefix TEXT NOT NULL UNIQUE,
    hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expiration TEXT,
    last_seen TEXT
);
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
, authorized INTEGER NOT NULL DEFAULT 1);
CREATE INDEX nodes_machine_key ON nodes (machine_key);
CREATE TABLE policies (
    id INTEGER PRIMARY KEY,
    data TEXT NOT NULL,
    created_at TEXT NOT NULL
, author TEXT NOT NULL DEFAULT '');
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE UNIQUE INDEX users_provider_id ON users (provider_id) WHERE provider_id != '';
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
