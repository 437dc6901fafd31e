"""Run trioscale and official tailscaled processes in a network namespace of their own.

Everything the tests start lives in one namespace with only loopback and a veth pair whose
ends are both inside it (tailscaled judges a loopback-only host offline; see
shared/docs/testing-with-real-clients.md). Nothing can leave it. The tests talk to the server
through its admin socket and to each client through its LocalAPI socket: unix sockets live in
the filesystem, so they work across namespaces.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

import trustme
import yaml

REPO = Path(__file__).resolve().parents[2]

CLIENT_ENV = {
    "TS_ASSUME_NETWORK_UP_FOR_TEST": "1",
    "TS_DISABLE_PORTMAPPER": "1",
    "TS_PANIC_IF_HIT_MAIN_CONTROL": "1",
}


def wait_until(fn: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll ``fn`` until it returns something truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fn()
        except Exception as e:  # the thing polled may not be up yet
            last = e
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def http_get(ns: Netns, url: str) -> str:
    """The body of ``url`` fetched from inside the namespace (where the servers listen)."""
    code = f"import urllib.request;print(urllib.request.urlopen({url!r}, timeout=15).read().decode())"
    return subprocess.run(ns.wrap([sys.executable, "-c", code]), capture_output=True, text=True, timeout=30).stdout


def stop_process(proc: subprocess.Popen | None, grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; waits for it either way."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Netns:
    def __init__(self) -> None:
        self.name = f"trioscale-test-{secrets.token_hex(4)}"
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        for cmd in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "add", "ts0", "type", "veth", "peer", "name", "ts1"],
            # An address with no route out: the client counts itself online, nothing leaves.
            ["ip", "addr", "add", "10.255.255.1/32", "dev", "ts0"],
            ["ip", "link", "set", "ts0", "up"],
            ["ip", "link", "set", "ts1", "up"],
        ):
            subprocess.run(self.wrap(cmd), check=True, capture_output=True)

    def wrap(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    @property
    def etc_dir(self) -> Path:
        # `ip netns exec` bind-mounts each file here over /etc/<file> for what it runs.
        return Path("/etc/netns") / self.name

    def add_host(self, name: str, address: str = "127.0.0.1") -> None:
        """Make ``name`` resolve to ``address`` for processes started in the namespace afterwards
        (through /etc/hosts, which Go's resolver and glibc read)."""
        hosts = self.etc_dir / "hosts"
        if not hosts.exists():
            self.etc_dir.mkdir(parents=True, exist_ok=True)
            hosts.write_text("127.0.0.1 localhost\n::1 localhost\n")
        with hosts.open("a") as f:
            f.write(f"{address} {name}\n")

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        shutil.rmtree(self.etc_dir, ignore_errors=True)


def netns_available() -> str | None:
    """None when network namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "the real-client tests make a network namespace, which needs root"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` does not work here: {probe.stderr.strip()}"
    return None


@dataclass(frozen=True)
class Certs:
    """A test CA (``ca``: PEM file for SSL_CERT_FILE) and one server certificate signed by it."""

    ca: Path
    cert: Path
    key: Path


def make_certs(directory: Path, *names: str, ca: trustme.CA | None = None) -> Certs:
    """Write a certificate for ``names`` (DNS names or IP addresses), made at run time with trustme.

    Pass ``ca`` to sign with an existing CA (its PEM is written again to ``directory``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = ca or trustme.CA()
    leaf = ca.issue_cert(*names)
    certs = Certs(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(certs.ca))
    certs.cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(certs.key))
    return certs


class Server:
    """A trioscale process inside the namespace. With ``tls``, it serves https on ``port``
    (control and DERP) with those certificate files; ``env`` adds to its environment;
    ``serve_args`` are flags for ``trioscale serve`` (then ``url`` says where clients go)."""

    def __init__(self, ns: Netns, workdir: Path, port: int = 9911, overrides: dict | None = None,
                 tls: Certs | None = None, env: dict[str, str] | None = None,
                 serve_args: tuple[str, ...] = (), url: str | None = None) -> None:
        self.ns = ns
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.url = url or f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        self.serve_args = tuple(serve_args)
        self.env = env or {}
        self.config_path = self.dir / "config.yaml"
        cfg: dict[str, Any] = {
            "server_url": self.url,
            "listen_addr": f"127.0.0.1:{port}",
            "data_dir": str(self.dir / "data"),
            "unix_socket": str(self.dir / "data" / "trioscale.sock"),
            "dns": {"base_domain": "ts.test", "override_local_dns": False},
            "derp": {"server": {"enabled": False}},
            "log": {"level": "debug"},
        }
        if tls:
            cfg["tls_cert_path"], cfg["tls_key_path"] = str(tls.cert), str(tls.key)
        _merge(cfg, overrides or {})
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "server.log"

    def start(self, ready: tuple[str, ...] = ("users", "list")) -> None:
        """Start it and wait until the CLI command ``ready`` succeeds (``("status",)`` for a
        server that may come up as a standby, which refuses the others)."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.ns.wrap([sys.executable, "-m", "appliance", "serve", "-c", str(self.config_path), *self.serve_args]),
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env, "PYTHONPATH": str(REPO)},
        )
        wait_until(lambda: self.proc.poll() is None and self.cli_ok(*ready), 20,
                   what="trioscale to answer on its socket")

    def stop(self) -> None:
        stop_process(self.proc, 15)
        self.proc = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "appliance", "-c", str(self.config_path), *args],
            cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"trioscale {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def cli_ok(self, *args: str) -> bool:
        return self.cli(*args, check=False).returncode == 0

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "-o", "json").stdout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


class Node:
    """One official tailscaled (userspace networking) and its CLI."""

    def __init__(self, ns: Netns, workdir: Path, name: str, binaries: tuple[Path, Path],
                 env: dict[str, str] | None = None, socks_port: int | None = None) -> None:
        self.ns = ns
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "tailscaled.sock"
        self.cli_bin, self.daemon_bin = binaries
        self.env = {**os.environ, **CLIENT_ENV, **(env or {})}
        self.socks_port = socks_port
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        argv = [
            str(self.daemon_bin), "--tun=userspace-networking", "--no-logs-no-support", "--port=0",
            f"--statedir={self.dir}", f"--socket={self.socket}",
        ]
        if self.socks_port:
            argv.append(f"--socks5-server=127.0.0.1:{self.socks_port}")
        log = open(self.dir / "tailscaled.log", "ab")
        self.proc = subprocess.Popen(self.ns.wrap(argv), stdout=log, stderr=subprocess.STDOUT, env=self.env)
        wait_until(lambda: self.socket.exists(), 15, what=f"{self.name}'s tailscaled socket")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def ts(self, *args: str, timeout: float = 60, check: bool = True, in_netns: bool = False) -> subprocess.CompletedProcess:
        """Run the tailscale CLI. It reaches tailscaled over its unix socket from anywhere; use
        ``in_netns`` for commands that send traffic themselves (``netcheck`` probes from the CLI)."""
        argv = [str(self.cli_bin), f"--socket={self.socket}", *args]
        proc = subprocess.run(
            self.ns.wrap(argv) if in_netns else argv,
            capture_output=True, text=True, timeout=timeout, env=self.env,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{self.name}: tailscale {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()} {proc.stdout.strip()}")
        return proc

    def up_interactive(self, server: Server, *extra: str) -> tuple[subprocess.Popen, str]:
        """`tailscale up` without a key, in the background: the process and the AuthURL it
        printed (it ends once the login is decided)."""
        up = subprocess.Popen(
            [str(self.cli_bin), f"--socket={self.socket}", "up", f"--login-server={server.url}",
             f"--hostname={self.name}", "--timeout=120s", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            if f"{server.url}/register/" in line:
                return up, line.strip()
        up.kill()
        raise AssertionError(f"{self.name}: no login URL printed")

    def up(self, server: Server, authkey: str | None, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
        args = ["up", f"--login-server={server.url}", f"--hostname={self.name}", "--timeout=60s", *extra]
        if authkey is not None:
            args.append(f"--authkey={authkey}")
        return self.ts(*args, timeout=90, check=check)

    def private_node_key(self) -> str:
        """The node's private node key (``privkey:<hex>``) from tailscaled's state file."""
        # A JSON object of Go []byte values, so each value is base64.
        state = json.loads((self.dir / "tailscaled.state").read_text())
        profile = base64.b64decode(state["_current-profile"]).decode()
        prefs = json.loads(base64.b64decode(state[profile]))
        return prefs["Config"]["PrivateNodeKey"]

    def status(self) -> dict:
        return json.loads(self.ts("status", "--json").stdout)

    def localapi(self, method: str, path: str) -> tuple[int, str]:
        """A request to tailscaled's LocalAPI over its unix socket: (status, body)."""
        import http.client
        import socket

        conn = http.client.HTTPConnection("local-tailscaled.sock", timeout=60)
        conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.sock.settimeout(60)
        conn.sock.connect(str(self.socket))
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        finally:
            conn.close()

    def peers(self) -> dict[str, dict]:
        """Peers by host name."""
        return {p["HostName"]: p for p in (self.status().get("Peer") or {}).values()}

    def ips(self) -> list[str]:
        return self.status()["Self"]["TailscaleIPs"]

    def ping(self, ip: str, count: int = 5) -> str:
        """The output of `tailscale ping`; judge by its pong line, not the exit status."""
        return self.ts("ping", f"-c={count}", "--timeout=5s", ip, check=False, timeout=60).stdout


@contextlib.contextmanager
def serve_files(ns: Netns, directory: Path, port: int):
    """An HTTP server for ``directory`` on 127.0.0.1:``port`` inside the namespace: a backend
    that a node's tailnet address reaches (netstack hands inbound TCP to the host's loopback)."""
    proc = subprocess.Popen(
        ns.wrap([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(directory)]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def random_blob(directory: Path, size: int) -> list[str]:
    """Write ``directory``/blob with ``size`` random bytes; returns what socks_fetch should say."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = os.urandom(size)
    (directory / "blob").write_bytes(payload)
    return [str(size), hashlib.sha256(payload).hexdigest()]


def socks_fetch(ns: Netns, socks_port: int, ip: str, port: int, path: str, timeout: float = 60.0,
                ca: Path | None = None) -> list[str] | None:
    """GET http://ip:port/path through a node's SOCKS5 proxy: [length, sha256], or None. ``ip``
    may be a MagicDNS name; with ``ca`` it is https, verified against that CA file alone."""
    extra = [str(ca)] if ca else []
    p = subprocess.run(
        ns.wrap([sys.executable, "-m", "tests.realclient.socksfetch", str(socks_port), ip, str(port), path, str(timeout),
                 *extra]),
        cwd=REPO, capture_output=True, text=True, timeout=timeout + 30,
    )
    if p.returncode != 0:
        print(f"fetch {ip}:{port}{path}: {p.stderr.strip()[-300:]}")
        return None
    return p.stdout.split()


def _merge(base: dict, extra: dict) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def ensure_ssh_client() -> None:
    """OpenSSH's client, from Debian's openssh-client when missing (a fresh CI machine)."""
    if shutil.which("ssh"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "openssh-client"], capture_output=True, timeout=600,
                   env=env, check=True)


def start_ssh(frm: Node, ip: str, command: str = "echo ssh-ok") -> subprocess.Popen:
    """OpenSSH's client from node ``frm`` to ``ip`` through the tailnet (`tailscale nc` as the
    proxy), running ``command`` as root on a node that serves Tailscale SSH (no key needed).
    Its stderr (where the server's banners go; LogLevel INFO shows them) is in ``proc.errfile``."""
    ensure_ssh_client()
    proxy = f"{frm.cli_bin} --socket={frm.socket} nc %h %p"
    errfile = frm.dir / f"ssh-{secrets.token_hex(4)}.err"
    with open(errfile, "wb") as err:
        proc = subprocess.Popen(
            ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o",
             "UserKnownHostsFile=/dev/null", "-o", f"ProxyCommand={proxy}", f"root@{ip}", command],
            stdout=subprocess.PIPE, stderr=err, text=True, stdin=subprocess.DEVNULL)
    proc.errfile = errfile  # type: ignore[attr-defined]
    return proc


def ssh_check_url(ssh: subprocess.Popen, server: Server, timeout: float = 30) -> str:
    """The sign-in link a Tailscale SSH server shows in its banner while a check rule holds it."""
    pattern = re.compile(re.escape(server.url) + r"/auth/[\w-]+")
    found = wait_until(lambda: pattern.search(ssh.errfile.read_text(errors="replace")) or ssh.poll() is not None,
                       timeout, interval=0.2, what="the check link in the SSH banner")
    if found is True:
        raise AssertionError(f"ssh ended ({ssh.returncode}) without a check link: {ssh.errfile.read_text()}")
    return found.group(0)
