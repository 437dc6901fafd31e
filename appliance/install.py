"""``trioscale install`` and ``trioscale uninstall``: the appliance on a systemd machine in one command.

``install`` writes /etc/trioscale/config.yaml for a domain, creates the ``trioscale`` system user
and its directories, puts the program in place (the zipapp it runs from goes to
/usr/local/lib/trioscale; the Debian package's program is already in /usr/bin), installs the
systemd unit, and enables and starts it. Run again from a newer zipapp, it upgrades: the config
and the data are kept, the program is replaced, the service restarted (the store migrates the
database at start, after copying it to ``db.sqlite.backup-vN``).

Every check runs before the first change, so a refusal (not root, no systemd, a port taken)
leaves the machine as it was. ``--root DIR`` points both commands at another filesystem root:
everything is written below DIR, the user goes into DIR/etc/passwd (useradd --prefix), and no
service is started or stopped; the tests use it.

The layout follows Headscale's Debian package, which a Headscale user knows: /etc/<name>/
config.yaml, /var/lib/<name>, a system user of that name, <name>.service.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

USER = "trioscale"
CONFIG = "/etc/trioscale/config.yaml"
STATE_DIR = "/var/lib/trioscale"
CACHE_DIR = "/var/cache/trioscale"
SERVICE = "trioscale.service"

# The Debian package ships these; install only checks that they are there.
DEB_LIB = "/usr/lib/trioscale"
DEB_BIN = "/usr/bin/trioscale"
DEB_UNIT = "/lib/systemd/system/trioscale.service"

# Where install puts the zipapp form.
PYZ_PATH = "/usr/local/lib/trioscale/trioscale.pyz"
PYZ_BIN = "/usr/local/bin/trioscale"
PYZ_UNIT = "/etc/systemd/system/trioscale.service"

# Written into the files install creates, so that uninstall removes only its own.
MARK = "Installed by `trioscale install`"

# What the appliance answers on: HTTPS and the ACME HTTP-01 challenge over TCP, STUN over UDP.
PORTS = ((443, socket.SOCK_STREAM), (80, socket.SOCK_STREAM), (3478, socket.SOCK_DGRAM))

START_TIMEOUT = 30  # seconds for the service to answer on its admin socket after a start


class Refused(Exception):
    """install or uninstall will not run; nothing has been changed. The message says why."""


@dataclass
class Target:
    """The machine being installed on: a filesystem root and the form of the program."""

    root: Path = Path("/")
    kind: str = "zipapp"  # "zipapp" or "deb"
    pyz: Path | None = None  # the zipapp to install (kind "zipapp")
    live: bool = True  # False under --root: no systemctl, no service
    log: list[str] = field(default_factory=list)

    def at(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    @property
    def bin(self) -> str:
        return DEB_BIN if self.kind == "deb" else PYZ_BIN

    @property
    def unit(self) -> str:
        return DEB_UNIT if self.kind == "deb" else PYZ_UNIT

    def say(self, msg: str) -> None:
        self.log.append(msg)
        print(msg, flush=True)


# --- what we run from -------------------------------------------------------------------------


def detect_program() -> tuple[str, Path | None]:
    """("deb", None) when run from the Debian package, ("zipapp", path) from a .pyz.

    Raises Refused from a source checkout or a pip install: there is no single file to install.
    """
    here = Path(__file__).resolve()
    if here.is_relative_to(DEB_LIB):
        return "deb", None
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.is_file() and zipfile.is_zipfile(argv0):
        return "zipapp", argv0.resolve()
    raise Refused(
        "install runs from the zipapp (python3 trioscale-VERSION-PLATFORM.pyz install ...) or "
        "from the Debian package (/usr/bin/trioscale install ...), not from a source checkout"
    )


def unit_template() -> str:
    """The unit from packaging/systemd/, which the builds copy into this package."""
    packaged = resources.files("appliance").joinpath("trioscale.service")
    if packaged.is_file():
        return packaged.read_text()
    source = Path(__file__).resolve().parents[1] / "packaging" / "systemd" / "trioscale.service"
    return source.read_text()


def render_unit(bin_path: str) -> str:
    return unit_template().replace("@BIN@", bin_path)


# --- the config file --------------------------------------------------------------------------


def set_key(text: str, key: str, value: str) -> str:
    """Set a top-level scalar ``key`` in YAML ``text``, keeping every comment and other line.

    The first ``key:`` line is replaced; failing that, the first commented-out ``# key:`` line
    (the example config documents optional keys that way); failing that, the key is appended.
    """
    line = f"{key}: {json.dumps(value)}"  # a JSON string is a YAML string
    for pattern in (rf"^{re.escape(key)}:.*$", rf"^#\s*{re.escape(key)}:.*$"):
        new, n = re.subn(pattern, lambda _m: line, text, count=1, flags=re.M)
        if n:
            return new
    return text.rstrip("\n") + f"\n\n{line}\n"


def set_nested_key(text: str, keys: tuple[str, ...], value: object) -> str:
    """Set the scalar at ``keys`` (("dns", "certificates", "enabled")) in block-style YAML
    ``text``, keeping every comment and other line.

    Within its section the key's line is replaced; failing that, a commented-out ``# key:`` line
    at the section's indentation; failing that, the key (and any missing sections above it) is
    added at the end of the section. A file in another style is caught by the caller, which
    loads the result and compares.
    """
    rendered = json.dumps(value)  # JSON scalars (strings, true/false, numbers) are YAML scalars
    lines = text.splitlines()
    start, end, indent = 0, len(lines), -1  # the whole file is the section above the top
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        child = _child_indent(lines, start, end, indent)
        found = _find_key(lines, start, end, child, key)
        if found is None and last:
            found = _find_key(lines, start, end, child, key, commented=True)
        if found is None:
            at = _block_end(lines, start, end)
            new = [f"{' ' * child}{key}:" + (f" {rendered}" if last else "")]
            lines[at:at] = new
            found, end = at, end + 1
        if last:
            lines[found] = f"{' ' * child}{key}: {rendered}"
            break
        start, indent = found + 1, child
        end = _block_end_of(lines, found, child)
    return "\n".join(lines) + "\n"


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _child_indent(lines: list[str], start: int, end: int, indent: int) -> int:
    for line in lines[start:end]:
        if _content(line) and _indent_of(line) > indent:
            return _indent_of(line)
    return indent + 2 if indent >= 0 else 0


def _find_key(lines: list[str], start: int, end: int, indent: int, key: str, commented: bool = False) -> int | None:
    pattern = re.compile(rf"^ {{{indent}}}{'#[ ]?' if commented else ''}{re.escape(key)}:(\s|$)")
    for i in range(start, end):
        if pattern.match(lines[i]):
            return i
    return None


def _block_end_of(lines: list[str], header: int, child: int) -> int:
    """Where the section whose header line is ``header`` ends (exclusive)."""
    own = _indent_of(lines[header])
    for i in range(header + 1, len(lines)):
        if _content(lines[i]) and _indent_of(lines[i]) <= own:
            return i
    return len(lines)


def _block_end(lines: list[str], start: int, end: int) -> int:
    """After the section's last line with content (so trailing comments stay below)."""
    last = start
    for i in range(start, end):
        if _content(lines[i]):
            last = i + 1
    return last


def cert_domain_settings(cert_domain: str) -> dict[tuple[str, ...], object]:
    """The keys ``install --cert-domain`` sets: MagicDNS names under the zone, and the embedded
    DNS server answering for it (ACME DNS-01 for `tailscale cert`)."""
    return {
        ("dns", "magic_dns"): True,
        ("dns", "base_domain"): cert_domain,
        ("dns", "certificates", "enabled"): True,
        ("dns", "certificates", "provider"): "embedded",
    }


def appliance_settings(domain: str, email: str) -> dict[str, str]:
    """The keys install sets: public HTTPS with a Let's Encrypt certificate for ``domain``.
    `trioscale serve --domain` stands for the same keys (cli.serve_overrides)."""
    return {
        "server_url": f"https://{domain}",
        "listen_addr": ":443",  # every address, IPv4 and IPv6
        "data_dir": STATE_DIR,
        "tls_letsencrypt_hostname": domain,
        "acme_email": email,
        # TLS-ALPN-01 needs only port 443; port 80 still answers, to redirect to https.
        "tls_letsencrypt_challenge_type": "TLS-ALPN-01",
        "tls_letsencrypt_listen": ":http",
    }


def example_config() -> str:
    return resources.files("appliance").joinpath("config-example.yaml").read_text()


def render_config(existing: str | None, domain: str | None, email: str | None,
                  cert_domain: str | None = None) -> str:
    """The config to write: the existing file (or the documented example) with install's keys."""
    text = existing if existing is not None else example_config()
    if domain is not None:
        settings = appliance_settings(domain, email or "")
        if email is None and existing is not None:
            del settings["acme_email"]  # keep the one already there
        for key, value in settings.items():
            text = set_key(text, key, value)
    if cert_domain is not None:
        for keys, value in cert_domain_settings(cert_domain).items():
            text = set_nested_key(text, keys, value)
    return text


def check_config(text: str, path: Path, cert_domain: str | None = None):
    """The Config ``text`` gives; Refused if it does not load or does not say what install set."""
    from .config import ConfigError
    from .config.load import config_from_dict
    from .config.yamlfile import parse_yaml

    try:
        cfg = config_from_dict(parse_yaml(text, source=path), path=path)
    except ConfigError as e:
        raise Refused(f"the resulting configuration would not load: {e}") from None
    if cert_domain is not None and not (cfg.dns.base_domain == cert_domain and cfg.dns.certificates.enabled):
        raise Refused(f"could not set dns.base_domain and dns.certificates in {CONFIG} (is its dns: section in "
                      "another style?); set them by hand (see the config's comments) and run install again")
    return cfg


def check_domain(domain: str, flag: str) -> None:
    from .config import ConfigError
    from .config import values

    try:
        values.parse_domain(domain, flag)
    except ConfigError as e:
        raise Refused(str(e)) from None
    if "." not in domain:
        example = "ts.example.com" if flag == "--cert-domain" else "vpn.example.com"
        raise Refused(f"{flag} {domain!r}: give a full DNS name, e.g. {example}")


# --- checks -----------------------------------------------------------------------------------


def check_root() -> None:
    if os.geteuid() != 0:
        raise Refused("must run as root: it writes /etc, creates a system user and starts a service (try sudo)")


def check_systemd(t: Target) -> None:
    # sd_booted()'s test: this directory exists only when systemd is the running init.
    if not t.at("/run/systemd/system").is_dir():
        raise Refused("systemd is not running here (no /run/systemd/system); install sets up a systemd service")
    if t.live and shutil.which("systemctl") is None:
        raise Refused("systemctl not found")


def port_in_use(port: int, kind: int) -> bool:
    """True when something already listens on ``port`` on some address of this host."""
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            s = socket.socket(family, kind)
        except OSError:
            continue  # no IPv6 here
        try:
            if kind == socket.SOCK_STREAM:
                # As a server would bind: a connection in TIME_WAIT is no obstacle.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((addr, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return True
            if e.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                raise
        finally:
            s.close()
    return False


def service_active(t: Target) -> bool:
    if not t.live:
        return False
    r = subprocess.run(["systemctl", "is-active", "--quiet", SERVICE], timeout=30)
    return r.returncode == 0


def check_ports(t: Target, dns_port: int | None = None) -> None:
    """Refused when a port the service will listen on is taken; ``dns_port``: the embedded DNS
    server's (UDP and TCP)."""
    if service_active(t):
        return  # the ports are ours: this is an upgrade or a reconfiguration
    wanted = PORTS + (((dns_port, socket.SOCK_STREAM), (dns_port, socket.SOCK_DGRAM)) if dns_port else ())
    taken = [f"{port}/{'tcp' if kind == socket.SOCK_STREAM else 'udp'}" for port, kind in wanted if port_in_use(port, kind)]
    if taken:
        hint = (" The DNS port is often held by systemd-resolved's stub listener (DNSStubListener=no in "
                "/etc/systemd/resolved.conf frees it) or a local dnsmasq." if dns_port and any(
                    p.startswith(f"{dns_port}/") for p in taken) else "")
        raise Refused(
            f"port{'s' if len(taken) > 1 else ''} {', '.join(taken)} already in use by another program "
            "(a web server?); trioscale answers HTTPS and ACME on 443 and 80, STUN on 3478/udp"
            f"{' and DNS on ' + str(dns_port) if dns_port else ''}. See `ss -tulpn` for what holds them.{hint}"
        )


# --- the system user --------------------------------------------------------------------------


def user_ids(t: Target) -> tuple[int, int] | None:
    try:
        lines = t.at("/etc/passwd").read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        parts = line.split(":")
        if parts[0] == USER and len(parts) >= 4:
            return int(parts[2]), int(parts[3])
    return None


def _group_exists(t: Target) -> bool:
    try:
        return any(line.startswith(f"{USER}:") for line in t.at("/etc/group").read_text().splitlines())
    except FileNotFoundError:
        return False


def prefix_args(t: Target) -> list[str]:
    return [] if t.root == Path("/") else ["--prefix", str(t.root)]


def ensure_user(t: Target) -> tuple[int, int]:
    ids = user_ids(t)
    if ids is None:
        subprocess.run([
            "useradd", *prefix_args(t), "--system", "--user-group", "--home-dir", STATE_DIR,
            "--no-create-home", "--shell", "/usr/sbin/nologin", "--comment", "trioscale control server", USER,
        ], check=True, timeout=60)
        ids = user_ids(t)
        if ids is None:
            raise RuntimeError(f"useradd did not create {USER}")
        t.say(f"created system user {USER}")
    return ids


# --- install ----------------------------------------------------------------------------------


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically: a reader sees the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _systemctl(*args: str) -> None:
    subprocess.run(["systemctl", *args], check=True, timeout=120)


def install(t: Target, domain: str | None, email: str | None, cert_domain: str | None = None) -> None:
    """Check everything, then set up and (unless ``t.live`` is false) start the service.
    ``cert_domain``: the zone for the nodes' certificate names, served by the embedded DNS server.

    Raises Refused, having changed nothing, when a check fails.
    """
    check_root()
    check_systemd(t)
    config_path = t.at(CONFIG)
    existing = config_path.read_text() if config_path.exists() else None
    if existing is None and not domain:
        raise Refused("--domain is needed for a first install (the DNS name clients will reach)")
    if domain:
        check_domain(domain, "--domain")
        domain = domain.strip().lower()
    if cert_domain:
        check_domain(cert_domain, "--cert-domain")
        cert_domain = cert_domain.strip().lower()
    text = render_config(existing, domain, email, cert_domain)
    cfg = check_config(text, config_path, cert_domain)
    from .config import split_host_port

    certs = cfg.dns.certificates
    embedded_dns = certs.enabled and certs.provider == "embedded"
    if t.kind == "deb":
        for path in (DEB_BIN, DEB_UNIT):
            if not t.at(path).exists():
                raise Refused(f"{path} is missing: is the trioscale Debian package installed completely?")
    elif t.pyz is None or not t.pyz.is_file():
        raise Refused("no zipapp to install")
    if not (user_ids(t) or shutil.which("useradd")):
        raise Refused("useradd not found (package passwd), needed to create the trioscale user")
    check_ports(t, split_host_port(certs.listen_addr)[1] if embedded_dns else None)

    # From here on, changes.
    if existing != text:
        if existing is not None:
            backup = config_path.with_name(f"config.yaml.before-install-{time.strftime('%Y%m%d-%H%M%S')}")
            shutil.copy2(config_path, backup)
            t.say(f"kept the previous config as {backup.relative_to(t.root)}")
        write_file(config_path, text.encode(), 0o644)
        t.say(f"wrote {CONFIG}")
    else:
        t.say(f"kept {CONFIG}")
    uid, gid = ensure_user(t)
    for path, mode in ((STATE_DIR, 0o750), (CACHE_DIR, 0o750)):
        p = t.at(path)
        p.mkdir(parents=True, exist_ok=True)
        os.chown(p, uid, gid)
        os.chmod(p, mode)
    if t.kind == "zipapp":
        assert t.pyz is not None
        if t.pyz.resolve() != t.at(PYZ_PATH).resolve():
            write_file(t.at(PYZ_PATH), t.pyz.read_bytes(), 0o644)
            t.say(f"installed the program as {PYZ_PATH}")
        python = "/usr/bin/python3"
        wrapper = (
            "#!/bin/sh\n"
            f"# {MARK}: the trioscale zipapp on the system's Python, apart from its packages (-I -S).\n"
            f'exec {python} -I -S {PYZ_PATH} "$@"\n'
        )
        write_file(t.at(PYZ_BIN), wrapper.encode(), 0o755)
        unit = f"# {MARK}; `trioscale uninstall` removes it.\n" + render_unit(PYZ_BIN)
        write_file(t.at(PYZ_UNIT), unit.encode(), 0o644)
        t.say(f"installed {PYZ_BIN} and {PYZ_UNIT}")
    if t.live:
        _systemctl("daemon-reload")
        _systemctl("enable", SERVICE)
        _systemctl("restart", SERVICE)
        try:
            wait_answering(t)
        except RuntimeError as e:
            # Everything is in place; the service itself failed. Say where to look.
            print(f"trioscale install: installed, but {e}", file=sys.stderr)
            raise SystemExit(1) from None
        if t.kind == "zipapp":
            prune_unpacked(t.at(CACHE_DIR))
        t.say("trioscale.service is enabled and running")
    else:
        t.say(f"--root: not starting the service (would run: systemctl enable --now {SERVICE})")
    next_steps(t, domain or _configured_domain(text))
    if embedded_dns:
        certificate_steps(t, cfg.dns.base_domain, certs.ns_name, split_host_port(certs.listen_addr)[1])


def _configured_domain(text: str) -> str:
    m = re.search(r"^server_url:\s*\"?(?:https?://)?([^\"/:\s]+)", text, re.M)
    return m.group(1) if m else "YOUR-DOMAIN"


def wait_answering(t: Target) -> None:
    from .adminclient import AdminClient
    from .config import load_config

    cfg = load_config(t.at(CONFIG))
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            AdminClient(cfg.unix_socket).call("GET", "/api/v1/user")
            return
        except Exception as e:  # not up yet; the last reason is reported
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the service did not answer within {START_TIMEOUT}s ({e}); see: journalctl -u trioscale"
                ) from e
        time.sleep(0.5)


def prune_unpacked(cache: Path) -> None:
    """Remove what earlier zipapps unpacked into the service's cache (shiv keeps one directory
    per build and never removes one); the newest is the running service's."""
    unpacked = sorted((p for p in cache.glob("*.pyz_*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in unpacked[:-1]:
        shutil.rmtree(old, ignore_errors=True)
        for lock in cache.glob(f".{old.name}*lock"):
            lock.unlink(missing_ok=True)


def next_steps(t: Target, domain: str) -> None:
    t.say(f"""
Next steps:
  1. Point the DNS name {domain} at this machine, and open 80/tcp, 443/tcp and 3478/udp.
  2. Create a user and a pre-auth key:
       trioscale users create alice
       trioscale preauthkeys create --user alice --expiration 24h
  3. On each device:
       tailscale up --login-server https://{domain} --authkey <the key>
Config: {CONFIG} (reload policy: systemctl reload trioscale). Data: {STATE_DIR}. Logs: journalctl -u trioscale""")


def certificate_steps(t: Target, zone: str, ns_name: str, dns_port: int) -> None:
    """The one record that hands the certificate zone to this server, and how to use it."""
    parent = zone.split(".", 1)[1] if "." in zone else zone
    t.say(f"""
Certificates for machine names (tailscale cert, tailscale serve --https):
  Delegate {zone} to this server with one record in the DNS zone of {parent}:
       {zone}.  NS  {ns_name}.
  and open {dns_port}/udp and {dns_port}/tcp. Then on a device: tailscale cert NAME.{zone}
  (`trioscale certs` shows the zone's state.)""")


# --- uninstall --------------------------------------------------------------------------------


def _ours(path: Path) -> bool:
    try:
        return MARK in path.read_text(errors="replace")[:4096]
    except (FileNotFoundError, IsADirectoryError):
        return False


def uninstall(t: Target, purge: bool) -> None:
    """Stop and remove the service and what install put in place; with ``purge`` also the
    config, the data and the user. Raises Refused, having changed nothing, when a check fails."""
    check_root()
    check_systemd(t)
    if t.live:
        subprocess.run(["systemctl", "disable", "--now", SERVICE], timeout=120, capture_output=True)
        t.say("stopped and disabled trioscale.service")
    removed = []
    for path in (PYZ_UNIT, PYZ_BIN):
        if _ours(t.at(path)):
            t.at(path).unlink()
            removed.append(path)
    if t.at(PYZ_PATH).exists():
        shutil.rmtree(t.at(PYZ_PATH).parent)
        removed.append(str(Path(PYZ_PATH).parent))
    if t.live:
        subprocess.run(["systemctl", "daemon-reload"], timeout=120)
    if removed:
        t.say("removed " + ", ".join(removed))
    if t.kind == "deb":
        t.say("the Debian package stays installed: apt remove trioscale (or purge) removes it")
    if purge:
        for path in ("/etc/trioscale", STATE_DIR, CACHE_DIR):
            if t.at(path).exists():
                shutil.rmtree(t.at(path))
                t.say(f"removed {path}")
        if user_ids(t) is not None:
            subprocess.run(["userdel", *prefix_args(t), USER], check=True, timeout=60)
            t.say(f"removed user {USER}")
        # userdel leaves the user's group when login.defs does not say USERGROUPS_ENAB.
        if _group_exists(t):
            subprocess.run(["groupdel", *prefix_args(t), USER], check=True, timeout=60)
    else:
        t.say(f"kept {CONFIG}, the data in {STATE_DIR} and the user {USER} (--purge removes them)")


# --- CLI glue ---------------------------------------------------------------------------------


def target_from_args(args, need_program: bool) -> Target:
    """The Target for ``--root`` and the program this process runs from. Raises Refused."""
    root = Path(args.root).resolve() if args.root else Path("/")
    if not root.is_dir():
        raise Refused(f"--root {root}: no such directory")
    try:
        kind, pyz = detect_program()
    except Refused:
        if need_program:
            raise
        kind, pyz = "zipapp", None  # uninstall removes by path; it needs no program
    return Target(root=root, kind=kind, pyz=pyz, live=args.root is None)


def do_install(args) -> int:
    try:
        check_root()  # first: a non-root user may not even see --root
        t = target_from_args(args, need_program=True)
        install(t, args.domain, args.email, getattr(args, "cert_domain", None))
    except Refused as e:
        print(f"trioscale install: refused: {e}\nNothing was changed.", file=sys.stderr)
        return 2
    return 0


def do_uninstall(args) -> int:
    try:
        check_root()
        t = target_from_args(args, need_program=False)
        uninstall(t, args.purge)
    except Refused as e:
        print(f"trioscale uninstall: refused: {e}\nNothing was changed.", file=sys.stderr)
        return 2
    return 0
