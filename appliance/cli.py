"""``trioscale``: the server and its admin CLI, with Headscale's verbs and flags."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime, timezone
from typing import Any, Callable

from . import __version__
from .adminclient import AdminClient, APIError, ServerUnreachable, api_path
from .audit.changes import changed_fields
from .policy.model import ROLES
from .config import ConfigError, config_to_yaml, load_config, parse_duration


def _with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    # SUPPRESS: a -c given after the verb must not be reset by the subparser's default,
    # so it works before or after the verb, like Headscale's persistent flag.
    p.add_argument("-c", "--config", default=argparse.SUPPRESS, help="config file (default: $TRIOSCALE_CONFIG, /etc/trioscale/config.yaml)")
    return p


def _with_output(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("-o", "--output", choices=["json", "json-line", "yaml", "table"], default="table")
    return p


def build_parser() -> argparse.ArgumentParser:
    top = _with_config(argparse.ArgumentParser(prog="trioscale", description=__doc__))
    sub = top.add_subparsers(dest="cmd", required=True)

    def cmd(parent, name: str, fn: Callable, help: str, aliases=(), output=False):
        p = _with_config(parent.add_parser(name, help=help, aliases=list(aliases)))
        if output:
            _with_output(p)
        p.set_defaults(fn=fn)
        return p

    p = cmd(sub, "serve", do_serve, "run the server")
    p.add_argument("--domain", help="the one-flag appliance: serve https://DOMAIN on :443 with a certificate "
                   "from Let's Encrypt (TLS-ALPN-01), :80 redirecting to https, the embedded DERP relay and "
                   "STUN; overrides the config file's values for these")
    p.add_argument("--email", help="contact address for the ACME account (acme_email)")
    cmd(sub, "certs", certs_show, "show the served TLS certificate (names, issuer, expiry, next renewal) and "
        "the zone of the nodes' certificate names",
        aliases=["cert"], output=True)
    cmd(sub, "configtest", do_configtest, "check the configuration and print the effective one")
    p = cmd(sub, "backup", do_backup, "write a consistent copy of the database to FILE (online while the server runs)")
    p.add_argument("file")
    p = cmd(sub, "restore", do_restore, "replace the database by a backup (the server must be stopped)")
    p.add_argument("file")
    cmd(sub, "version", do_version, "print the version", output=True)
    cmd(sub, "status", do_status, "this server's role (active or standby) and which server is active",
        output=True)
    # Its flags are derp.cli's (like Tailscale's derper); main() hands them over unparsed.
    sub.add_parser("derp", help="run a standalone DERP relay and STUN server (see `trioscale derp --help`)",
                   add_help=False)

    from .install import do_install, do_uninstall

    p = cmd(sub, "install", do_install, "set up this machine: config, user, systemd service (as root)")
    p.add_argument("--domain", help="the DNS name clients reach the server at, e.g. vpn.example.com")
    p.add_argument("--email", help="contact address for the Let's Encrypt account")
    p.add_argument("--cert-domain", help="zone for the machines' certificate names (tailscale cert), e.g. "
                   "ts.example.com: becomes dns.base_domain, served by the embedded DNS server; prints the NS "
                   "record to add")
    p.add_argument("--root", help="install below this directory instead of / and start nothing (for tests and images)")
    p = cmd(sub, "uninstall", do_uninstall, "stop and remove the systemd service (as root); data kept unless --purge")
    p.add_argument("--purge", action="store_true", help="also remove the config, the data and the trioscale user")
    p.add_argument("--root", help="uninstall below this directory instead of / and stop nothing")

    from .migrate.cli import add_verbs as add_migrate_verbs

    add_migrate_verbs(sub, cmd, _with_config)

    users = _with_config(sub.add_parser("users", aliases=["user"], help="manage users")).add_subparsers(dest="sub", required=True)
    p = cmd(users, "create", users_create, "create a user")
    p.add_argument("name")
    p.add_argument("--email", "-e", default="")
    p.add_argument("--display-name", "-d", default="")
    p.add_argument("--picture-url", "-p", default="")
    cmd(users, "list", users_list, "list users", aliases=["ls"], output=True)
    p = cmd(users, "rename", users_rename, "rename a user")
    p.add_argument("old", nargs="?")
    p.add_argument("new", nargs="?")
    p.add_argument("-i", "--identifier", type=int)
    p.add_argument("-n", "--name")
    p.add_argument("-r", "--new-name")
    p = cmd(users, "set-role", users_set_role, "give a user a role (owner hands ownership over)")
    p.add_argument("user", nargs="?")
    p.add_argument("role", nargs="?", choices=ROLES)
    p.add_argument("-i", "--identifier", type=int)
    p.add_argument("-n", "--name")
    p.add_argument("-r", "--role", dest="role_flag", choices=ROLES)
    p = cmd(users, "destroy", users_destroy, "delete a user", aliases=["delete"])
    p.add_argument("user", nargs="?")
    p.add_argument("-i", "--identifier", type=int)
    p.add_argument("-n", "--name")
    p.add_argument("--force", action="store_true", help="accepted for Headscale compatibility")

    keys = _with_config(sub.add_parser("preauthkeys", aliases=["preauthkey"], help="manage pre-auth keys")).add_subparsers(dest="sub", required=True)
    p = cmd(keys, "create", keys_create, "create a pre-auth key (printed alone on stdout)", output=True)
    p.add_argument("-u", "--user")
    p.add_argument("--reusable", action="store_true")
    p.add_argument("--ephemeral", action="store_true")
    p.add_argument("-e", "--expiration", default="1h", help="how long the key stays valid (Go duration, e.g. 1h, 90d)")
    p.add_argument("--tags", default="", help="comma-separated tags for the nodes it registers")
    p.add_argument("--pre-approved", action="store_true",
                   help="its nodes need no device approval (node.approval_required)")
    p = cmd(keys, "list", keys_list, "list pre-auth keys", aliases=["ls"], output=True)
    p.add_argument("-u", "--user")
    p = cmd(keys, "expire", keys_expire, "expire a pre-auth key")
    p.add_argument("key", help="the key, its prefix or its ID")
    p.add_argument("-u", "--user", help="accepted for Headscale compatibility")
    p = cmd(keys, "delete", keys_delete, "delete a pre-auth key (the nodes it registered stay)")
    p.add_argument("-i", "--id", type=int, required=True)

    nodes = _with_config(sub.add_parser("nodes", aliases=["node", "machines"], help="manage nodes")).add_subparsers(dest="sub", required=True)
    p = cmd(nodes, "list", nodes_list, "list nodes", aliases=["ls"], output=True)
    p.add_argument("-u", "--user")
    p = cmd(nodes, "delete", nodes_delete, "delete a node")
    p.add_argument("-i", "--identifier", type=int, required=True)
    p.add_argument("--force", action="store_true", help="accepted for Headscale compatibility")
    p = cmd(nodes, "expire", nodes_expire, "expire a node's key (log it out)", aliases=["logout"])
    p.add_argument("-i", "--identifier", type=int, required=True)
    p = cmd(nodes, "rename", nodes_rename, "rename a node")
    p.add_argument("-i", "--identifier", type=int, required=True)
    p.add_argument("new_name")
    p = cmd(nodes, "tag", nodes_tag, "set a node's tags")
    p.add_argument("-i", "--identifier", type=int, required=True)
    p.add_argument("-t", "--tags", action="append", default=[])
    p = cmd(nodes, "move", nodes_move, "move a node to another user")
    p.add_argument("-i", "--identifier", type=int, required=True)
    p.add_argument("-u", "--user", required=True)
    p = cmd(nodes, "register", nodes_register, "approve an interactive login (same as `auth register`)")
    p.add_argument("-u", "--user", required=True)
    p.add_argument("-k", "--key", required=True, help="the auth ID shown on the login page")
    p = cmd(nodes, "approve", nodes_approve, "approve a node waiting for device approval")
    p.add_argument("-i", "--identifier", type=int, required=True)
    p = cmd(nodes, "list-routes", nodes_list_routes, "routes advertised, approved and primary per node", output=True)
    p.add_argument("-i", "--identifier", type=int)
    p = cmd(nodes, "approve-routes", nodes_approve_routes, "set a node's approved routes")
    p.add_argument("-i", "--identifier", type=int, required=True)
    p.add_argument("-r", "--routes", default="", help="comma-separated prefixes; empty removes all")
    auth = _with_config(sub.add_parser("auth", help="pending logins and SSH checks")).add_subparsers(dest="sub", required=True)
    p = cmd(auth, "register", auth_register, "let a waiting machine join as a user", output=True)
    p.add_argument("--auth-id", required=True, help="the ID on the login page (hskey-authreq-...)")
    p.add_argument("-u", "--user", required=True)
    p = cmd(auth, "approve", auth_approve, "approve a pending SSH check, or a known machine logging in again")
    p.add_argument("--auth-id", required=True)
    p = cmd(auth, "reject", auth_reject, "refuse a pending login or SSH check")
    p.add_argument("--auth-id", required=True)
    cmd(auth, "list", auth_list, "pending logins and SSH checks, with their expiry", aliases=["ls"], output=True)
    from .sso import PRESETS

    sso = _with_config(sub.add_parser("sso", help="sign-in through an identity provider")).add_subparsers(dest="sub", required=True)
    p = cmd(sso, "setup", sso_setup, "set up sign-in with a provider: checks it, then writes the oidc section")
    p.add_argument("provider", choices=sorted(PRESETS))
    p.add_argument("--client-id")
    p.add_argument("--client-secret", help="(asked for when not given; kept in a 0600 file next to the config)")
    p.add_argument("--client-secret-file", help="read the client secret from this file")
    p.add_argument("--domain", help="google: your Workspace domain; okta: your Okta domain")
    p.add_argument("--tenant", help="microsoft: tenant ID or domain")
    p.add_argument("--organization", help="github: organisations allowed to sign in (comma-separated)")
    p.add_argument("--url", help="gitlab, keycloak, authentik, GitHub Enterprise: the base URL")
    p.add_argument("--realm", help="keycloak: the realm")
    p.add_argument("--slug", help="authentik: the application slug")
    p.add_argument("--issuer", help="generic: the issuer URL")
    cmd(sso, "test", sso_test, "check the configured provider: discovery, a dry authorization and token request")
    apikeys = _with_config(sub.add_parser("apikeys", aliases=["apikey"], help="API keys for the HTTP API")).add_subparsers(dest="sub", required=True)
    p = cmd(apikeys, "create", apikeys_create, "create an API key (printed alone on stdout, shown once)")
    p.add_argument("-e", "--expiration", default="90d")
    cmd(apikeys, "list", apikeys_list, "list API keys", aliases=["ls"], output=True)
    for verb, fn, what in (("expire", apikeys_expire, "expire an API key (it stops working, stays listed)"),
                           ("delete", apikeys_delete, "delete an API key")):
        p = cmd(apikeys, verb, fn, what, aliases=["destroy"] if verb == "delete" else [])
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("-p", "--prefix", help="the key's prefix, as listed (or the whole key)")
        which.add_argument("-i", "--id", type=int)

    adm = _with_config(sub.add_parser("admin", help="the web console")).add_subparsers(dest="sub", required=True)
    p = cmd(adm, "login", admin_login, "print a one-time link into the web console (/admin)")
    p.add_argument("-u", "--user", help="sign in as this user (ID, name or email), with their role; "
                   "default: the server's operator, an owner")

    dns = _with_config(sub.add_parser("dns", help="DNS settings clients get")).add_subparsers(dest="sub", required=True)
    cmd(dns, "show", dns_show, "the DNS settings in force (config.yaml's with the API's changes)",
        aliases=["get"], output=True)
    p = cmd(dns, "set", dns_set, "change DNS settings (stored; clients get them at once)", output=True)
    p.add_argument("--magic-dns", choices=["true", "false"])
    p.add_argument("--override-local-dns", choices=["true", "false"])
    p.add_argument("--nameservers", help="global nameservers, comma-separated (empty: none)")
    p.add_argument("--split", action="append", default=None, metavar="DOMAIN=NS[,NS]",
                   help="split DNS: queries for DOMAIN go to these nameservers (repeat per domain)")
    p.add_argument("--search-domains", help="comma-separated (empty: none)")
    p.add_argument("--reset", action="append", default=[], metavar="SETTING",
                   choices=["magic_dns", "override_local_dns", "nameservers", "search_domains", "extra_records", "all"],
                   help="give this setting config.yaml's value back")

    pol = _with_config(sub.add_parser("policy", help="the access policy")).add_subparsers(dest="sub", required=True)
    cmd(pol, "get", policy_get, "print the policy in force")
    p = cmd(pol, "set", policy_set, "replace the policy (policy.mode: database)")
    p.add_argument("-f", "--file", required=True)
    p = cmd(pol, "check", policy_check, "check a policy file (against the live tailnet when the server runs)")
    p.add_argument("-f", "--file", required=True)
    p = _with_config(pol.add_parser("evaluate", help="what every node gets under a policy (offline with --topology)"))
    p.add_argument("--policy", required=True, help="policy file (HuJSON)")
    p.add_argument("--topology", help="topology file (JSON, the policy corpus's format); default: the live tailnet")
    p.add_argument("-o", "--output", choices=["json"], default="json")
    p.set_defaults(fn=policy_evaluate)
    p = cmd(pol, "reach", policy_reach, "may SRC reach DST[:PORT] under the policy in force, and by which rule")
    p.add_argument("src")
    p.add_argument("dst")

    audit = _with_config(sub.add_parser("audit", help="the audit log of every change")).add_subparsers(dest="sub", required=True)
    p = cmd(audit, "list", audit_list, "list changes, newest first (who, what, when, from where)", aliases=["ls"],
            output=True)
    _audit_filters(p)
    p.add_argument("--limit", type=int, default=100, help="entries to show (at most 1000)")
    p.add_argument("--cursor", help="show entries older than this entry ID (a previous page's next cursor)")
    p = cmd(audit, "export", audit_export, "print every matching entry as JSON lines (before and after included)")
    _audit_filters(p)
    return top


def _audit_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--actor", help="cli, apikey, console, oidc, preauthkey, node or server, or KIND:ID")
    p.add_argument("--operation", help="an operation, e.g. renameNode, deleteNode, registerNode, setPolicy")
    p.add_argument("--kind", help="what was changed: node, user, preauthkey, apikey, policy, dns, derp, webhook")
    p.add_argument("--node", help="changes to this node (ID)")
    p.add_argument("--user", help="changes to this user (ID or name), its nodes and keys")
    p.add_argument("--since", help="an RFC 3339 time, or a duration back from now (24h, 7d)")
    p.add_argument("--until", help="an RFC 3339 time, or a duration back from now")


# --- helpers ---------------------------------------------------------------------------------


def _config(args):
    return load_config(getattr(args, "config", None), overrides=serve_overrides(args))


def serve_overrides(args) -> dict[str, Any]:
    """The config values ``serve --domain D [--email E]`` stands for (they win over the file).

    The data directory stays the file's or the default (/var/lib/trioscale as root).
    """
    from .install import appliance_settings

    out: dict[str, Any] = {}
    domain = getattr(args, "domain", None)
    if domain:
        out.update(appliance_settings(domain, ""))
        del out["data_dir"], out["acme_email"]  # the file's (or the default) stay
        out.update({
            "tls_cert_path": "",
            "tls_key_path": "",
            # The embedded region's host name is server_url's, so the DERP map says DOMAIN.
            "derp": {"server": {"enabled": True}},
        })
    email = getattr(args, "email", None)
    if email:
        out["acme_email"] = email
    return out


def _client(args) -> AdminClient:
    return AdminClient.from_config(_config(args))


def _emit(args, doc: Any, rows: list[list[Any]] | None = None, header: list[str] | None = None) -> None:
    fmt = getattr(args, "output", "table")
    if fmt == "json":
        print(json.dumps(doc, indent=2))
    elif fmt == "json-line":
        print(json.dumps(doc))
    elif fmt == "yaml":
        import yaml

        print(yaml.safe_dump(doc, sort_keys=False), end="")
    elif rows is not None:
        table = [header or []] + [["" if c is None else str(c) for c in r] for r in rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        for r in table:
            print(" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    else:
        print(doc)


def _user_ref(args, value: str | None) -> str:
    if not value:
        raise SystemExit("trioscale: --user is required")
    return value


def _user_id(client: AdminClient, ref: str) -> str:
    users = client.call("GET", api_path("user"))["users"]
    for u in users:
        if ref in (u["id"], u["name"]) or (u["email"] and ref.casefold() == u["email"].casefold()):
            return u["id"]
    raise APIError(404, f"user {ref!r} not found")


# --- commands --------------------------------------------------------------------------------


def do_serve(args) -> int:
    """Exit statuses: serve.EXIT_* (README, "Running it")."""
    import trio

    from .serve import (EXIT_CANNOT_START, EXIT_INTERNAL_ERROR, EXIT_STOPPED, EXIT_STORE_FAILED, CannotStart,
                        leaves, serve_until_signalled)
    from .storage.store import StoreFailed

    cfg = _config(args)
    setup_logging(cfg.log.level_no, cfg.log.format)
    try:
        trio.run(serve_until_signalled, cfg)
    except BaseException as exc:  # noqa: BLE001 - every way out gets its one line and status
        errors = list(leaves(exc))
        if isinstance(exc, KeyboardInterrupt):
            return 130
        for e in errors:
            if isinstance(e, CannotStart):
                print(f"trioscale: cannot start: {e}", file=sys.stderr)
                return EXIT_CANNOT_START
        for e in errors:
            if isinstance(e, StoreFailed):
                print(f"trioscale: stopped: the database failed: {e}; check the disk, then restart "
                      "(`trioscale restore FILE` puts a backup back)", file=sys.stderr)
                return EXIT_STORE_FAILED
        logging.getLogger("appliance.serve").critical("stopped by an internal error", exc_info=exc)
        print(f"trioscale: stopped by an internal error (a bug; the log has the traceback): "
              f"{type(errors[0]).__name__ if errors else type(exc).__name__}: {errors[0] if errors else exc}",
              file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    return EXIT_STOPPED


def do_backup(args) -> int:
    """Through the running server's admin socket (an online copy), or from the database itself
    when no server answers there (on PostgreSQL another server may still be running: the copy
    is one consistent read). Either way the backup is one SQLite file."""
    from .storage.backup import BackupError, backup_file, check_database
    from pathlib import Path

    cfg = _config(args)
    dest = Path(args.file)
    if dest.exists():
        raise SystemExit(f"trioscale: {dest} exists; choose a new file name")
    try:
        data = AdminClient(cfg.unix_socket, timeout=300).download("POST", "/api/v1/backup")
    except ServerUnreachable:
        try:
            if cfg.database.type == "postgres":
                _postgres_backup(cfg, dest)
            else:
                backup_file(cfg.database.sqlite_path, dest)
        except BackupError as e:
            raise SystemExit(f"trioscale: backup failed: {e}") from None
        print(f"Backup of {_database_name(cfg)} written to {dest} (no server was running here)")
        return 0
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        check_database(tmp)
        os.rename(tmp, dest)
    except (OSError, BackupError) as e:
        raise SystemExit(f"trioscale: backup failed: {getattr(e, 'strerror', None) or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    print(f"Backup written to {dest} ({len(data)} bytes, taken online by the running server)")
    return 0


def _database_name(cfg) -> str:
    from .migrate.importer import database_name

    return database_name(cfg)


def _postgres_backup(cfg, dest) -> None:
    import trio

    from .storage import StoreError, open_store
    from .storage.backup import BackupError

    async def run() -> None:
        store = open_store(cfg.database, migrate=False)
        try:
            await store.backup(dest)
        finally:
            store.close()

    try:
        trio.run(run)
    except StoreError as e:
        raise BackupError(str(e)) from None


def do_restore(args) -> int:
    from .storage.backup import BackupError, restore_file

    cfg = _config(args)
    try:
        AdminClient(cfg.unix_socket, timeout=5).call("GET", "/api/v1/version")
    except ServerUnreachable:
        pass
    except APIError:  # a standby answers, refusing
        raise SystemExit("trioscale: a server is running here: stop it first, then restore, then start it") from None
    else:
        raise SystemExit("trioscale: the server is running: stop it first (systemctl stop trioscale), "
                         "then restore, then start it")
    try:
        if cfg.database.type == "postgres":
            kept = _postgres_restore(cfg, args.file)
        else:
            kept = restore_file(args.file, cfg.database.sqlite_path)
    except BackupError as e:
        raise SystemExit(f"trioscale: restore refused: {e}") from None
    print(f"Restored {args.file} to {_database_name(cfg)}" + (f"; the previous database is kept as {kept}" if kept else ""))
    return 0


def _postgres_restore(cfg, backup):
    """Replace the PostgreSQL database's contents by a checked backup, in one transaction, once
    every server on it has stopped; what it held is first kept as an SQLite file in the data
    directory. Returns that file."""
    import shutil
    from pathlib import Path

    import trio

    from .keys import encode_key, load_or_create_private_key, public_key
    from .migrate.importer import take_store
    from .storage import Store, StoreError, open_store
    from .storage.backup import BackupError, check_database

    check_database(Path(backup))
    kept = Path(cfg.data_dir) / f"postgres-before-restore-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.sqlite"

    # Read from a copy, which opening migrates to this version's schema: the backup stays as it was.
    copy = Path(cfg.data_dir) / f".restore-{os.getpid()}.sqlite"

    async def run() -> None:
        Path(cfg.data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copyfile(backup, copy)
        source = Store(copy)
        target = open_store(cfg.database)
        try:
            snapshot = await source.export_snapshot()
            noise = load_or_create_private_key(cfg.noise_private_key_path)
            await take_store(target, encode_key("mkey", public_key(noise)))
            await target.backup(kept)
            await target.replace_all(snapshot)
        finally:
            source.close()
            target.close()

    try:
        trio.run(run)
    except (StoreError, OSError) as e:
        raise BackupError(str(getattr(e, "strerror", None) or e)) from None
    finally:
        for leftover in Path(cfg.data_dir).glob(f"{copy.name}*"):
            leftover.unlink(missing_ok=True)
    return kept


def do_status(args) -> int:
    """This server's role (active or standby) and which server is active, from GET /health."""
    client = _client(args)
    status, doc = client.fetch("GET", "/health")
    if not isinstance(doc, dict) or "role" not in doc:
        raise APIError(status, f"unexpected answer from {client.where}: HTTP {status}")
    if args.output != "table":
        _emit(args, doc)
        return 0
    rows = [["Role", f"{doc['role']} (since {doc.get('since')})"], ["Server", doc.get("server", "")],
            ["Database", doc.get("database", "")]]
    if doc["role"] == "active" and "epoch" in doc:
        rows.append(["Epoch", doc["epoch"]])
    if doc["role"] != "active":
        active = doc.get("active") or "none (a standby takes over within seconds)"
        rows.append(["Active server", active + (f" (since {doc['activeSince']}, epoch {doc.get('epoch')})"
                                                 if doc.get("active") else "")])
        if doc.get("databaseError"):
            rows.append(["Database error", doc["databaseError"]])
    _emit(args, doc, rows, ["Status", ""])
    return 0


def do_configtest(args) -> int:
    from .oidc.settings import oidc_settings

    cfg = _config(args)
    oidc_settings(cfg)  # ConfigError for unusable oidc.* values (a secret file that cannot be read)
    print(config_to_yaml(cfg, redact=True), end="")
    print(f"# configuration OK{(' (' + str(cfg.path) + ')') if cfg.path else ' (embedded defaults)'}", file=sys.stderr)
    return 0


def certs_show(args) -> int:
    doc = _client(args).call("GET", api_path("certs"))
    cert = doc.get("certificate")
    if args.output != "table":
        _emit(args, doc)
        return 0
    if not doc.get("tls") or cert is None:
        print("trioscale does not terminate TLS (no tls_letsencrypt_hostname, no tls_cert_path)")
        return _zone_show(args, doc)
    rows = [
        ["Source", "ACME " + cert.get("directory_url", "") if cert["source"] == "acme" else cert.get("cert_path")],
        ["Names", ", ".join(cert["names"]) or "(no certificate yet)"],
        ["Issuer", cert["issuer"]],
        ["Valid from", cert["not_before"]],
        ["Expires", (cert["not_after"] or "") + ("  (EXPIRED)" if cert["expired"] else "")],
        ["Next renewal", cert["next_renewal"] or "(by you: files are reloaded when they change)"],
        ["Last error", cert["last_error"] or "none"],
    ]
    _emit(args, doc, rows, ["Certificate", ""])
    return _zone_show(args, doc)


def _zone_show(args, doc: dict) -> int:
    """The zone of the nodes' certificate names (dns.certificates), after the served certificate."""
    zone = doc.get("dns_zone")
    print()
    if zone is None:
        print("Node certificates (tailscale cert) are off (dns.certificates.enabled)")
        return 0
    rows = [["Zone", zone["zone"]], ["Provider", zone["provider"]]]
    if zone.get("ns_record"):
        rows += [["Delegation", zone["ns_record"]], ["Listening", zone["listen_addr"]],
                 ["Queries", ", ".join(f"{k} {v}" for k, v in sorted(zone["queries"].items())) or "none yet"]]
    elif zone.get("server"):
        rows.append(["Server", f"{zone['server']} (zone {zone['zone']}, key {zone['tsig_key_name']})"])
    rows += [["Published", f"{zone['published']} challenge records ({zone['refused']} refused)"],
             ["Pending", ", ".join(f"{r['name']} ({r['expires_in']}s left)" for r in zone["records"]) or "none"],
             ["Last error", zone["last_error"] or "none"]]
    _emit(args, doc, rows, ["Node certificates", ""])
    return 0


def do_version(args) -> int:
    if args.output == "table":
        print(__version__)
    else:
        _emit(args, {"version": __version__})
    return 0


def users_create(args) -> int:
    doc = _client(args).call("POST", api_path("user"), {
        "name": args.name, "email": args.email, "displayName": args.display_name, "pictureUrl": args.picture_url,
    })
    print(f"User created: {doc['user']['name']} (id {doc['user']['id']})")
    return 0


def users_list(args) -> int:
    doc = _client(args).call("GET", api_path("user"))
    rows = [[u["id"], u["name"], u["displayName"], u["email"], u["role"], ",".join(u["groups"]), u["createdAt"]]
            for u in doc["users"]]
    _emit(args, doc["users"], rows, ["ID", "Name", "Display name", "Email", "Role", "Groups", "Created"])
    return 0


def users_rename(args) -> int:
    client = _client(args)
    old = str(args.identifier) if args.identifier is not None else (args.name or args.old)
    new = args.new_name or (args.new if args.old is not None and args.name is None and args.identifier is None else args.old)
    if args.new_name is None and args.new is not None:
        new = args.new
    if not old or not new:
        raise SystemExit("trioscale: usage: users rename OLD NEW  (or -i ID / -n OLD with -r NEW)")
    uid = _user_id(client, old)
    doc = client.call("POST", api_path("user", uid, "rename", new))
    print(f"User renamed to {doc['user']['name']}")
    return 0


def users_set_role(args) -> int:
    client = _client(args)
    ref = str(args.identifier) if args.identifier is not None else (args.name or args.user)
    role = args.role_flag or args.role
    if not ref or not role:
        raise SystemExit("trioscale: usage: users set-role USER ROLE  (or -i ID / -n NAME with -r ROLE)")
    doc = client.call("POST", api_path("user", _user_id(client, ref), "role"), {"role": role})
    print(f"User {doc['user']['name']} is now {doc['user']['role']}")
    return 0


def users_destroy(args) -> int:
    client = _client(args)
    ref = str(args.identifier) if args.identifier is not None else (args.name or args.user)
    if not ref:
        raise SystemExit("trioscale: which user? (NAME, -i ID or -n NAME)")
    uid = _user_id(client, ref)
    client.call("DELETE", api_path("user", uid))
    print("User destroyed")
    return 0


def keys_create(args) -> int:
    client = _client(args)
    expiration = parse_duration(args.expiration, "--expiration")
    when = datetime.now(timezone.utc) + expiration
    tags = [t.strip() for t in args.tags.split(",") if t.strip()]
    body = {
        "user": _user_id(client, args.user) if args.user else None,
        "reusable": args.reusable, "ephemeral": args.ephemeral,
        "expiration": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "aclTags": tags,
        "preApproved": args.pre_approved,
    }
    doc = client.call("POST", api_path("preauthkey"), body)
    if args.output == "table":
        print(doc["preAuthKey"]["key"])  # alone on stdout, for $(trioscale preauthkeys create ...)
    else:
        _emit(args, doc["preAuthKey"])
    return 0


def keys_list(args) -> int:
    client = _client(args)
    user = _user_id(client, args.user) if args.user else None
    keys = client.call("GET", api_path("preauthkey", query={"user": user}))["preAuthKeys"]
    rows = [[k["id"], k["key"], (k["user"] or {}).get("name", ""), k["reusable"], k["ephemeral"], k["used"],
             k["expiration"], ",".join(k["aclTags"])] for k in keys]
    _emit(args, keys, rows, ["ID", "Key", "User", "Reusable", "Ephemeral", "Used", "Expiration", "Tags"])
    return 0


def keys_expire(args) -> int:
    _client(args).call("POST", api_path("preauthkey", "expire"), {"key": args.key})
    print("Key expired")
    return 0


def nodes_list(args) -> int:
    client = _client(args)
    user = _user_id(client, args.user) if args.user else None
    nodes = client.call("GET", api_path("node", query={"user": user}))["nodes"]
    rows = [[n["id"], n["givenName"], n["name"], (n["user"] or {}).get("name", ""), ", ".join(n["ipAddresses"]),
             ",".join(n["tags"]), "online" if n["online"] else "offline", "yes" if n["expired"] else "no",
             "yes" if n["approved"] else "waiting", n["lastSeen"]]
            for n in nodes]
    _emit(args, nodes, rows, ["ID", "Name", "Hostname", "User", "IP addresses", "Tags", "Connected", "Expired",
                              "Approved", "Last seen"])
    return 0


def _node_cmd(args, method: str, suffix: tuple[str, ...], body: Any = None, message: str = "") -> int:
    _client(args).call(method, api_path("node", args.identifier, *suffix), body)
    print(message or "OK")
    return 0


def nodes_delete(args) -> int:
    return _node_cmd(args, "DELETE", (), message="Node deleted")


def nodes_expire(args) -> int:
    return _node_cmd(args, "POST", ("expire",), message="Node expired")


def nodes_rename(args) -> int:
    return _node_cmd(args, "POST", ("rename", args.new_name), message="Node renamed")


def nodes_tag(args) -> int:
    tags = [t.strip() for group in args.tags for t in group.split(",") if t.strip()]
    return _node_cmd(args, "POST", ("tags",), {"tags": tags}, message="Node tagged")


def nodes_move(args) -> int:
    client = _client(args)
    client.call("POST", api_path("node", args.identifier, "user"), {"user": _user_id(client, args.user)})
    print("Node moved")
    return 0


def nodes_register(args) -> int:
    doc = _client(args).call("POST", api_path("node", "register", query={"user": args.user, "key": args.key.strip()}))
    print(f"Node {doc['node']['givenName']} registered")
    return 0


def auth_register(args) -> int:
    doc = _client(args).call("POST", api_path("auth", "register"), {"authId": args.auth_id.strip(), "user": args.user})
    if args.output == "table":
        print(f"Node {doc['node']['givenName']} registered")
    else:
        _emit(args, doc["node"])
    return 0


def auth_approve(args) -> int:
    _client(args).call("POST", api_path("auth", "approve"), {"authId": args.auth_id.strip()})
    print("Auth request approved")
    return 0


def auth_reject(args) -> int:
    _client(args).call("POST", api_path("auth", "reject"), {"authId": args.auth_id.strip()})
    print("Auth request rejected")
    return 0


def auth_list(args) -> int:
    reqs = _client(args).call("GET", api_path("auth"))["authRequests"]
    rows = [[r["authId"], r["kind"], r["hostname"] if r["kind"] == "register" else f"{r['srcNodeId']} -> {r['dstNodeId']}",
             r["os"], r["source"], r["expiration"]] for r in reqs]
    _emit(args, reqs, rows, ["Auth ID", "Kind", "Machine", "OS", "Source", "Expires"])
    return 0


def nodes_approve(args) -> int:
    return _node_cmd(args, "POST", ("approve",), message="Node approved")


def nodes_list_routes(args) -> int:
    nodes = _client(args).call("GET", api_path("node"))["nodes"]
    if args.identifier is not None:
        nodes = [n for n in nodes if n["id"] == str(args.identifier)]
    nodes = [n for n in nodes if n["availableRoutes"] or n["approvedRoutes"]]
    rows = [[n["id"], n["givenName"], ", ".join(n["approvedRoutes"]), ", ".join(n["availableRoutes"]),
             ", ".join(n["primaryRoutes"])] for n in nodes]
    _emit(args, nodes, rows, ["ID", "Hostname", "Approved", "Available", "Serving (Primary)"])
    return 0


def nodes_approve_routes(args) -> int:
    routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    return _node_cmd(args, "POST", ("approve_routes",), {"routes": routes}, message="Routes approved")


def sso_setup(args) -> int:
    from .sso import setup

    return setup(args)


def sso_test(args) -> int:
    from .sso import test

    return test(args)


def apikeys_create(args) -> int:
    when = datetime.now(timezone.utc) + parse_duration(args.expiration, "--expiration")
    doc = _client(args).call("POST", api_path("apikey"), {"expiration": when.strftime("%Y-%m-%dT%H:%M:%SZ")})
    print(doc["apiKey"])
    return 0


def admin_login(args) -> int:
    doc = _client(args).call("POST", api_path("console", "login"), {"user": args.user})
    print(doc["url"])
    return 0


def apikeys_list(args) -> int:
    keys = _client(args).call("GET", api_path("apikey"))["apiKeys"]
    rows = [[k["id"], k["prefix"], k["expiration"], k["createdAt"], k["lastSeen"]] for k in keys]
    _emit(args, keys, rows, ["ID", "Prefix", "Expiration", "Created", "Last seen"])
    return 0


def apikeys_expire(args) -> int:
    _client(args).call("POST", api_path("apikey", "expire"), _api_key_ref(args))
    print("Key expired")
    return 0


def apikeys_delete(args) -> int:
    ref = args.prefix if args.prefix else str(args.id)
    _client(args).call("DELETE", api_path("apikey", ref))
    print("Key deleted")
    return 0


def _api_key_ref(args) -> dict:
    return {"prefix": args.prefix} if args.prefix else {"id": str(args.id)}


def keys_delete(args) -> int:
    _client(args).call("DELETE", api_path("preauthkey", query={"id": args.id}))
    print("Key deleted")
    return 0


def _show_dns(args, doc: dict) -> None:
    ns = doc["nameservers"]
    rows = [
        ["MagicDNS", f"{doc['magicDns']} ({doc['baseDomain'] or 'no base domain'})"],
        ["Override local DNS", doc["overrideLocalDns"]],
        ["Nameservers", ", ".join(ns["global"]) or "-"],
        *[[f"  {d}", ", ".join(servers)] for d, servers in ns["split"].items()],
        ["Search domains", ", ".join(doc["searchDomains"]) or "-"],
        ["Extra records", len(doc["extraRecords"])],
        ["Changed by the API", ", ".join(doc["changedByApi"]) or "nothing (all from config.yaml)"],
    ]
    _emit(args, doc, rows, ["DNS", ""])


def dns_show(args) -> int:
    _show_dns(args, _client(args).call("GET", api_path("dns")))
    return 0


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def dns_set(args) -> int:
    body: dict[str, Any] = {}
    resets = {"magic_dns": "magicDns", "override_local_dns": "overrideLocalDns", "nameservers": "nameservers",
              "search_domains": "searchDomains", "extra_records": "extraRecords"}
    for name in args.reset:
        for key in (resets.values() if name == "all" else [resets[name]]):
            body[key] = None
    if args.magic_dns:
        body["magicDns"] = args.magic_dns == "true"
    if args.override_local_dns:
        body["overrideLocalDns"] = args.override_local_dns == "true"
    if args.nameservers is not None or args.split is not None:
        ns = body["nameservers"] = {}
        if args.nameservers is not None:
            ns["global"] = _csv(args.nameservers)
        if args.split is not None:
            split = {}
            for entry in args.split:
                domain, sep, servers = entry.partition("=")
                if not sep:
                    raise SystemExit(f"trioscale: --split {entry!r}: expected DOMAIN=NS[,NS]")
                split[domain.strip()] = _csv(servers)
            ns["split"] = split
    if args.search_domains is not None:
        body["searchDomains"] = _csv(args.search_domains)
    if not body:
        raise SystemExit("trioscale: nothing to change (see `trioscale dns set --help`)")
    _show_dns(args, _client(args).call("PATCH", api_path("dns"), body))
    return 0


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise SystemExit(f"trioscale: cannot read {path}: {e.strerror}") from None


def policy_get(args) -> int:
    doc = _client(args).call("GET", api_path("policy"))
    if not doc["policy"]:
        print("# no policy is set: every node may reach every node", file=sys.stderr)
    print(doc["policy"], end="" if doc["policy"].endswith("\n") else "\n")
    return 0


def policy_set(args) -> int:
    _client(args).call("PUT", api_path("policy"), {"policy": _read(args.file)})
    print("Policy updated")
    return 0


def policy_check(args) -> int:
    from .policy import PolicyEngine, PolicyError

    text = _read(args.file)
    try:
        _client(args).call("POST", api_path("policy", "check"), {"policy": text})
        where = "against the live tailnet"
    except ServerUnreachable:
        try:
            PolicyEngine(None).check_policy(text)
        except PolicyError as e:
            print(f"trioscale: {args.file}: {e}", file=sys.stderr)
            return 1
        where = "offline (the server is not running: users and nodes were not checked)"
    except APIError as e:
        print(f"trioscale: {args.file}: {e}", file=sys.stderr)
        return 1
    print(f"Policy is valid ({where})")
    return 0


def policy_evaluate(args) -> int:
    from .policy import evaluate

    text = _read(args.policy)
    if args.topology:
        topology = json.loads(_read(args.topology))
        if isinstance(topology.get("topology"), dict):
            topology = topology["topology"]  # a whole corpus case
    else:
        topology = _client(args).call("GET", api_path("policy", "topology"))
    out = evaluate(text, topology)
    print(json.dumps(out, indent=2, sort_keys=True))
    return 1 if out["error"] is not None else 0


def policy_reach(args) -> int:
    dst, port = args.dst, "0"
    if args.dst.count(":") == 1:  # NAME:PORT or IPv4:PORT; IPv6 addresses have more colons
        dst, port = args.dst.split(":")
    doc = _client(args).call("GET", api_path("policy", "reach", query={"src": args.src, "dst": dst, "port": port or 0}))
    print(("allowed: " if doc["allowed"] else "denied: ") + doc["reason"])
    return 0 if doc["allowed"] else 1


def _audit_query(args, **more: Any) -> dict[str, Any]:
    q: dict[str, Any] = {"actor": args.actor, "operation": args.operation, "kind": args.kind, "node": args.node,
                         "user": args.user}
    for name in ("since", "until"):
        value = getattr(args, name)
        if value and value[0].isdigit() and not value[:4].isdigit():
            value = (datetime.now(timezone.utc) - parse_duration(value, f"--{name}")).strftime("%Y-%m-%dT%H:%M:%SZ")
        q[name] = value
    q.update(more)
    return {k: v for k, v in q.items() if v not in (None, "")}


def _what_changed(e: dict) -> str:
    keys = changed_fields(e.get("before"), e.get("after"))
    if isinstance(keys, str):
        return keys
    before, after = e["before"], e["after"]
    return ", ".join(f"{k}: {_short(before.get(k))} -> {_short(after.get(k))}" for k in keys[:4])


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def audit_list(args) -> int:
    doc = _client(args).call("GET", api_path("audit", query=_audit_query(args, limit=args.limit, cursor=args.cursor)))
    rows = [[e["id"], e["time"], e["actor"]["kind"] + (f":{e['actor']['name'] or e['actor']['id']}"
                                                        if e["actor"]["name"] or e["actor"]["id"] else ""),
             e["actor"]["source"], e["operation"],
             f"{e['target']['kind']} {e['target']['name'] or e['target']['id']}".strip(), _what_changed(e)]
            for e in doc["entries"]]
    _emit(args, doc, rows, ["ID", "Time", "Actor", "From", "Operation", "Target", "Change"])
    if doc.get("nextCursor") and getattr(args, "output", "table") == "table":
        print(f"(more: --cursor {doc['nextCursor']})", file=sys.stderr)
    return 0


def audit_export(args) -> int:
    data = _client(args).download("GET", api_path("audit", "export", query=_audit_query(args)))
    sys.stdout.buffer.write(data)
    return 0


def setup_logging(level: int, fmt: str) -> None:
    if fmt == "json":
        class _Json(logging.Formatter):
            def format(self, record: logging.LogRecord) -> str:
                return json.dumps({"time": self.formatTime(record), "level": record.levelname.lower(),
                                   "logger": record.name, "message": record.getMessage()})

        handler = logging.StreamHandler()
        handler.setFormatter(_Json())
        logging.basicConfig(level=level, handlers=[handler], force=True)
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["derp"]:
        from derp.cli import main as derp_main

        return derp_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.cmd not in ("serve", "configtest", "import"):
        # The admin verbs only need the socket path: config warnings are for serve/configtest.
        logging.getLogger("appliance.config").setLevel(logging.ERROR)
    try:
        return args.fn(args) or 0
    except ConfigError as e:
        print(f"trioscale: configuration error: {e}", file=sys.stderr)
        return 1
    except ServerUnreachable as e:
        print(f"trioscale: {e}", file=sys.stderr)
        return 1
    except APIError as e:
        print(f"trioscale: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
