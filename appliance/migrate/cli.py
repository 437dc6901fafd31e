"""The CLI verbs: ``import headscale``, ``import trioscale``, ``export`` and ``db migrate``."""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import MigrateError


def add_verbs(sub, cmd, with_config) -> None:
    """Add the verbs to trioscale's top-level subparsers (``cmd`` and ``with_config`` are
    cli.py's helpers)."""
    imp = with_config(sub.add_parser("import", help="move a tailnet in: from Headscale, or from a trioscale export"))
    which = imp.add_subparsers(dest="sub", required=True)
    p = cmd(which, "headscale", do_import_headscale,
            "take over a Headscale server: its database, Noise key and configuration (clients stay logged in)")
    p.add_argument("--from", dest="from_config", required=True, metavar="CONFIG",
                   help="Headscale's config.yaml (it says where the database and the Noise key are)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--db", metavar="PATH", help="Headscale's SQLite database (default: from its config)")
    src.add_argument("--postgres", metavar="DSN", help="Headscale's PostgreSQL database, as a libpq DSN or URL "
                     "(default: database.postgres.* from its config)")
    p.add_argument("--noise-key", metavar="PATH", help="Headscale's Noise private key (default: from its config)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the report, write nothing")
    p = cmd(which, "trioscale", do_import_trioscale, "read a `trioscale export` document into this (empty) server")
    p.add_argument("file")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the report, write nothing")
    db = with_config(sub.add_parser("db", help="the database: move the tailnet between SQLite and PostgreSQL"))
    dbverbs = db.add_subparsers(dest="sub", required=True)
    p = cmd(dbverbs, "migrate", do_db_migrate, "copy the tailnet from SQLite (database.sqlite.path) into PostgreSQL "
            "(database.postgres.*), or back with --to sqlite; every server must be stopped")
    p.add_argument("--to", required=True, choices=["postgres", "sqlite"], help="the engine to copy into")
    p = cmd(sub, "export", do_export, "write everything (users, nodes, keys, policy, the server's private keys) "
            "to one JSON document, mode 0600")
    p.add_argument("file")


def _run(plan_fn, dry_run: bool) -> int:
    from . import importer

    try:
        plan = plan_fn()
        if not dry_run:
            importer.execute(plan)
    except MigrateError as e:
        print(f"trioscale: import refused: {e}", file=sys.stderr)
        return 1
    print(plan.render(dry_run), end="")
    return 0


def do_import_headscale(args) -> int:
    from .importer import plan_headscale

    return _run(lambda: plan_headscale(Path(args.from_config), config=getattr(args, "config", None), db=args.db,
                                       postgres=args.postgres, noise_key=args.noise_key), args.dry_run)


def do_import_trioscale(args) -> int:
    from .importer import plan_trioscale

    return _run(lambda: plan_trioscale(Path(args.file), config=getattr(args, "config", None)), args.dry_run)


def do_db_migrate(args) -> int:
    from ..config import ConfigError, load_config
    from .dbcopy import copy_between_engines

    try:
        cfg = load_config(getattr(args, "config", None))
        report = copy_between_engines(cfg, args.to)
    except (MigrateError, ConfigError) as e:
        print(f"trioscale: db migrate refused: {e}", file=sys.stderr)
        return 1
    print(report.render(str(cfg.path or "the configuration"), args.to), end="")
    return 0


def do_export(args) -> int:
    from .importer import export_to

    try:
        report = export_to(Path(args.file), config=getattr(args, "config", None))
    except MigrateError as e:
        print(f"trioscale: export failed: {e}", file=sys.stderr)
        return 1
    print(f"exported {', '.join(f'{n} {w}' for w, n in report.counts.items())} from {report.source} to {args.file}")
    return 0
