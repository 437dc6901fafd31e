"""The effective configuration back in Headscale's key layout."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from . import schema
from .model import Config
from .values import format_duration

REDACTED = "<redacted>"


def config_to_dict(cfg: Config, *, redact: bool = False) -> dict[str, Any]:
    """Every setting, defaults included, nested as in Headscale's config.yaml.

    load_config() of this dict written as YAML gives back an equal Config
    (apart from ``path``). Unset optional values are written as "" as
    Headscale's example does. With ``redact``, secrets (database password,
    OIDC client secret, CLI API key, TSIG secret, Cloudflare token) are replaced by "<redacted>".
    """
    out: dict[str, Any] = {
        "server_url": cfg.server_url,
        "listen_addr": cfg.listen_addr,
        "metrics_listen_addr": cfg.metrics_listen_addr or "",
        "data_dir": str(cfg.data_dir),
        "trusted_proxies": [str(net) for net in cfg.trusted_proxies],
        "noise": {"private_key_path": str(cfg.noise_private_key_path)},
        "prefixes": {
            "v4": str(cfg.prefixes.v4) if cfg.prefixes.v4 else "",
            "v6": str(cfg.prefixes.v6) if cfg.prefixes.v6 else "",
            "allocation": cfg.prefixes.allocation,
        },
        "derp": {
            "server": {
                "enabled": cfg.derp.server_enabled,
                "region_id": cfg.derp.region_id,
                "region_code": cfg.derp.region_code,
                "region_name": cfg.derp.region_name,
                "verify_clients": cfg.derp.verify_clients,
                "stun_listen_addr": cfg.derp.stun_listen_addr or "",
                "private_key_path": str(cfg.derp.private_key_path),
                "automatically_add_embedded_derp_region": cfg.derp.automatically_add_embedded_derp_region,
                "ipv4": cfg.derp.ipv4 or "",
                "ipv6": cfg.derp.ipv6 or "",
                "mesh_key_path": str(cfg.derp.mesh_key_path) if cfg.derp.mesh_key_path else "",
                "mesh_with": list(cfg.derp.mesh_with),
                "workers": cfg.derp.workers,
            },
            "urls": list(cfg.derp.urls),
            "paths": [str(p) for p in cfg.derp.paths],
            "auto_update_enabled": cfg.derp.auto_update_enabled,
            "update_frequency": format_duration(cfg.derp.update_frequency),
        },
        "node": {
            "expiry": format_duration(cfg.node.expiry) if cfg.node.expiry else "0",
            "ephemeral": {"inactivity_timeout": format_duration(cfg.node.ephemeral_inactivity_timeout)},
            "routes": {
                "ha": {
                    "probe_interval": format_duration(cfg.node.routes_ha_probe_interval),
                    "probe_timeout": format_duration(cfg.node.routes_ha_probe_timeout),
                }
            },
        },
        "database": {
            "type": cfg.database.type,
            "sqlite": {
                "path": str(cfg.database.sqlite_path),
                "write_ahead_log": cfg.database.write_ahead_log,
                "wal_autocheckpoint": cfg.database.wal_autocheckpoint,
            },
            **_postgres(cfg, redact),
        },
        "acme_url": cfg.tls.acme_url,
        "acme_email": cfg.tls.acme_email or "",
        "acme_ca_bundle": _opt_path(cfg.tls.acme_ca_bundle),
        "tls_letsencrypt_hostname": cfg.tls.letsencrypt_hostname or "",
        "tls_letsencrypt_cache_dir": str(cfg.tls.letsencrypt_cache_dir),
        "tls_letsencrypt_challenge_type": cfg.tls.letsencrypt_challenge_type,
        "tls_letsencrypt_listen": cfg.tls.letsencrypt_listen,
        "tls_cert_path": _opt_path(cfg.tls.cert_path),
        "tls_key_path": _opt_path(cfg.tls.key_path),
        "log": {"level": cfg.log.level, "format": cfg.log.format},
        "policy": {"mode": cfg.policy.mode, "path": _opt_path(cfg.policy.path)},
        "limits": {
            "max_connections": cfg.limits.max_connections,
            "max_connections_per_source": cfg.limits.max_connections_per_source,
        },
        "audit": {"retention_days": cfg.audit_retention_days},
        "webhooks": [
            {"url": w.url, "events": list(w.events),
             **({"secret_path": str(w.secret_path)} if w.secret_path is not None
                else {"secret": REDACTED if redact else w.secret})}
            for w in cfg.webhooks
        ],
        "dns": {
            "magic_dns": cfg.dns.magic_dns,
            "base_domain": cfg.dns.base_domain,
            "override_local_dns": cfg.dns.override_local_dns,
            "nameservers": {
                "global": list(cfg.dns.nameservers_global),
                "split": {domain: list(servers) for domain, servers in cfg.dns.nameservers_split.items()},
            },
            "search_domains": list(cfg.dns.search_domains),
            "extra_records": [dict(record) for record in cfg.dns.extra_records],
            "extra_records_path": _opt_path(cfg.dns.extra_records_path),
            "certificates": _certificates(cfg, redact),
        },
        "unix_socket": str(cfg.unix_socket),
        "unix_socket_permission": f"0{cfg.unix_socket_permission:o}",
    }
    for key, value in cfg.extras.items():
        if redact and key in schema.SECRET_KEYS and value:
            value = REDACTED
        _put(out, key, _plain(value))
    return out


def _postgres(cfg: Config, redact: bool) -> dict[str, Any]:
    pg = cfg.database.postgres
    if pg is None:
        return {}
    password = "" if pg.password_path else (REDACTED if redact and pg.password else pg.password)
    return {"postgres": {
        "host": pg.host, "port": pg.port, "name": pg.name, "user": pg.user, "pass": password,
        "pass_path": str(pg.password_path) if pg.password_path else "", "ssl": pg.ssl,
        "max_open_conns": pg.max_open_conns, "max_idle_conns": pg.max_idle_conns,
        "conn_max_idle_time_secs": int(pg.conn_max_idle_time),
        "lease_timeout": format_duration(timedelta(seconds=pg.lease_timeout)),
    }}


def _certificates(cfg: Config, redact: bool) -> dict[str, Any]:
    c = cfg.dns.certificates
    out: dict[str, Any] = {
        "enabled": c.enabled, "provider": c.provider, "listen_addr": c.listen_addr, "ns_name": c.ns_name,
    }
    if c.rfc2136 is not None:
        out["rfc2136"] = {
            "server": c.rfc2136.server, "zone": c.rfc2136.zone, "tsig_key_name": c.rfc2136.tsig_key_name,
            "tsig_algorithm": c.rfc2136.tsig_algorithm,
            "tsig_secret": REDACTED if redact else c.rfc2136.tsig_secret,
        }
    if c.cloudflare is not None:
        out["cloudflare"] = {
            "api_token": REDACTED if redact else c.cloudflare.api_token, "zone_id": c.cloudflare.zone_id or "",
            "api_url": c.cloudflare.api_url,
        }
    return out


def config_to_yaml(cfg: Config, *, redact: bool = False) -> str:
    """config_to_dict as a YAML document (what ``trioscale configtest`` prints)."""
    return yaml.safe_dump(config_to_dict(cfg, redact=redact), sort_keys=False, allow_unicode=True)


def _opt_path(path: Path | None) -> str:
    return str(path) if path is not None else ""


def _plain(value: Any) -> Any:
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


def _put(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value
