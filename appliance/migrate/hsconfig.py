"""Headscale's config.yaml: where its state is, and the same settings as trioscale's config.

trioscale reads Headscale's keys itself (appliance/config), so converting is mostly keeping
them. What is not kept, and why:
- where Headscale keeps its own state (database.*, noise.private_key_path, unix_socket,
  derp.server.private_key_path, tls_letsencrypt_cache_dir): trioscale keeps its own in its
  data directory; the Noise and DERP keys are copied there;
- keys trioscale does not know, and keys Headscale itself refuses (appliance/config/schema.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import schema
from .errors import ImportRefused

# Headscale's defaults (its config-example.yaml) where a key is absent.
DEFAULT_SQLITE = "/var/lib/headscale/db.sqlite"
DEFAULT_NOISE_KEY = "/var/lib/headscale/noise_private.key"

# Keys that say where Headscale keeps its own state; trioscale's state lives in its data_dir.
STATE_KEYS: dict[str, str] = {
    "noise.private_key_path": "the Noise key is copied into trioscale's data directory",
    "derp.server.private_key_path": "the DERP key is copied into trioscale's data directory",
    "unix_socket": "trioscale's admin socket lives in its data directory",
    "tls_letsencrypt_cache_dir": "Headscale's certificate cache is not trioscale's format: trioscale "
                                 "obtains its own certificate at first start",
}
# Paths that keep meaning the same file: made absolute, since they move to another config file.
PATH_KEYS = ("policy.path", "tls_cert_path", "tls_key_path", "dns.extra_records_path",
             "oidc.client_secret_path", "acme_ca_bundle")


@dataclass
class HeadscaleConfig:
    path: Path
    settings: dict[str, Any]  # dotted key (current spelling) -> value, as written
    unknown: list[str] = field(default_factory=list)
    removed: dict[str, str] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        value = self.settings.get(key)
        return default if value is None or value == "" else value

    def file_path(self, key: str, default: str | None) -> Path | None:
        """A path setting; relative ones are taken from the config file's directory."""
        value = self.get(key, default)
        return None if value is None else (self.path.parent / str(value)).resolve()

    @property
    def db_type(self) -> str:
        kind = str(self.get("database.type", "sqlite")).lower()
        return "sqlite" if kind in ("sqlite", "sqlite3") else kind

    def postgres_dsn(self) -> str:
        """A libpq conninfo string from database.postgres.* (or the pre-0.23 db_* keys)."""
        parts = {
            "host": self.get("database.postgres.host"), "port": self.get("database.postgres.port"),
            "dbname": self.get("database.postgres.name"), "user": self.get("database.postgres.user"),
            "password": self.get("database.postgres.pass"),
        }
        ssl = self.get("database.postgres.ssl")
        if ssl is not None:
            text = str(ssl).lower()
            parts["sslmode"] = {"true": "require", "false": "disable"}.get(text, text)
        return " ".join(f"{k}={_quote(str(v))}" for k, v in parts.items() if v is not None)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# Headscale before 0.23 spelled its database keys flat; read them as the current ones.
_OLD_DB_KEYS = {
    "db_host": "database.postgres.host", "db_port": "database.postgres.port",
    "db_name": "database.postgres.name", "db_user": "database.postgres.user",
    "db_pass": "database.postgres.pass", "db_ssl": "database.postgres.ssl",
}


def read_headscale_config(path: Path) -> HeadscaleConfig:
    """Parse Headscale's config.yaml into dotted keys. Raises ImportRefused."""
    path = Path(path).resolve()
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ImportRefused(f"{path}: cannot read Headscale's configuration: {e.strerror or e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ImportRefused(f"{path}: not a YAML file: {e}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ImportRefused(f"{path}: Headscale's configuration must be a mapping of keys")
    out = HeadscaleConfig(path=path, settings={})
    leaves = schema.LEAVES | _OLD_DB_KEYS.keys()

    def walk(mapping: dict, prefix: str) -> None:
        for raw, value in mapping.items():
            key = f"{prefix}{raw}"
            if key in leaves:
                new = _OLD_DB_KEYS.get(key) or schema.ALIASES.get(key, key)
                if key in schema.REMOVED_KEYS:
                    out.removed[key] = schema.REMOVED_KEYS[key]
                elif new not in out.settings or new == key:  # the current spelling wins
                    out.settings[new] = value
            elif key in schema.SECTIONS and isinstance(value, dict):
                walk(value, key + ".")
            elif key not in schema.SECTIONS or value is not None:  # "oidc:" left empty is fine
                out.unknown.append(key)

    walk(doc, "")
    if "randomize_client_port" in out.settings:
        out.removed["randomize_client_port"] = 'set "randomizeClientPort": true in the policy instead'
        del out.settings["randomize_client_port"]
    return out


@dataclass
class ConvertedConfig:
    document: dict[str, Any]
    changed: list[str]
    dropped: list[str]


def convert_config(hs: HeadscaleConfig, existing: dict[str, Any] | None) -> ConvertedConfig:
    """trioscale's configuration document: ``existing`` (trioscale's own file, or nothing) with
    every setting Headscale shares laid over it, so the server keeps Headscale's URL, prefixes,
    DNS, DERP, OIDC and node settings."""
    doc: dict[str, Any] = _copy(existing or {})
    changed: list[str] = []
    dropped: list[str] = []
    for key, value in sorted(hs.settings.items()):
        if key in STATE_KEYS:
            dropped.append(f"{key}: {STATE_KEYS[key]}")
            continue
        if key.startswith("database.") or key in _OLD_DB_KEYS.values():
            continue  # one line for all of them below
        if key in PATH_KEYS and isinstance(value, str) and value:
            value = str((hs.path.parent / value).resolve())
        if key == "derp.paths" and isinstance(value, list):
            value = [str((hs.path.parent / str(p)).resolve()) for p in value]
        before = _get(doc, key)
        if before is not None and before != value:
            changed.append(f"{key}: {before!r} in trioscale's file becomes Headscale's {value!r}")
        _set(doc, key, value)
    if any(k.startswith("database.") for k in hs.settings):
        dropped.append("database.*: trioscale keeps its own SQLite database in its data directory "
                       "(the data is imported into it)")
    if _get(doc, "policy.mode") is None and _get(doc, "policy.path"):
        _set(doc, "policy.mode", "file")
    dropped += [f"{key}: trioscale does not know this key" for key in hs.unknown]
    dropped += [f"{key}: Headscale itself refuses it ({hint})" for key, hint in hs.removed.items()]
    return ConvertedConfig(doc, changed, dropped)


def _copy(doc: dict) -> dict:
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in doc.items()}


def _get(doc: dict, key: str) -> Any:
    node: Any = doc
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(doc: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = doc
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value
