"""The typed configuration: frozen dataclasses, one per Headscale section."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

# Headscale's log levels (zerolog) onto Python's. "trace" has no Python level
# of its own; 5 sits below DEBUG so that handlers set to DEBUG skip it.
LOG_LEVELS: dict[str, int] = {
    "trace": 5,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
    "disabled": logging.CRITICAL + 10,
}


@dataclass(frozen=True, slots=True)
class PrefixesConfig:
    v4: ipaddress.IPv4Network | None
    v6: ipaddress.IPv6Network | None
    allocation: Literal["sequential", "random"]


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    """database.postgres.* (Headscale's keys, and the lease of an active/standby pair)."""

    host: str  # "" for libpq's default (the local socket); a directory: a unix socket's
    port: int
    name: str
    user: str  # "" for libpq's default (the login user)
    password: str = field(repr=False)
    password_path: Path | None  # where ``password`` was read from (pass_path), if there
    ssl: str  # libpq's sslmode; "" for its default (prefer)
    max_open_conns: int
    max_idle_conns: int
    conn_max_idle_time: float  # seconds a pooled connection may stay unused; 0: no limit
    lease_timeout: float  # seconds after which a silent active server loses the active role


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    type: Literal["sqlite", "postgres"]
    sqlite_path: Path
    write_ahead_log: bool
    wal_autocheckpoint: int  # pages; 0 turns automatic checkpoints off
    postgres: PostgresConfig | None = None  # with type postgres


@dataclass(frozen=True, slots=True)
class NodeConfig:
    expiry: timedelta | None  # None: nodes get no default key expiry
    ephemeral_inactivity_timeout: timedelta
    routes_ha_probe_interval: timedelta  # zero: HA probing is off
    routes_ha_probe_timeout: timedelta
    approval_required: bool = False  # ours: new nodes wait for `nodes approve`


# BIND's names for the TSIG algorithms (RFC 8945), as tsig-keygen's -a takes them.
TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1", "hmac-md5")


@dataclass(frozen=True, slots=True)
class RFC2136Settings:
    """Dynamic updates (RFC 2136) signed with a TSIG key, sent to the zone's primary server."""

    server: str  # host:port
    zone: str
    tsig_key_name: str
    tsig_algorithm: str  # one of TSIG_ALGORITHMS
    tsig_secret: str  # base64, as tsig-keygen prints it


@dataclass(frozen=True, slots=True)
class CloudflareSettings:
    api_token: str
    zone_id: str | None  # None: looked up from the base domain through the API
    api_url: str


@dataclass(frozen=True, slots=True)
class CertificateSettings:
    """``dns.certificates``: certificates for MagicDNS names (``tailscale cert``) through
    ACME DNS-01 challenges published by ``provider``."""

    enabled: bool = False
    provider: Literal["embedded", "rfc2136", "cloudflare"] = "embedded"
    listen_addr: str = ":53"  # the embedded authoritative server, UDP and TCP
    ns_name: str = ""  # the host the zone's NS record names: server_url's host unless set
    rfc2136: RFC2136Settings | None = None
    cloudflare: CloudflareSettings | None = None


@dataclass(frozen=True, slots=True)
class DNSSettings:
    magic_dns: bool
    base_domain: str  # "" only when magic_dns is off
    override_local_dns: bool
    nameservers_global: tuple[str, ...]
    nameservers_split: dict[str, tuple[str, ...]]
    search_domains: tuple[str, ...]
    extra_records: tuple[dict[str, str], ...]  # each {"name", "type", "value"}
    extra_records_path: Path | None
    certificates: CertificateSettings = CertificateSettings()


@dataclass(frozen=True, slots=True)
class DERPSettings:
    server_enabled: bool
    region_id: int
    region_code: str
    region_name: str
    stun_listen_addr: str | None
    private_key_path: Path
    verify_clients: bool
    ipv4: str | None
    ipv6: str | None
    automatically_add_embedded_derp_region: bool
    urls: tuple[str, ...]
    paths: tuple[Path, ...]
    auto_update_enabled: bool
    update_frequency: timedelta
    # trioscale's own (Headscale cannot mesh its embedded relay): the region's shared mesh
    # key file (64 hex) and the URLs of the other DERP servers of the embedded region.
    mesh_key_path: Path | None = None
    mesh_with: tuple[str, ...] = ()
    # trioscale's own: relay worker processes; 0 = one per core (at most 8), 1 = in process.
    workers: int = 0


@dataclass(frozen=True, slots=True)
class PolicySettings:
    mode: Literal["file", "database"]
    path: Path | None


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    """ours: caps on the connections open on the public listener (listen_addr)."""

    # A node keeps about two long-lived connections (control and DERP): room for 15k nodes
    # (a 10k-node tailnet and its reconnects); the systemd unit allows 65536 descriptors.
    max_connections: int = 30_000
    # Nodes behind one NAT (an office, CGNAT) share an address: about a thousand of them.
    max_connections_per_source: int = 2_048


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """ours: one entry of ``webhooks:``. The secret signs every delivery (HMAC-SHA256)."""

    url: str
    secret: str
    events: tuple[str, ...]  # event types, or ("*",) for all
    secret_path: Path | None = None


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str  # one of LOG_LEVELS, lower case
    format: Literal["text", "json"]

    @property
    def level_no(self) -> int:
        """``level`` as a number for the ``logging`` module."""
        return LOG_LEVELS[self.level]


@dataclass(frozen=True, slots=True)
class TLSSettings:
    cert_path: Path | None
    key_path: Path | None
    letsencrypt_hostname: str | None
    letsencrypt_challenge_type: Literal["HTTP-01", "TLS-ALPN-01"]
    letsencrypt_listen: str
    letsencrypt_cache_dir: Path
    acme_url: str
    acme_email: str | None
    # ours: a PEM bundle trusted for the ACME server's HTTPS (a private CA); None: the system's
    acme_ca_bundle: Path | None = None

    @property
    def uses_letsencrypt(self) -> bool:
        return self.letsencrypt_hostname is not None

    @property
    def uses_files(self) -> bool:
        return self.cert_path is not None

    @property
    def enabled(self) -> bool:
        """Whether we terminate TLS ourselves (otherwise we serve plain HTTP)."""
        return self.uses_letsencrypt or self.uses_files


@dataclass(frozen=True, slots=True)
class Config:
    path: Path | None
    server_url: str
    listen_addr: str
    metrics_listen_addr: str | None
    data_dir: Path
    noise_private_key_path: Path
    prefixes: PrefixesConfig
    database: DatabaseConfig
    unix_socket: Path
    unix_socket_permission: int
    node: NodeConfig
    dns: DNSSettings
    derp: DERPSettings
    policy: PolicySettings
    log: LogSettings
    tls: TLSSettings
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    limits: LimitsSettings = LimitsSettings()
    audit_retention_days: int = 90  # ours: audit.retention_days
    webhooks: tuple[WebhookSettings, ...] = ()  # ours
    # Headscale keys we accept but do not act on (yet), by dotted key:
    # "grpc_listen_addr", "oidc.issuer", "taildrop.enabled", ... Holds the
    # value from the file, or Headscale's default where it has one.
    extras: dict[str, Any] = field(default_factory=dict)
