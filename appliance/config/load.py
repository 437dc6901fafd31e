"""Finding, reading and checking the configuration file."""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import schema
from . import values as v
from .errors import ConfigError, key_error
from .model import (
    LOG_LEVELS,
    TSIG_ALGORITHMS,
    CertificateSettings,
    CloudflareSettings,
    Config,
    DatabaseConfig,
    DERPSettings,
    DNSSettings,
    LimitsSettings,
    LogSettings,
    NodeConfig,
    PolicySettings,
    PostgresConfig,
    PrefixesConfig,
    RFC2136Settings,
    TLSSettings,
    WebhookSettings,
)
from ..events.types import ALL, EVENT_TYPES
from .yamlfile import parse_yaml

log = logging.getLogger("appliance.config")

CONFIG_ENV_VAR = "TRIOSCALE_CONFIG"
SYSTEM_CONFIG_PATH = Path("/etc/trioscale/config.yaml")

# Tailscale clients assume their addresses come from these ranges (tsaddr's
# CGNATRange and TailscaleULARange); Headscale only warns, but nodes outside
# them misbehave in ways that are hard to trace, so we refuse.
TAILSCALE_V4_RANGE = ipaddress.IPv4Network("100.64.0.0/10")
TAILSCALE_V6_RANGE = ipaddress.IPv6Network("fd7a:115c:a1e0::/48")

# The map stream's keepalive is 60s; an ephemeral node must be allowed to miss
# one before it is deleted (Headscale's own floor).
MIN_EPHEMERAL_INACTIVITY = timedelta(seconds=65)

LETS_ENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
DEFAULT_BASE_DOMAIN = "tailnet.internal"
DEFAULT_NAMESERVERS = ("1.1.1.1", "1.0.0.1", "2606:4700:4700::1111", "2606:4700:4700::1001")
CLOUDFLARE_API = "https://api.cloudflare.com/client/v4"
# Top-level domains that can never be delegated to us, so no public CA can validate under them.
PRIVATE_TLDS = ("internal", "local", "localhost", "lan", "home", "corp")


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where state lives when ``data_dir`` is not set.

    root: /var/lib/trioscale; anyone else: $XDG_DATA_HOME/trioscale, or
    ~/.local/share/trioscale.
    """
    env = os.environ if env is None else env
    if os.geteuid() == 0:
        return Path("/var/lib/trioscale")
    xdg = env.get("XDG_DATA_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec says to ignore relative values
        return Path(xdg) / "trioscale"
    return _home(env) / ".local" / "share" / "trioscale"


def find_config_file(env: Mapping[str, str] | None = None) -> Path | None:
    """The file load_config(None) reads: $TRIOSCALE_CONFIG, then
    /etc/trioscale/config.yaml, then $XDG_CONFIG_HOME/trioscale/config.yaml
    (~/.config/trioscale/config.yaml); None if there is none."""
    env = os.environ if env is None else env
    explicit = env.get(CONFIG_ENV_VAR)
    if explicit:
        return Path(explicit)
    if SYSTEM_CONFIG_PATH.is_file():
        return SYSTEM_CONFIG_PATH
    xdg = env.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else _home(env) / ".config"
    user = base / "trioscale" / "config.yaml"
    return user if user.is_file() else None


def load_config(path: str | os.PathLike | None = None, *, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, object] | None = None) -> Config:
    """Read and check the configuration.

    Args:
      path: the file to read; None looks for one (see find_config_file) and
        falls back to the built-in defaults if there is none.
      env: environment to consult instead of os.environ (HOME, XDG_*,
        TRIOSCALE_CONFIG).
      overrides: values that win over the file's, in the file's nested layout
        (command-line flags such as ``serve --domain``).

    Raises ConfigError if the file cannot be read or holds a value we cannot
    use. Unknown keys are not an error: one warning names them all.
    """
    env = os.environ if env is None else env
    file = Path(path) if path is not None else find_config_file(env)
    if file is None:
        return config_from_dict(merge_overrides(None, overrides), env=env)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such configuration file", source=file) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read configuration file: {exc}", source=file) from exc
    data = merge_overrides(parse_yaml(text, source=file), overrides)
    try:
        return config_from_dict(data, path=file, env=env)
    except ConfigError as exc:
        exc.source = file
        raise


def merge_overrides(data: object, overrides: Mapping[str, object] | None) -> object:
    """``data`` (a parsed document) with ``overrides`` laid over it, nested mappings merged."""
    if not overrides:
        return data
    base = dict(data) if isinstance(data, dict) else {}
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            base[key] = merge_overrides(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value
    return base


def config_from_dict(
    data: object, *, path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Build a Config from an already parsed document (None = empty file).

    ``path`` is the file the document came from: relative paths in it are
    taken relative to that file's directory (as Headscale does for its key and
    database paths; we do it for every path), else to the current directory.
    """
    env = os.environ if env is None else env
    file = Path(path).absolute() if path is not None else None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"the configuration must be a mapping of keys to values, got {type(data).__name__}")
    values, written = _flatten(data, file)
    reader = _Reader(values, written, base=file.parent if file else Path.cwd(), env=env)
    return _build(reader, file)


# --- reading the document --------------------------------------------------

_UNSET = object()


def _flatten(data: dict, file: Path | None) -> tuple[dict[str, object], dict[str, str]]:
    """The document's leaves by canonical dotted key, and the key as written."""
    found: dict[str, object] = {}
    unknown: list[str] = []

    def walk(mapping: dict, prefix: str) -> None:
        for raw_key, value in mapping.items():
            key = f"{prefix}{raw_key}"
            if key in schema.LEAVES:
                found[key] = value
            elif key in schema.SECTIONS:
                if value is None:
                    continue  # "oidc:" with everything commented out
                walk(v.require_mapping(value, key), key + ".")
            else:
                unknown.append(key)

    walk(data, "")

    for key, hint in schema.REMOVED_KEYS.items():
        if key in found:
            raise ConfigError(f"{key}: this key was removed from Headscale's configuration; {hint}", key=key)

    values: dict[str, object] = {}
    written: dict[str, str] = {}
    deprecated: list[str] = []
    for key, value in found.items():
        new = schema.ALIASES.get(key)
        if new is None:
            values[key] = value
            written.setdefault(key, key)
        elif new in found:
            deprecated.append(f"{key} (ignored: {new} is also set)")
        else:
            values[new] = value
            written[new] = key
            deprecated.append(f"{key} (use {new})")
    if "randomize_client_port" in found:
        deprecated.append('randomize_client_port (ignored: set "randomizeClientPort": true in the policy)')

    where = file or "configuration"
    if unknown:
        log.warning("%s: unknown configuration keys, ignored: %s", where, ", ".join(unknown))
    if deprecated:
        log.warning("%s: deprecated configuration keys: %s", where, "; ".join(deprecated))
    return values, written


class _Reader:
    def __init__(self, values: dict[str, object], written: dict[str, str], *, base: Path, env: Mapping[str, str]):
        self.values = values
        self.written = written
        self.base = base
        self.env = env

    def name(self, key: str) -> str:
        """The key as the user wrote it (an old alias, maybe)."""
        return self.written.get(key, key)

    def has(self, key: str) -> bool:
        return key in self.values

    def raw(self, key: str) -> object:
        return self.values.get(key, _UNSET)

    def get(self, key: str, parse, default):
        """Parsed value; ``default`` if absent or null."""
        value = self.values.get(key)
        if value is None:
            return default
        return parse(value, self.name(key))

    def text(self, key: str, parse, default):
        """For string keys where "" or null means "not set" (Headscale's convention)."""
        value = self.values.get(key, _UNSET)
        if value is _UNSET:
            return default
        if value is None or value == "":
            return None
        return parse(value, self.name(key))

    def path(self, key: str, default: Path | None) -> Path | None:
        value = self.values.get(key)
        if value is None or value == "":
            return default
        return self.to_path(value, self.name(key))

    def to_path(self, value: object, name: str) -> Path:
        if not isinstance(value, str):
            raise key_error(name, "a file system path", value)
        text = value.strip()
        if text == "~" or text.startswith("~/"):
            text = str(_home(self.env)) + text[1:]
        else:
            text = os.path.expanduser(text)
        return self.base / text  # an absolute path replaces base


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME")
    return Path(home) if home else Path.home()


# --- building the Config ---------------------------------------------------


def _build(r: _Reader, file: Path | None) -> Config:
    server_url = r.get("server_url", lambda x, k: v.parse_http_url(x, k, bare=True), "http://127.0.0.1:8080")
    listen_addr = r.get("listen_addr", v.parse_host_port, "127.0.0.1:8080")
    metrics = r.text("metrics_listen_addr", lambda x, k: v.parse_host_port(x, k, "127.0.0.1:9090"), None)
    data_dir = r.path("data_dir", None) or default_data_dir(r.env)

    return Config(
        path=file,
        server_url=server_url,
        listen_addr=listen_addr,
        metrics_listen_addr=metrics,
        data_dir=data_dir,
        noise_private_key_path=r.path("noise.private_key_path", data_dir / "noise_private.key"),
        prefixes=_prefixes(r),
        database=_database(r, data_dir),
        unix_socket=r.path("unix_socket", data_dir / "trioscale.sock"),
        unix_socket_permission=r.get("unix_socket_permission", v.parse_permission, 0o770),
        node=_node(r),
        dns=_dns(r, server_url),
        derp=_derp(r, data_dir),
        policy=_policy(r),
        log=_log(r),
        tls=_tls(r, data_dir, listen_addr),
        trusted_proxies=_trusted_proxies(r),
        limits=_limits(r),
        audit_retention_days=r.get("audit.retention_days", lambda x, k: v.parse_int(x, k, minimum=1), 90),
        webhooks=_webhooks(r),
        extras=_extras(r),
    )


def _prefixes(r: _Reader) -> PrefixesConfig:
    v4 = r.text("prefixes.v4", lambda x, k: v.parse_prefix(x, k, 4), TAILSCALE_V4_RANGE)
    v6 = r.text("prefixes.v6", lambda x, k: v.parse_prefix(x, k, 6), TAILSCALE_V6_RANGE)
    if v4 is not None and not v4.subnet_of(TAILSCALE_V4_RANGE):
        raise key_error(r.name("prefixes.v4"), "a prefix inside Tailscale's 100.64.0.0/10", str(v4))
    if v6 is not None and not v6.subnet_of(TAILSCALE_V6_RANGE):
        raise key_error(r.name("prefixes.v6"), "a prefix inside Tailscale's fd7a:115c:a1e0::/48", str(v6))
    if v4 is None and v6 is None:
        raise ConfigError("prefixes: at least one of prefixes.v4 and prefixes.v6 must be set", key="prefixes")
    allocation = r.get(
        "prefixes.allocation", lambda x, k: v.parse_choice(x, k, ("sequential", "random")), "sequential"
    )
    return PrefixesConfig(v4=v4, v6=v6, allocation=allocation)


def _database(r: _Reader, data_dir: Path) -> DatabaseConfig:
    kind = r.get("database.type", lambda x, k: v.parse_choice(x, k, ("sqlite", "sqlite3", "postgres")), "sqlite")
    return DatabaseConfig(
        type="postgres" if kind == "postgres" else "sqlite",
        sqlite_path=r.path("database.sqlite.path", data_dir / "db.sqlite"),
        write_ahead_log=r.get("database.sqlite.write_ahead_log", v.parse_bool, True),
        wal_autocheckpoint=r.get(
            "database.sqlite.wal_autocheckpoint", lambda x, k: v.parse_int(x, k, minimum=0), 1000
        ),
        postgres=_postgres(r, needed=kind == "postgres"),
    )


# libpq's sslmode values; Headscale's ssl key also takes true (require) and false (disable).
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _ssl_mode(value: object, key: str) -> str:
    if isinstance(value, bool):
        return "require" if value else "disable"
    text = v.parse_str(value, key).strip().lower()
    text = {"true": "require", "false": "disable"}.get(text, text)
    return v.parse_choice(text, key, SSL_MODES)


def _postgres(r: _Reader, *, needed: bool) -> PostgresConfig | None:
    """database.postgres.*: checked whenever present, required with type postgres; None when
    no database is named (``db migrate`` reads them with type sqlite too)."""
    p = "database.postgres."
    host = r.text(p + "host", v.parse_str, None) or ""
    port = r.get(p + "port", lambda x, k: v.parse_int(x, k, minimum=1), None)
    if port is not None and port > 65535:
        raise key_error(r.name(p + "port"), "a port number (1 to 65535)", port)
    socket_name = Path(host).name if host.startswith("/") else ""
    if socket_name.startswith(".s.PGSQL."):
        # Headscale's example says to put the socket's path in host: libpq wants its directory,
        # and the port is in the file's name.
        suffix = socket_name.removeprefix(".s.PGSQL.")
        if not suffix.isdigit():
            raise key_error(r.name(p + "host"), "a unix socket directory or a .s.PGSQL.<port> file", host)
        host, port = str(Path(host).parent), port or int(suffix)
    name = r.text(p + "name", v.parse_str, None) or ""
    user = r.text(p + "user", v.parse_str, None) or ""
    password = _secret(r, p + "pass", needed=needed or bool(name), optional=True)
    password_path = r.path(p + "pass_path", None)
    ssl = r.text(p + "ssl", _ssl_mode, None) or ""
    max_open = r.get(p + "max_open_conns", lambda x, k: v.parse_int(x, k, minimum=2), 10)
    max_idle = r.get(p + "max_idle_conns", lambda x, k: v.parse_int(x, k, minimum=0), 10)
    idle_time = r.get(p + "conn_max_idle_time_secs", lambda x, k: v.parse_int(x, k, minimum=0), 3600)
    lease = r.get(p + "lease_timeout", v.parse_duration, timedelta(seconds=5))
    if not timedelta(seconds=2) <= lease <= timedelta(minutes=10):
        raise key_error(r.name(p + "lease_timeout"), "a duration from 2s to 10m", lease)
    if not name:
        if not needed:
            return None  # (then nothing names a database: `db migrate` says what is missing)
        raise ConfigError(f"{p}name: needed with database.type postgres (the database trioscale keeps its "
                          "state in)", key=p + "name")
    return PostgresConfig(
        host=host, port=port or 5432, name=name, user=user, password=password, password_path=password_path,
        ssl=ssl, max_open_conns=max_open, max_idle_conns=max_idle, conn_max_idle_time=float(idle_time),
        lease_timeout=lease.total_seconds(),
    )


def _node(r: _Reader) -> NodeConfig:
    expiry = r.get("node.expiry", v.parse_duration, timedelta(0))
    ephemeral = r.get("node.ephemeral.inactivity_timeout", v.parse_duration, timedelta(minutes=30))
    if ephemeral <= MIN_EPHEMERAL_INACTIVITY:
        raise key_error(
            r.name("node.ephemeral.inactivity_timeout"), "a duration longer than 65s", v.format_duration(ephemeral)
        )
    interval = r.get("node.routes.ha.probe_interval", v.parse_duration, timedelta(seconds=10))
    timeout = r.get("node.routes.ha.probe_timeout", v.parse_duration, timedelta(seconds=5))
    if interval:
        if interval < timedelta(seconds=2):
            raise key_error(
                r.name("node.routes.ha.probe_interval"), "0 (off) or at least 2s", v.format_duration(interval)
            )
        if timeout < timedelta(seconds=1):
            raise key_error(r.name("node.routes.ha.probe_timeout"), "at least 1s", v.format_duration(timeout))
        if timeout >= interval:
            raise key_error(
                r.name("node.routes.ha.probe_timeout"),
                f"less than node.routes.ha.probe_interval ({v.format_duration(interval)})",
                v.format_duration(timeout),
            )
    return NodeConfig(
        expiry=expiry or None,
        ephemeral_inactivity_timeout=ephemeral,
        routes_ha_probe_interval=interval,
        routes_ha_probe_timeout=timeout,
        approval_required=r.get("node.approval_required", v.parse_bool, False),
    )


def _nameservers(value: object, key: str) -> tuple[str, ...]:
    return tuple(v.parse_nameserver(ns, f"{key}[{i}]") for i, ns in enumerate(v.parse_str_list(value, key)))


def _split(value: object, key: str) -> dict[str, tuple[str, ...]]:
    mapping = v.require_mapping(value, key)
    return {
        v.parse_domain(domain, f"{key}.{domain}"): _nameservers(servers, f"{key}.{domain}")
        for domain, servers in mapping.items()
    }


_RECORD_FIELDS = ("name", "type", "value")


def _entries(value: object, key: str, what: str, fields, has: str):
    """(where, mapping) for each item of a list of mappings that hold only ``fields``."""
    if not isinstance(value, list):
        raise key_error(key, what, value)
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        item = v.require_mapping(item, where)
        for field in item:
            if field not in fields:
                raise ConfigError(f"{where}: unknown field {field!r}; {has}", key=where)
        yield where, item


def _records(value: object, key: str) -> tuple[dict[str, str], ...]:
    records = []
    for where, item in _entries(value, key, "a list of records such as {name: grafana.example.com, type: A, "
                                "value: 100.64.0.3}", _RECORD_FIELDS, "a record has name, type and value"):
        name = v.parse_str(item.get("name"), f"{where}.name")
        kind = v.parse_choice(item.get("type", "A"), f"{where}.type", ("A", "AAAA"))
        address = v.parse_ip(item.get("value"), f"{where}.value", 4 if kind == "A" else 6)
        if not name:
            raise key_error(f"{where}.name", "a DNS name", name)
        records.append({"name": name, "type": kind, "value": address})
    return tuple(records)


def _dns(r: _Reader, server_url: str) -> DNSSettings:
    magic = r.get("dns.magic_dns", v.parse_bool, True)
    base_domain = r.text("dns.base_domain", v.parse_domain, DEFAULT_BASE_DOMAIN) or ""
    override = r.get("dns.override_local_dns", v.parse_bool, True)
    global_ns = r.get("dns.nameservers.global", _nameservers, DEFAULT_NAMESERVERS if not r.has("dns.nameservers.global") else ())
    split = r.get("dns.nameservers.split", _split, {})
    search = tuple(
        v.parse_domain(d, f"{r.name('dns.search_domains')}[{i}]")
        for i, d in enumerate(r.get("dns.search_domains", v.parse_str_list, ()))
    )
    records = r.get("dns.extra_records", _records, ())
    records_path = r.path("dns.extra_records_path", None)

    if magic and not base_domain:
        raise ConfigError(
            f"{r.name('dns.base_domain')}: must be set when dns.magic_dns is true", key="dns.base_domain"
        )
    if override and not global_ns:
        raise ConfigError(
            f"{r.name('dns.nameservers.global')}: at least one nameserver is needed when "
            "dns.override_local_dns is true",
            key="dns.nameservers.global",
        )
    if records and records_path is not None:
        raise ConfigError(
            "dns.extra_records_path: set either dns.extra_records or dns.extra_records_path, not both",
            key="dns.extra_records_path",
        )
    if base_domain:
        _check_base_domain(r.name("dns.base_domain"), base_domain, server_url)
    certificates = _certificates(r, magic, base_domain, server_url)
    return DNSSettings(
        magic_dns=magic,
        base_domain=base_domain,
        override_local_dns=override,
        nameservers_global=global_ns,
        nameservers_split=split,
        search_domains=search,
        extra_records=records,
        extra_records_path=records_path,
        certificates=certificates,
    )


def _certificates(r: _Reader, magic: bool, base_domain: str, server_url: str) -> CertificateSettings:
    """``dns.certificates``: the zone is base_domain, so MagicDNS names are certificate names.
    Every key is read (and its type checked) even when the feature is off."""
    enabled = r.get("dns.certificates.enabled", v.parse_bool, False)
    provider = r.get(
        "dns.certificates.provider", lambda x, k: v.parse_choice(x, k, ("embedded", "rfc2136", "cloudflare")),
        "embedded",
    )
    listen = r.get("dns.certificates.listen_addr", lambda x, k: v.parse_host_port(x, k, ":53"), ":53")
    ns_name = r.text("dns.certificates.ns_name", v.parse_domain, None) or ""
    rfc2136 = _rfc2136(r, base_domain, needed=enabled and provider == "rfc2136")
    cloudflare = _cloudflare(r, needed=enabled and provider == "cloudflare")
    if not enabled:
        return CertificateSettings(enabled=False, provider=provider, listen_addr=listen, ns_name=ns_name)
    if not magic or not base_domain:
        raise ConfigError(
            "dns.certificates.enabled: certificates are for MagicDNS names; needs dns.magic_dns true and "
            "dns.base_domain", key="dns.certificates.enabled",
        )
    if base_domain.rsplit(".", 1)[-1] in PRIVATE_TLDS or "." not in base_domain:
        raise ConfigError(
            f"dns.certificates.enabled: dns.base_domain {base_domain!r} cannot be delegated in public DNS, so no "
            "certificate authority can check a name under it; use a subdomain of a domain you own, such as "
            "ts.example.com", key="dns.base_domain",
        )
    if provider == "embedded":
        ns_name = ns_name or _ns_name_from(server_url)
        if ns_name == base_domain or ns_name.endswith("." + base_domain):
            raise ConfigError(
                f"dns.certificates.ns_name: {ns_name} is inside the zone {base_domain} it serves, which would "
                "need glue records; use a name outside it, such as server_url's host",
                key="dns.certificates.ns_name",
            )
    return CertificateSettings(
        enabled=True, provider=provider, listen_addr=listen, ns_name=ns_name, rfc2136=rfc2136,
        cloudflare=cloudflare,
    )


def _ns_name_from(server_url: str) -> str:
    host = (urlsplit(server_url).hostname or "").lower()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    raise ConfigError(
        f"dns.certificates.ns_name: server_url's host is an IP address ({host}); give the DNS name of this "
        "server, which the zone's NS record will name", key="dns.certificates.ns_name",
    )


def _rfc2136(r: _Reader, base_domain: str, *, needed: bool) -> RFC2136Settings | None:
    prefix = "dns.certificates.rfc2136."
    server = r.text(prefix + "server", lambda x, k: v.parse_host_port(x, k, "192.0.2.53:53"), None)
    zone = r.text(prefix + "zone", v.parse_domain, None) or base_domain
    key_name = r.text(prefix + "tsig_key_name", v.parse_str, None)
    algorithm = r.get(prefix + "tsig_algorithm", lambda x, k: v.parse_choice(x, k, TSIG_ALGORITHMS), "hmac-sha256")
    _secret(r, prefix + "tsig_secret", needed=False)  # types only: the rest is said in order below
    if not needed:
        return None
    if not server or v.split_host_port(server)[0] == "":
        raise ConfigError(
            f"{prefix}server: the zone's primary DNS server is needed, as host:port such as 192.0.2.53:53",
            key=prefix + "server",
        )
    if base_domain != zone and not base_domain.endswith("." + zone):
        raise ConfigError(f"{prefix}zone: dns.base_domain {base_domain} is not inside the zone {zone}",
                          key=prefix + "zone")
    if not key_name:
        raise ConfigError(f"{prefix}tsig_key_name: the name of the TSIG key is needed", key=prefix + "tsig_key_name")
    secret = _secret(r, prefix + "tsig_secret", needed=True)
    try:
        if not base64.b64decode(secret, validate=True):
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"{prefix}tsig_secret: expected the key's secret in base64, as tsig-keygen prints it",
            key=prefix + "tsig_secret",
        ) from None
    return RFC2136Settings(server=server, zone=zone, tsig_key_name=key_name.rstrip("."),
                           tsig_algorithm=algorithm, tsig_secret=secret)


def _cloudflare(r: _Reader, *, needed: bool) -> CloudflareSettings | None:
    prefix = "dns.certificates.cloudflare."
    token = _secret(r, prefix + "api_token", needed=needed)
    zone_id = r.text(prefix + "zone_id", v.parse_str, None)
    api_url = r.text(prefix + "api_url", v.parse_http_url, None) or CLOUDFLARE_API
    if not needed:
        return None
    return CloudflareSettings(api_token=token, zone_id=zone_id or None, api_url=api_url.rstrip("/"))


def _secret(r: _Reader, key: str, *, needed: bool, optional: bool = False) -> str:
    """A secret given inline as ``key`` or in the file ``key_path`` (exactly one; with
    ``optional``, neither gives "")."""
    inline = r.text(key, v.parse_str, None)
    path = r.path(key + "_path", None)
    if inline and path is not None:
        raise ConfigError(f"{key}_path: set either {key} or {key}_path, not both", key=key + "_path")
    if not needed:
        return ""
    if path is not None:
        try:
            inline = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{r.name(key + '_path')}: cannot read {path}: {e}", key=key + "_path") from None
    if not inline or not inline.strip():
        if optional and path is None:
            return ""
        raise ConfigError(f"{key}: needed (or {key}_path, a file holding it)", key=key)
    return inline.strip()


def _check_base_domain(key: str, base_domain: str, server_url: str) -> None:
    # Clients resolve every name under base_domain through MagicDNS, so a
    # server_url under it would make the control server (and its DERP)
    # unreachable from the tailnet.
    host = (urlsplit(server_url).hostname or "").lower().rstrip(".")
    if host == base_domain or host.endswith("." + base_domain):
        raise ConfigError(
            f"{key}: must not be server_url's host ({host}) or a domain above it, "
            "or clients could no longer reach this server; choose another base domain",
            key="dns.base_domain",
        )


def _derp(r: _Reader, data_dir: Path) -> DERPSettings:
    enabled = r.get("derp.server.enabled", v.parse_bool, True)
    stun = r.text("derp.server.stun_listen_addr", lambda x, k: v.parse_host_port(x, k, "0.0.0.0:3478"), "0.0.0.0:3478")
    auto_add = r.get("derp.server.automatically_add_embedded_derp_region", v.parse_bool, True)
    urls = tuple(
        v.parse_http_url(u, f"{r.name('derp.urls')}[{i}]")
        for i, u in enumerate(r.get("derp.urls", v.parse_str_list, ()))
    )
    paths = tuple(
        r.to_path(p, f"{r.name('derp.paths')}[{i}]") for i, p in enumerate(r.get("derp.paths", v.parse_str_list, ()))
    )
    if enabled and stun is None:
        raise ConfigError(
            "derp.server.stun_listen_addr: must be set when derp.server.enabled is true",
            key="derp.server.stun_listen_addr",
        )
    if enabled and not auto_add and not paths:
        raise ConfigError(
            "derp.paths: with derp.server.automatically_add_embedded_derp_region false, the embedded "
            "DERP server must be described in a file listed in derp.paths",
            key="derp.paths",
        )
    mesh_key_path = r.path("derp.server.mesh_key_path", None)
    mesh_with = tuple(
        v.parse_http_url(u, f"{r.name('derp.server.mesh_with')}[{i}]", bare=True)
        for i, u in enumerate(r.get("derp.server.mesh_with", v.parse_str_list, ()))
    )
    if mesh_with and mesh_key_path is None:
        raise ConfigError(
            "derp.server.mesh_with: meshing needs the region's key in derp.server.mesh_key_path",
            key="derp.server.mesh_with",
        )
    if not enabled and not urls and not paths:
        log.warning("no DERP servers configured: nodes that cannot reach each other directly will not connect")
    return DERPSettings(
        server_enabled=enabled,
        region_id=r.get("derp.server.region_id", lambda x, k: v.parse_int(x, k, minimum=1), 999),
        region_code=r.get("derp.server.region_code", v.parse_str, "trioscale"),
        region_name=r.get("derp.server.region_name", v.parse_str, "trioscale embedded DERP"),
        stun_listen_addr=stun,
        private_key_path=r.path("derp.server.private_key_path", data_dir / "derp_server_private.key"),
        verify_clients=r.get("derp.server.verify_clients", v.parse_bool, True),
        ipv4=r.text("derp.server.ipv4", lambda x, k: v.parse_ip(x, k, 4), None),
        ipv6=r.text("derp.server.ipv6", lambda x, k: v.parse_ip(x, k, 6), None),
        automatically_add_embedded_derp_region=auto_add,
        urls=urls,
        paths=paths,
        auto_update_enabled=r.get("derp.auto_update_enabled", v.parse_bool, True),
        update_frequency=r.get("derp.update_frequency", _update_frequency, timedelta(hours=3)),
        mesh_key_path=mesh_key_path,
        mesh_with=mesh_with,
        workers=r.get("derp.server.workers", _workers, 0),
    )


# More relay workers than this is a typo, not a machine.
MAX_WORKERS = 64


def _workers(value: object, key: str) -> int:
    n = v.parse_int(value, key, minimum=0)
    if n > MAX_WORKERS:
        raise ConfigError(f"{key}: at most {MAX_WORKERS} (0 means one per core)", key=key)
    return n


def _update_frequency(value: object, key: str) -> timedelta:
    delta = v.parse_duration(value, key)
    if delta < timedelta(seconds=1):
        raise key_error(key, "a duration of at least 1s", value)
    return delta


def _policy(r: _Reader) -> PolicySettings:
    mode = r.get("policy.mode", lambda x, k: v.parse_choice(x, k, ("file", "database")), "file")
    return PolicySettings(mode=mode, path=r.path("policy.path", None))


def _limits(r: _Reader) -> LimitsSettings:
    default = LimitsSettings()
    total = r.get("limits.max_connections", lambda x, k: v.parse_int(x, k, minimum=1), default.max_connections)
    per_source = r.get("limits.max_connections_per_source", lambda x, k: v.parse_int(x, k, minimum=1),
                       default.max_connections_per_source)
    return LimitsSettings(max_connections=total, max_connections_per_source=per_source)


WEBHOOK_KEYS = ("url", "secret", "secret_path", "events")
MIN_WEBHOOK_SECRET = 16  # characters: a shorter HMAC key is guessable


def _webhooks(r: _Reader) -> tuple[WebhookSettings, ...]:
    """``webhooks:``: a list of {url, secret | secret_path, events}; events default to all."""
    value = r.values.get("webhooks")
    if value is None:
        return ()
    out = []
    for at, entry in _entries(value, r.name("webhooks"), "a list of {url, secret, events}", WEBHOOK_KEYS,
                              f"a webhook has {', '.join(WEBHOOK_KEYS)}"):
        url = v.parse_http_url(entry.get("url"), f"{at}.url")
        secret = entry.get("secret")
        path = entry.get("secret_path")
        if (secret is None) == (path is None):
            raise ConfigError(f"{at}: set exactly one of secret and secret_path", key="webhooks")
        secret_path = None
        if path is not None:
            secret_path = r.to_path(path, f"{at}.secret_path")
            try:
                secret = secret_path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"{at}.secret_path: cannot read {secret_path}: {e}", key="webhooks") from None
        secret = v.parse_str(secret, f"{at}.secret").strip()
        if len(secret) < MIN_WEBHOOK_SECRET:
            raise ConfigError(f"{at}.secret: at least {MIN_WEBHOOK_SECRET} characters "
                              "(`openssl rand -hex 32` makes one)", key="webhooks")
        events = v.parse_str_list(entry.get("events", [ALL]), f"{at}.events") or (ALL,)
        for e in events:
            if e != ALL and e not in EVENT_TYPES:
                raise ConfigError(f"{at}.events: {e!r} is not an event; use {ALL!r} or some of "
                                  f"{', '.join(EVENT_TYPES)}", key="webhooks")
        out.append(WebhookSettings(url=url, secret=secret, events=tuple(events), secret_path=secret_path))
    return tuple(out)


def _log(r: _Reader) -> LogSettings:
    level = r.get("log.level", _log_level, "info")
    fmt = r.text("log.format", lambda x, k: v.parse_choice(x, k, ("text", "json")), "text") or "text"
    return LogSettings(level=level, format=fmt)


def _log_level(value: object, key: str) -> str:
    if isinstance(value, str):
        text = value.strip().lower()
        text = "warn" if text == "warning" else text
        if text in LOG_LEVELS:
            return text
    raise key_error(key, "one of " + ", ".join(LOG_LEVELS), value)


def _tls(r: _Reader, data_dir: Path, listen_addr: str) -> TLSSettings:
    cert = r.path("tls_cert_path", None)
    key = r.path("tls_key_path", None)
    hostname = r.text("tls_letsencrypt_hostname", v.parse_domain, None)
    challenge = r.get(
        "tls_letsencrypt_challenge_type",
        lambda x, k: v.parse_choice(x, k, ("HTTP-01", "TLS-ALPN-01")),
        "HTTP-01",
    )
    if hostname and (cert or key):
        raise ConfigError(
            "tls_letsencrypt_hostname: set either tls_letsencrypt_hostname or tls_cert_path/tls_key_path, not both",
            key="tls_letsencrypt_hostname",
        )
    if (cert is None) != (key is None):
        missing = "tls_key_path" if key is None else "tls_cert_path"
        raise ConfigError(f"{missing}: tls_cert_path and tls_key_path must be set together", key=missing)
    if hostname and challenge == "TLS-ALPN-01" and v.split_host_port(listen_addr)[1] != 443:
        # Only a warning: a port forward may bring :443 to us.
        log.warning("tls_letsencrypt_challenge_type TLS-ALPN-01 needs port 443, but listen_addr is %s", listen_addr)
    return TLSSettings(
        cert_path=cert,
        key_path=key,
        letsencrypt_hostname=hostname,
        letsencrypt_challenge_type=challenge,
        letsencrypt_listen=r.get(
            "tls_letsencrypt_listen", lambda x, k: v.parse_host_port(x, k, ":http"), ":http"
        ),
        letsencrypt_cache_dir=r.path("tls_letsencrypt_cache_dir", data_dir / "cache"),
        acme_url=r.text("acme_url", v.parse_http_url, LETS_ENCRYPT_DIRECTORY) or LETS_ENCRYPT_DIRECTORY,
        acme_email=r.text("acme_email", v.parse_str, None),
        acme_ca_bundle=r.path("acme_ca_bundle", None),
    )


def _trusted_proxies(r: _Reader) -> tuple:
    name = r.name("trusted_proxies")
    result = []
    for i, text in enumerate(r.get("trusted_proxies", v.parse_str_list, ())):
        net = v.parse_any_prefix(text, f"{name}[{i}]")
        if net.prefixlen == 0:
            # Trusting every address lets any client forge its logged source.
            raise key_error(f"{name}[{i}]", "a proxy's address range, not all of 0.0.0.0/0 or ::/0", text)
        result.append(net)
    return tuple(result)


def _extras(r: _Reader) -> dict[str, Any]:
    extras: dict[str, Any] = {}
    for key, (parse, default) in schema.EXTRA_KEYS.items():
        value = r.get(key, parse, default)
        if value is not schema.OPTIONAL:
            extras[key] = value
    if extras.get("oidc.client_secret") and extras.get("oidc.client_secret_path"):
        raise ConfigError(
            "oidc.client_secret_path: set either oidc.client_secret or oidc.client_secret_path, not both",
            key="oidc.client_secret_path",
        )
    return extras
