"""``trioscale db migrate --to postgres`` (and ``--to sqlite``): the same tailnet moved from one
engine to the other, nothing lost.

The source is the engine ``--to`` does not name, both read from the configuration
(``database.sqlite.path`` and ``database.postgres.*``). Every trioscale server using either must
be stopped: the admin socket must not answer, and on PostgreSQL the command takes the active
lease itself for the whole copy, so no server can start writing meanwhile. The copy is one
snapshot of the source written into an empty target in one transaction, with the IDs' counters
(an ID deleted before the copy is never handed out after it), then read back and compared.
Clients are not touched: they keep their keys, addresses and node IDs, and reconnect to the
server started on the target with the same Noise key.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import trio

from ..config.model import Config
from ..keys import encode_key, public_key
from ..storage import StoreError, open_store
from .errors import ImportRefused
from .headscale import counts
from .importer import _read_private_key, _server_running, database_name, take_store

ENGINES = ("postgres", "sqlite")


@dataclass(frozen=True)
class CopyReport:
    source: str
    target: str
    counts: dict[str, int]

    def render(self, config_file: str, to: str) -> str:
        carried = ", ".join(f"{n} {what}" for what, n in self.counts.items())
        return (f"copied {carried}\n  from {self.source}\n  to   {self.target}\n"
                f"next: set database.type: {to} in {config_file}, then start trioscale "
                "(clients reconnect by themselves)\n")


def copy_between_engines(cfg: Config, to: str) -> CopyReport:
    """Copy the tailnet from the other engine into ``to`` (see the module docstring). Raises
    ImportRefused with what to fix; the target is left as it was when refused."""
    if to not in ENGINES:
        raise ImportRefused(f"--to {to!r}: expected one of {', '.join(ENGINES)}")
    if cfg.database.postgres is None:
        raise ImportRefused("database.postgres.name (and host, user, pass...) must name the PostgreSQL database "
                            f"in {cfg.path or 'the configuration'}")
    if _server_running(cfg):
        raise ImportRefused(f"trioscale is running (it answers on {cfg.unix_socket}): stop it first")
    source_cfg = replace(cfg.database, type="sqlite" if to == "postgres" else "postgres")
    target_cfg = replace(cfg.database, type=to)
    if source_cfg.type == "sqlite" and not source_cfg.sqlite_path.exists():
        raise ImportRefused(f"{source_cfg.sqlite_path}: no trioscale database here to copy")
    noise = _read_private_key(cfg.noise_private_key_path, "the server's Noise key")
    noise_public = encode_key("mkey", public_key(noise))
    new_file = target_cfg.type == "sqlite" and not target_cfg.sqlite_path.exists()
    source_name = database_name(replace(cfg, database=source_cfg))
    target_name = database_name(replace(cfg, database=target_cfg))

    async def copy() -> dict[str, int]:
        source = open_store(source_cfg)
        try:
            await take_store(source, noise_public)  # no server writes it while it is read
            snapshot = await source.export_snapshot()
            target = open_store(target_cfg)
            try:
                await take_store(target, noise_public)
                await target.import_snapshot(snapshot)
                if await target.export_snapshot() != snapshot:
                    raise StoreError("the copy does not read back the same as its source")
            finally:
                target.close()
        finally:
            source.close()
        return counts(snapshot)

    try:
        copied = trio.run(copy)
    except StoreError as e:
        if new_file:  # made by this attempt: gone with it
            for suffix in ("", "-wal", "-shm"):
                target_cfg.sqlite_path.with_name(target_cfg.sqlite_path.name + suffix).unlink(missing_ok=True)
        raise ImportRefused(str(e)) from None
    return CopyReport(source_name, target_name, copied)
