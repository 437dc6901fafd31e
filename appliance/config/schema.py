"""Which keys a config file may hold.

Keys are dotted paths in Headscale 0.29's layout. ``MAIN_KEYS`` become typed
fields of Config; ``EXTRA_KEYS`` are Headscale keys we accept and keep in
``Config.extras`` (the oidc.* keys are read from there by appliance/oidc/settings.py;
the others are not acted on yet); ``ALIASES`` are older spellings
Headscale used; ``REMOVED_KEYS`` are keys Headscale refuses to start with.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Callable

from . import values as v

MAIN_KEYS: frozenset[str] = frozenset(
    {
        "server_url",
        "listen_addr",
        "metrics_listen_addr",
        "data_dir",  # ours, not Headscale's
        "trusted_proxies",
        "noise.private_key_path",
        "prefixes.v4",
        "prefixes.v6",
        "prefixes.allocation",
        "database.type",
        "database.sqlite.path",
        "database.sqlite.write_ahead_log",
        "database.sqlite.wal_autocheckpoint",
        "database.postgres.host",
        "database.postgres.port",
        "database.postgres.name",
        "database.postgres.user",
        "database.postgres.pass",
        "database.postgres.pass_path",  # ours, not Headscale's
        "database.postgres.ssl",
        "database.postgres.max_open_conns",
        "database.postgres.max_idle_conns",
        "database.postgres.conn_max_idle_time_secs",
        "database.postgres.lease_timeout",  # ours, not Headscale's
        "unix_socket",
        "unix_socket_permission",
        "node.expiry",
        "node.approval_required",  # ours, not Headscale's
        "node.ephemeral.inactivity_timeout",
        "node.routes.ha.probe_interval",
        "node.routes.ha.probe_timeout",
        "dns.magic_dns",
        "dns.base_domain",
        "dns.override_local_dns",
        "dns.nameservers.global",
        "dns.nameservers.split",
        "dns.search_domains",
        "dns.extra_records",
        "dns.extra_records_path",
        # ours: certificates for MagicDNS names (tailscale cert) through DNS-01
        "dns.certificates.enabled",
        "dns.certificates.provider",
        "dns.certificates.listen_addr",
        "dns.certificates.ns_name",
        "dns.certificates.rfc2136.server",
        "dns.certificates.rfc2136.zone",
        "dns.certificates.rfc2136.tsig_key_name",
        "dns.certificates.rfc2136.tsig_algorithm",
        "dns.certificates.rfc2136.tsig_secret",
        "dns.certificates.rfc2136.tsig_secret_path",
        "dns.certificates.cloudflare.api_token",
        "dns.certificates.cloudflare.api_token_path",
        "dns.certificates.cloudflare.zone_id",
        "dns.certificates.cloudflare.api_url",
        "derp.server.enabled",
        "derp.server.region_id",
        "derp.server.region_code",
        "derp.server.region_name",
        "derp.server.stun_listen_addr",
        "derp.server.private_key_path",
        "derp.server.verify_clients",
        "derp.server.ipv4",
        "derp.server.ipv6",
        "derp.server.automatically_add_embedded_derp_region",
        "derp.server.mesh_key_path",  # ours, not Headscale's
        "derp.server.mesh_with",  # ours, not Headscale's
        "derp.server.workers",  # ours, not Headscale's
        "derp.urls",
        "derp.paths",
        "derp.auto_update_enabled",
        "derp.update_frequency",
        "policy.mode",
        "policy.path",
        "log.level",
        "log.format",
        "tls_cert_path",
        "tls_key_path",
        "tls_letsencrypt_hostname",
        "tls_letsencrypt_challenge_type",
        "tls_letsencrypt_listen",
        "tls_letsencrypt_cache_dir",
        "acme_url",
        "acme_email",
        "acme_ca_bundle",  # ours, not Headscale's
        "limits.max_connections",  # ours, not Headscale's
        "audit.retention_days",  # ours
        "webhooks",  # ours: a list of {url, secret | secret_path, events}
        "limits.max_connections_per_source",  # ours, not Headscale's
    }
)

Parser = Callable[[object, str], Any]


def _str_map(value: object, key: str) -> dict[str, str]:
    mapping = v.require_mapping(value, key)
    for sub, item in mapping.items():
        v.parse_str(item, f"{key}.{sub}")
    return dict(mapping)


def _positive_int(value: object, key: str) -> int:
    return v.parse_int(value, key, minimum=1)


def _non_negative_int(value: object, key: str) -> int:
    return v.parse_int(value, key, minimum=0)


def _positive_duration(value: object, key: str) -> timedelta:
    delta = v.parse_duration(value, key)
    if not delta:
        raise v.key_error(key, "a duration greater than zero", value)
    return delta


def _pkce_method(value: object, key: str) -> str:
    return v.parse_choice(value, key, ("plain", "S256"), fold=False)


def _grpc_addr(value: object, key: str) -> str:
    return v.parse_host_port(value, key, "127.0.0.1:50443")


_OPT = object()  # marks an extra key with no default: present only when set

# dotted key -> (parser, Headscale's default or _OPT)
EXTRA_KEYS: dict[str, tuple[Parser, Any]] = {
    "grpc_listen_addr": (_grpc_addr, ":50443"),
    "grpc_allow_insecure": (v.parse_bool, False),
    "disable_check_updates": (v.parse_bool, False),
    "logtail.enabled": (v.parse_bool, False),
    "taildrop.enabled": (v.parse_bool, True),
    "auto_update.enabled": (v.parse_bool, False),
    "derp.server.stun.enabled": (v.parse_bool, _OPT),
    "database.debug": (v.parse_bool, False),
    "database.gorm.prepare_stmt": (v.parse_bool, True),
    "database.gorm.parameterized_queries": (v.parse_bool, True),
    "database.gorm.skip_err_record_not_found": (v.parse_bool, True),
    "database.gorm.slow_threshold": (_non_negative_int, 1000),
    "oidc.enabled": (v.parse_bool, _OPT),
    "oidc.only_start_if_oidc_is_available": (v.parse_bool, True),
    "oidc.issuer": (v.parse_str, _OPT),
    "oidc.client_id": (v.parse_str, _OPT),
    "oidc.client_secret": (v.parse_str, _OPT),
    "oidc.client_secret_path": (v.parse_str, _OPT),
    "oidc.use_expiry_from_token": (v.parse_bool, False),
    "oidc.scope": (v.parse_str_list, ("openid", "profile", "email")),
    "oidc.email_verified_required": (v.parse_bool, True),
    "oidc.extra_params": (_str_map, _OPT),
    "oidc.allowed_domains": (v.parse_str_list, _OPT),
    "oidc.allowed_users": (v.parse_str_list, _OPT),
    "oidc.allowed_groups": (v.parse_str_list, _OPT),
    "oidc.pkce.enabled": (v.parse_bool, False),
    "oidc.pkce.method": (_pkce_method, "S256"),
    # ours, not Headscale's: the claim holding the person's groups (for group:NAME in the
    # policy and allowed_groups), and GitHub's OAuth 2.0 (no OIDC) with its organisations.
    "oidc.groups_claim": (v.parse_str, "groups"),
    "oidc.provider": (lambda x, k: v.parse_choice(x, k, ("oidc", "github")), "oidc"),
    "oidc.allowed_organizations": (v.parse_str_list, _OPT),
    "oidc.api_url": (lambda x, k: v.parse_http_url(x, k, bare=False), _OPT),
    "cli.address": (v.parse_str, _OPT),
    "cli.api_key": (v.parse_str, _OPT),
    "cli.timeout": (v.parse_duration, timedelta(seconds=5)),
    "cli.insecure": (v.parse_bool, False),
    "tuning.notifier_send_timeout": (v.parse_duration, timedelta(milliseconds=800)),
    "tuning.batch_change_delay": (v.parse_duration, timedelta(milliseconds=800)),
    "tuning.node_mapsession_buffered_chan_size": (_non_negative_int, 30),
    "tuning.batcher_workers": (_non_negative_int, _OPT),
    "tuning.register_cache_expiration": (v.parse_duration, _OPT),
    "tuning.register_cache_max_entries": (_non_negative_int, _OPT),
    "tuning.node_store_batch_size": (_positive_int, 100),
    "tuning.node_store_batch_timeout": (_positive_duration, timedelta(milliseconds=500)),
    # Removed in Headscale 0.29 (it refuses to start); we only warn, see load.py.
    "randomize_client_port": (v.parse_bool, _OPT),
}

# Values printed as "<redacted>" by config_to_dict(redact=True).
SECRET_KEYS = frozenset({"database.postgres.pass", "oidc.client_secret", "cli.api_key"})

# older key -> current key. Headscale 0.29 refuses some of these outright
# (dns_config.*, acl_policy_path) unless the new key is also set; we read
# them as the new key and warn, so an older file keeps working.
ALIASES: dict[str, str] = {
    "ephemeral_node_inactivity_timeout": "node.ephemeral.inactivity_timeout",
    "acl_policy_path": "policy.path",
    # Headscale before 0.23: a migrated install must find its existing database.
    "db_type": "database.type",
    "db_path": "database.sqlite.path",
    "dns_config.magic_dns": "dns.magic_dns",
    "dns_config.base_domain": "dns.base_domain",
    "dns_config.override_local_dns": "dns.override_local_dns",
    "dns_config.nameservers": "dns.nameservers.global",
    "dns_config.restricted_nameservers": "dns.nameservers.split",
    "dns_config.domains": "dns.search_domains",
    "dns_config.extra_records": "dns.extra_records",
}

# Keys Headscale removed and refuses to start with, since ignoring them would
# change how the tailnet behaves. key -> what to do instead.
REMOVED_KEYS: dict[str, str] = {
    "dns.use_username_in_magic_dns": "MagicDNS names no longer include the user name; remove the key",
    "dns_config.use_username_in_magic_dns": "MagicDNS names no longer include the user name; remove the key",
    "oidc.strip_email_domain": "removed in Headscale 0.26; remove the key",
    "oidc.map_legacy_users": "removed in Headscale 0.26; remove the key",
    "oidc.expiry": "use node.expiry instead",
}

# Keys whose value is itself a mapping with free-form keys.
MAPPING_LEAVES = frozenset({"dns.nameservers.split", "dns_config.restricted_nameservers", "oidc.extra_params"})

LEAVES: frozenset[str] = MAIN_KEYS | EXTRA_KEYS.keys() | ALIASES.keys() | REMOVED_KEYS.keys()

SECTIONS: frozenset[str] = frozenset(
    ".".join(parts[:i]) for key in LEAVES for parts in [key.split(".")] for i in range(1, len(parts))
)

OPTIONAL = _OPT
