"""Planning and writing an import into trioscale's own state: its database, its Noise and DERP
key files and (from Headscale) its config file.

A plan is built and checked completely before anything is written: the source read, the
configuration converted and loaded, the policy compiled against the imported tailnet. A dry
run stops there. Writing refuses a running server and a database that already holds a tailnet;
the data goes into the database in one transaction (Store.import_snapshot).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import trio
import yaml

from ..config import ConfigError, load_config
from ..config.load import SYSTEM_CONFIG_PATH, config_from_dict, find_config_file
from ..config.model import Config
from ..keys import KeyFormatError, decode_key, encode_key, public_key
from ..policy import PolicyEngine, PolicyError
from ..storage import KeyMismatch, Store, StoreError, open_store
from ..storage.records import Snapshot
from ..tailnet.policy import policy_node, policy_user
from . import snapshot as exportdoc
from .errors import ImportRefused
from .headscale import Report, apply_request_tags, counts, read_headscale
from .hsconfig import DEFAULT_NOISE_KEY, DEFAULT_SQLITE, convert_config, read_headscale_config
from .source import PostgresSource, SQLiteSource

DEFAULT_DERP_KEY = "/var/lib/headscale/derp_server_private.key"


@dataclass
class Plan:
    what: str  # one line: what is imported from where
    snapshot: Snapshot
    report: Report
    config: Config  # trioscale's configuration after the import
    noise_key: bytes
    derp_key: bytes | None = None
    config_path: Path | None = None  # written when config_document is set
    config_document: dict[str, Any] | None = None
    steps: list[str] = field(default_factory=list)

    def render(self, dry_run: bool) -> str:
        lines = [self.what, *(f"  {s}" for s in self.steps), *self.report.lines()]
        lines.append("dry run: nothing was written" if dry_run else "done")
        return "\n".join(lines) + "\n"


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def target_config_path(explicit: str | None) -> Path:
    """Where trioscale's configuration is (or will be): -c, else the file trioscale would read,
    else the system file as root and the user's file otherwise."""
    if explicit:
        return Path(explicit).resolve()
    found = find_config_file()
    if found is not None:
        return found.resolve()
    if os.geteuid() == 0:
        return SYSTEM_CONFIG_PATH
    return Path.home() / ".config" / "trioscale" / "config.yaml"


def _read_private_key(path: Path, what: str) -> bytes:
    try:
        text = path.read_text(encoding="ascii").strip()
    except OSError as e:
        raise ImportRefused(f"{what} {path}: cannot read it: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ImportRefused(f"{what} {path}: not a privkey: file") from None
    try:
        return decode_key("privkey", text)
    except KeyFormatError as e:
        raise ImportRefused(f"{what} {path}: {e}") from None


def plan_headscale(from_config: Path, *, config: str | None, db: str | None = None,
                   postgres: str | None = None, noise_key: str | None = None) -> Plan:
    """Everything ``import headscale`` would do. Raises ImportRefused; writes nothing."""
    hs = read_headscale_config(from_config)
    target = target_config_path(config)
    existing = None
    if target.exists():
        try:
            existing = yaml.safe_load(target.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
            raise ImportRefused(f"{target}: cannot read trioscale's configuration: {e}") from None
        if not isinstance(existing, dict):
            raise ImportRefused(f"{target}: trioscale's configuration is not a mapping of keys")
    converted = convert_config(hs, existing)
    try:
        cfg = config_from_dict(converted.document, path=target)
    except ConfigError as e:
        raise ImportRefused(f"Headscale's configuration does not make a valid trioscale one: {e}") from None

    if postgres or (not db and hs.db_type == "postgres"):
        src = PostgresSource(postgres or hs.postgres_dsn())
    elif db or hs.db_type == "sqlite":
        src = SQLiteSource(Path(db).resolve() if db else hs.file_path("database.sqlite.path", DEFAULT_SQLITE))
    else:
        raise ImportRefused(f"{hs.path}: database.type {hs.db_type!r} is neither sqlite nor postgres")
    with src:
        imported = read_headscale(src, now=_now())
    report = imported.report
    report.changed += [f"config {c}" for c in converted.changed]
    report.dropped += [f"config {d}" for d in converted.dropped]

    snapshot = imported.snapshot
    if cfg.policy.mode == "file" and snapshot.policies:
        report.dropped.append(f"the policy stored in Headscale's database: policy.mode is file, so "
                              f"{cfg.policy.path} stays in force")
        snapshot = replace(snapshot, policies=())
        imported.snapshot = snapshot
    engine = _check_policy(cfg, snapshot)
    snapshot = apply_request_tags(imported, engine.owns_tag if engine else (lambda uid, tag: False))

    noise_path = Path(noise_key).resolve() if noise_key else hs.file_path("noise.private_key_path", DEFAULT_NOISE_KEY)
    noise = _read_private_key(noise_path, "Headscale's Noise key")
    derp_path = hs.file_path("derp.server.private_key_path", DEFAULT_DERP_KEY)
    derp = _read_private_key(derp_path, "Headscale's DERP key") if derp_path and derp_path.exists() else None
    plan = Plan(
        what=f"import {report.source} into trioscale",
        snapshot=snapshot, report=report, config=cfg, noise_key=noise, derp_key=derp,
        config_path=target, config_document=converted.document,
    )
    plan.steps = [
        f"database:  {database_name(cfg)} (new; one transaction)",
        f"noise key: {noise_path} -> {cfg.noise_private_key_path} (public key "
        f"mkey:{public_key(noise).hex()[:16]}...)",
        *([f"derp key:  {derp_path} -> {cfg.derp.private_key_path}"] if derp else []),
        f"config:    {hs.path} -> {target}" + (" (the old file kept as .before-import)" if existing else ""),
    ]
    return plan


def plan_trioscale(file: Path, *, config: str | None) -> Plan:
    """Everything ``import trioscale FILE`` would do. Raises ImportRefused; writes nothing."""
    try:
        text = Path(file).read_bytes()
    except OSError as e:
        raise ImportRefused(f"{file}: cannot read it: {e.strerror or e}") from None
    export = exportdoc.loads(text)
    cfg = _load(config)
    s = export.snapshot
    report = Report(source=f"trioscale export {file}", counts=counts(s))
    _check_policy(cfg, s)
    plan = Plan(what=f"import {report.source} into trioscale", snapshot=s, report=report, config=cfg,
                noise_key=export.noise_private_key, derp_key=export.derp_private_key)
    plan.steps = [f"database:  {database_name(cfg)} (new; one transaction)",
                  f"noise key: -> {cfg.noise_private_key_path}",
                  *([f"derp key:  -> {cfg.derp.private_key_path}"] if export.derp_private_key else [])]
    return plan


def _load(config: str | None) -> Config:
    try:
        return load_config(config)
    except ConfigError as e:
        raise ImportRefused(f"trioscale's configuration: {e}") from None


def _check_policy(cfg: Config, s: Snapshot) -> PolicyEngine | None:
    """The policy trioscale will start with, compiled against the imported tailnet: one it
    would refuse stops the import now rather than the server later."""
    if cfg.policy.mode == "database":
        text = s.policies[-1].data if s.policies else None
        where = "the policy in the database"
    elif cfg.policy.path is not None:
        where = str(cfg.policy.path)
        try:
            text = cfg.policy.path.read_text(encoding="utf-8")
        except OSError as e:
            raise ImportRefused(f"policy.path {where}: cannot read it: {e.strerror or e}") from None
    else:
        return None
    if text is None or not text.strip():
        return None
    try:
        engine = PolicyEngine(None, [policy_user(u) for u in s.users], [policy_node(n) for n in s.nodes],
                              server_url=cfg.server_url)
        engine.set_policy(text)
    except PolicyError as e:
        raise ImportRefused(f"{where}: trioscale would refuse this policy: {e}") from None
    return engine


# --- writing ----------------------------------------------------------------------------


def database_name(cfg: Config) -> str:
    """The configured database, for messages: the SQLite file, or the PostgreSQL database."""
    if cfg.database.type == "postgres":
        from ..storage.postgres import describe

        return describe(cfg.database.postgres)
    return str(cfg.database.sqlite_path)


async def take_store(store: Store, noise_public: str, name: str = "trioscale (a command line tool)") -> None:
    """Hold ``store``'s active role for a command that writes (an import, a copy): refused,
    StoreError, while a server holds it, so nothing is written under a running server."""
    try:
        lease = await store.try_become_active(name, noise_public)
    except KeyMismatch as e:
        raise StoreError(str(e)) from None
    if lease is None:
        active = (await store.cluster_status()).active
        raise StoreError(f"a trioscale server is active on it ({active or 'another process'}): stop every "
                         "server that uses this database first")


def _server_running(cfg: Config) -> bool:
    if not cfg.unix_socket.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(str(cfg.unix_socket))
        except OSError:
            return False
    return True


def _write_file(path: Path, data: bytes, mode: int, *, keep_old: bool) -> None:
    """Atomic replace; an existing file with other contents is kept beside as .before-import."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists():
        if path.read_bytes() == data:
            return
        if keep_old:
            os.replace(path, path.with_name(path.name + ".before-import"))
    tmp = path.with_name(f".{path.name}.import-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def execute(plan: Plan) -> None:
    """Write the plan. Raises ImportRefused (nothing written) when trioscale is running or its
    database already holds a tailnet."""
    cfg = plan.config
    if _server_running(cfg):
        raise ImportRefused(f"trioscale is running (it answers on {cfg.unix_socket}): stop it first")
    noise_public = encode_key("mkey", public_key(plan.noise_key))

    async def write() -> None:
        store = open_store(cfg.database)
        try:
            await take_store(store, noise_public)
            await store.import_snapshot(plan.snapshot)
        finally:
            store.close()

    try:
        trio.run(write)
    except StoreError as e:
        raise ImportRefused(f"{database_name(cfg)}: {e}") from None
    written = [cfg.database.sqlite_path] if cfg.database.type == "sqlite" else []
    key_text = f"privkey:{plan.noise_key.hex()}\n".encode()
    _write_file(cfg.noise_private_key_path, key_text, 0o600, keep_old=True)
    written.append(cfg.noise_private_key_path)
    if plan.derp_key is not None:
        _write_file(cfg.derp.private_key_path, f"privkey:{plan.derp_key.hex()}\n".encode(), 0o600, keep_old=True)
        written.append(cfg.derp.private_key_path)
    if plan.config_document is not None and plan.config_path is not None:
        header = ("# trioscale configuration, converted from Headscale's by `trioscale import headscale`.\n"
                  "# Every key is documented in trioscale's config-example.yaml.\n")
        body = yaml.safe_dump(plan.config_document, sort_keys=False, allow_unicode=True)
        mode = plan.config_path.stat().st_mode & 0o777 if plan.config_path.exists() else 0o640
        _write_file(plan.config_path, (header + body).encode(), mode, keep_old=True)
    _hand_over(cfg.data_dir, written)


def _hand_over(data_dir: Path, paths: list[Path]) -> None:
    """As root, give the files written to the owner of the data directory (the service user
    that `trioscale install` made), so the server can open them."""
    if os.geteuid() != 0 or not data_dir.exists():
        return
    st = data_dir.stat()
    for p in paths:
        for f in (p, p.with_name(p.name + "-wal"), p.with_name(p.name + "-shm")):
            if f.exists():
                os.chown(f, st.st_uid, st.st_gid)


# --- export -----------------------------------------------------------------------------


def export_to(file: Path, *, config: str | None) -> Report:
    """Write the export document of trioscale's state to ``file`` (0600). The server may be
    running: the database is read in one transaction."""
    cfg = _load(config)
    db = cfg.database.sqlite_path
    if cfg.database.type == "sqlite" and not db.exists():
        raise ImportRefused(f"{db}: no trioscale database here (is -c the server's configuration?)")
    noise = _read_private_key(cfg.noise_private_key_path, "the Noise key")
    derp = _read_private_key(cfg.derp.private_key_path, "the DERP key") if cfg.derp.private_key_path.exists() else None

    async def read() -> Snapshot:
        store = open_store(cfg.database)
        try:
            return await store.export_snapshot()
        finally:
            store.close()

    try:
        s = trio.run(read)
    except StoreError as e:
        raise ImportRefused(str(e)) from None
    text = exportdoc.dumps(exportdoc.Export(s, noise, derp))
    _write_file(Path(file), text.encode(), 0o600, keep_old=False)
    return Report(source=database_name(cfg), counts=counts(s))
