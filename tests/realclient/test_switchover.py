"""Issue 13's bar with the official tailscaled: clients move from one control server to
another without being restarted or logging in again.

Headscale itself cannot be built here, so the tests make its state: three clients join a first
server; their machine, node and disco keys, addresses and names are written into a database in
Headscale's schema (SQLite, then a real PostgreSQL) with a Headscale-format Noise key and a
Headscale config.yaml; the first server stops; `trioscale import headscale` runs; trioscale
starts on the imported state at the same URL. Then `export` / `import trioscale` moves the
tailnet to a third server. The same three tailscaled processes run throughout.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from tests.migrate import hsfixture as hs

from .harness import REPO, Node, Server, wait_until

PORT = 9931
DERP = {"derp": {"server": {"enabled": True, "stun_listen_addr": "127.0.0.1:3479"}}}
NAMES = ("ant", "bee", "cat")


@pytest.fixture(scope="module")
def world(netns, client_binaries, tmp_path_factory):
    work = tmp_path_factory.mktemp("switchover")
    first = Server(netns, work / "first", port=PORT, overrides=DERP)
    first.start()
    first.cli("users", "create", "alice", "--email", "alice@example.com")
    key = first.cli("preauthkeys", "create", "--user", "alice", "--reusable").stdout.strip()
    env = {"TS_DEBUG_USE_DERP_HTTP": "1"}
    nodes = {name: Node(netns, work, name, client_binaries, env=env) for name in NAMES}
    for n in nodes.values():
        n.start()
        n.up(first, key)
    state = {"work": work, "server": first, "nodes": nodes, "netns": netns,
             "pids": {name: n.proc.pid for name, n in nodes.items()}}
    state["before"] = {name: (sorted(n.ips()), n.status()["Self"]["DNSName"]) for name, n in nodes.items()}
    yield state
    for n in nodes.values():
        n.stop()
    state["server"].stop()


def _clients_follow(world, server: Server) -> None:
    """The same tailscaled processes (never restarted, never `up` again) reach Running with the
    same addresses and names, see each other, and ping each other through the new server."""
    nodes = world["nodes"]
    for name, n in nodes.items():
        assert n.proc.pid == world["pids"][name] and n.proc.poll() is None
    listed = {x["givenName"]: x for x in server.cli_json("nodes", "list")}
    assert set(listed) == set(NAMES)
    wait_until(lambda: all(x["online"] for x in server.cli_json("nodes", "list")), 120, interval=1,
               what="every client to reconnect to the new server")
    for name, n in nodes.items():
        st = wait_until(lambda: (s := n.status())["BackendState"] == "Running" and s, 30, what=f"{name} Running")
        ips, dns_name = world["before"][name]
        assert sorted(st["Self"]["TailscaleIPs"]) == ips
        assert st["Self"]["DNSName"] == dns_name
        wait_until(lambda: set(n.peers()) == set(NAMES) - {name}, 60, what=f"{name}'s peers")
    for a, b in (("ant", "bee"), ("bee", "cat"), ("cat", "ant")):
        target = world["before"][b][0][0]
        out = wait_until(lambda: _pong(nodes[a].ping(target), b), 60, interval=2, what=f"{a} to ping {b}")
        assert f"pong from {b}" in out


def _pong(output: str, name: str) -> str | None:
    return output if f"pong from {name}" in output else None


def _headscale_state(world, version: str) -> tuple[hs.HSTailnet, str]:
    """The tailnet of the first server, in Headscale's terms, and its Noise key file's text."""
    first: Server = world["server"]
    data = first.dir / "data"
    conn = sqlite3.connect(data / "db.sqlite")
    conn.row_factory = sqlite3.Row
    users = [hs.HSUser(r["id"], r["name"], email=r["email"]) for r in conn.execute("SELECT * FROM users")]
    nodes = [
        hs.HSNode(r["id"], r["machine_key"].split(":")[1], r["node_key"].split(":")[1],
                  (r["disco_key"] or "discokey:" + "0" * 64).split(":")[1], r["ipv4"], r["ipv6"], r["hostname"],
                  r["given_name"], r["user_id"], hostinfo=json.loads(r["hostinfo"]),
                  endpoints=tuple(json.loads(r["endpoints"])),
                  last_seen=datetime.now(timezone.utc).replace(microsecond=0))
        for r in conn.execute("SELECT * FROM nodes ORDER BY id")
    ]
    conn.close()
    assert sorted(n.given_name for n in nodes) == sorted(NAMES)
    return hs.HSTailnet(users=users, nodes=nodes), (data / "noise_private.key").read_text()


def _headscale_config(directory: Path, noise: str, database: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "noise_private.key").write_text(noise)
    (directory / "noise_private.key").chmod(0o600)
    doc = {
        "server_url": f"http://127.0.0.1:{PORT}", "listen_addr": f"127.0.0.1:{PORT}",
        "noise": {"private_key_path": str(directory / "noise_private.key")},
        "prefixes": {"v4": "100.64.0.0/10", "v6": "fd7a:115c:a1e0::/48"},
        "database": database,
        "dns": {"magic_dns": True, "base_domain": "ts.test", "override_local_dns": False},
        "derp": {"server": {"enabled": True, "region_id": 999, "stun_listen_addr": "127.0.0.1:3479"}, "urls": []},
        "policy": {"mode": "database"},
        "log": {"level": "info"},
    }
    (directory / "config.yaml").write_text(yaml.safe_dump(doc))
    return directory / "config.yaml"


def _trioscale(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "appliance", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


def _take_over(world, name: str, hs_config: Path) -> Server:
    """Stop the running server, import, start trioscale on the imported state at the same URL."""
    new = Server(world["netns"], world["work"] / name, port=PORT, overrides=DERP)
    dry = _trioscale("-c", str(new.config_path), "import", "headscale", "--from", str(hs_config), "--dry-run")
    assert "dry run: nothing was written" in dry.stdout and not (new.dir / "data").exists()
    world["server"].stop()
    out = _trioscale("-c", str(new.config_path), "import", "headscale", "--from", str(hs_config)).stdout
    assert "carried: 1 users, 3 nodes" in out, out
    new.start()
    world["server"] = new
    return new


def test_switch_over_from_a_sqlite_headscale(world):
    tailnet, noise = _headscale_state(world, "0.26")
    db = hs.make_sqlite(world["work"] / "headscale.sqlite", "0.26", tailnet)
    hs_config = _headscale_config(world["work"] / "hs-sqlite", noise, {"type": "sqlite", "sqlite": {"path": str(db)}})
    new = _take_over(world, "from-sqlite", hs_config)
    assert (new.dir / "data" / "noise_private.key").read_text().strip() == noise.strip()
    _clients_follow(world, new)


def test_switch_over_from_a_postgresql_headscale(world):
    from tests.pgserver import running_postgres

    tailnet, noise = _headscale_state(world, "0.23")
    with running_postgres() as pg:
        hs.make_postgres(pg["dsn"], "0.23", tailnet)
        hs_config = _headscale_config(world["work"] / "hs-pg", noise, {
            "type": "postgres", "postgres": {"host": pg["host"], "port": pg["port"], "name": pg["name"],
                                             "user": pg["user"], "pass": ""}})
        new = _take_over(world, "from-postgres", hs_config)
    _clients_follow(world, new)


def test_export_and_import_between_trioscale_servers(world):
    old: Server = world["server"]
    exported = world["work"] / "tailnet.json"
    _trioscale("-c", str(old.config_path), "export", str(exported))
    assert exported.stat().st_mode & 0o777 == 0o600
    new = Server(world["netns"], world["work"] / "moved", port=PORT, overrides=DERP)
    _trioscale("-c", str(new.config_path), "import", "trioscale", str(exported))
    old.stop()
    new.start()
    world["server"] = new
    _clients_follow(world, new)
    again = world["work"] / "again.json"
    _trioscale("-c", str(new.config_path), "export", str(again))
    first, second = json.loads(exported.read_text()), json.loads(again.read_text())
    # The new server lived on since: its clients reported in. Everything else is the same.
    for doc in (first, second):
        for n in doc["nodes"]:
            for volatile in ("last_seen", "endpoints", "hostinfo", "disco_key"):
                n.pop(volatile)
    assert first == second
