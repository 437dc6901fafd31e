"""A real OpenID provider for tests: npm's ``oidc-provider`` run by Debian's Node.js.

``ensure_provider()`` installs what is missing (Debian's nodejs and npm with apt-get, the npm
package into ~/.cache/trioscale-tests/oidc-provider) and ``OIDCProvider`` runs it on loopback,
inside a test's network namespace if given, with its own signing keys, users (with groups
claims) and client registrations. The console tests can reuse it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from joserfc.jwk import RSAKey

from ..realclient.harness import stop_process

PACKAGE = "oidc-provider"
VERSION = "9.13.3"  # needs Node.js 20.19 or newer (the CI image's nodesource 20, Debian 13)
VERSION_NODE18 = "8.8.1"  # for Debian 12's own Node.js 18
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trioscale-tests" / "oidc-provider"
SCRIPT = Path(__file__).with_name("provider.mjs")


class Unavailable(Exception):
    pass


def _apt_install(*packages: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600, env=env)
    r = subprocess.run(["apt-get", "install", "-y", "-qq", *packages], capture_output=True, text=True,
                       timeout=900, env=env)
    if r.returncode != 0:
        raise Unavailable(f"apt-get install {' '.join(packages)} failed: {r.stderr[-500:]}")


def ensure_provider() -> Path:
    """The folder with node_modules/oidc-provider and our script; installs what is missing."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        if os.geteuid() != 0:
            raise Unavailable("Node.js is not installed and installing it needs root")
        _apt_install("nodejs", "npm")
    out = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip().lstrip("v")
    major, minor = (int(x) for x in (out.split(".") + ["0", "0"])[:2])
    version = VERSION if (major, minor) >= (20, 19) else VERSION_NODE18
    installed = CACHE / "node_modules" / PACKAGE / "package.json"
    if not installed.exists() or json.loads(installed.read_text()).get("version") != version:
        CACHE.mkdir(parents=True, exist_ok=True)
        (CACHE / "package.json").write_text(json.dumps({"name": "trioscale-oidc-fixture", "private": True,
                                                         "type": "module"}))
        r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", f"{PACKAGE}@{version}"], cwd=CACHE,
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise Unavailable(f"npm install {PACKAGE}@{version} failed: {r.stderr[-500:]}")
    # ES modules resolve packages next to the script, so it runs from the cache folder.
    shutil.copyfile(SCRIPT, CACHE / SCRIPT.name)
    return CACHE


def new_signing_key(kid: str) -> dict:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "alg": "RS256", "use": "sig"}).as_dict(private=True)


class OIDCProvider:
    """One provider process. ``wrap`` puts it (and the control calls) in a network namespace."""

    def __init__(self, workdir: Path, *, port: int, clients: list[dict], users: dict[str, dict],
                 wrap=lambda argv: argv) -> None:
        self.dir = ensure_provider()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.control_port = port + 1
        self.issuer = f"http://127.0.0.1:{port}"
        self.clients = clients
        self.users = users
        self.keys = [new_signing_key("key-1")]
        self.rogue = new_signing_key("rogue")
        self.wrap = wrap
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / "oidc-provider.log"

    def start(self) -> None:
        cfg = {"issuer": self.issuer, "port": self.port, "control_port": self.control_port,
               "clients": self.clients, "users": self.users, "keys": self.keys, "rogue_key": self.rogue}
        path = self.workdir / "provider.json"
        path.write_text(json.dumps(cfg))
        os.chmod(path, 0o600)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.wrap(["node", str(self.dir / SCRIPT.name), str(path)]),
                                     cwd=self.dir, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while b"ready\n" not in self.log_path.read_bytes().rsplit(b"--- restart", 1)[-1]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise Unavailable(f"oidc-provider did not start: {self.log_path.read_text()[-1000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def rotate_keys(self) -> str:
        """Restart with a new signing key (and without the old one); returns its key ID."""
        kid = f"key-{len(self.keys) + 1}-{int(time.time())}"
        self.keys = [new_signing_key(kid)]
        with open(self.log_path, "ab") as f:
            f.write(b"--- restart\n")
        self.stop()
        self.start()
        return kid

    def _control(self, path: str, doc: Any) -> None:
        code = ("import sys,urllib.request;urllib.request.urlopen(urllib.request.Request("
                f"'http://127.0.0.1:{self.control_port}{path}',data=sys.stdin.buffer.read(),method='POST'),timeout=10)")
        subprocess.run(self.wrap([sys.executable, "-c", code]), input=json.dumps(doc).encode(), check=True,
                       capture_output=True, timeout=30)

    def set_users(self, users: dict[str, dict]) -> None:
        self.users = users
        self._control("/users", users)

    def tamper(self, **mode: Any) -> None:
        """Re-sign the next ID tokens: aud="x" (wrong audience), exp=-3600 (expired),
        rogue=True (signed by a key the provider does not publish); no arguments: stop."""
        self._control("/tamper", mode)
