"""Issue 16's bar with the official tailscaled: trioscale on a real PostgreSQL, two servers on
one database (one active, one standby), and clients that follow without logging in again.

Three tailscaled reach the control server through a TCP forwarder the test moves
(tests/realclient/forwarder.py), as a floating address or a DNS failover would. In order:

1. a server on SQLite with the three clients is stopped, `trioscale db migrate --to postgres`
   copies its state, and it starts again on PostgreSQL: the clients follow;
2. a second server starts on the same database: it stands by (GET /key, /health 503, its relay
   meshed with the active one's and checking node keys in the database; control traffic, the
   API refused);
3. the active server is SIGKILLed: the standby is active within 10 s; once the forwarder points
   at it the clients are Running within 30 s with the same addresses, see and ping each other,
   and a rename made through it reaches them; the old server restarts as a standby;
4. split brain: the active server is frozen (SIGSTOP); the other takes over; the frozen one is
   resumed: it cannot write and steps down, and the database shows no write of it after the
   takeover (an audit trigger records who commits every write);
5. `trioscale db migrate --to sqlite` copies everything back, and the clients follow again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.pgserver import PostgresServer

from .harness import REPO, Node, Server, wait_until

FORWARDER, PORT_A, PORT_B = 9941, 9942, 9943
NAMES = ("ant", "bee", "cat")
TAKEOVER = 10  # seconds: the standby is active within this
FOLLOW = 30  # seconds: clients are Running again within this once the address moved


def _derp(port: int, other: int, mesh_key: Path, stun: int, metrics: int) -> dict:
    return {
        "metrics_listen_addr": f"127.0.0.1:{metrics}",
        "cli": {"timeout": "60s"},  # a request to a frozen server waits for it
        "derp": {"server": {"enabled": True, "stun_listen_addr": f"127.0.0.1:{stun}", "workers": 1,
                            "mesh_key_path": str(mesh_key), "mesh_with": [f"http://127.0.0.1:{other}"]}},
    }


def _in_netns(netns, code: str) -> str:
    return subprocess.run(netns.wrap([sys.executable, "-c", code]), capture_output=True, text=True, timeout=30,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}).stdout


def http_get(netns, url: str) -> tuple[int, str]:
    """(status, body) of GET ``url`` from inside the namespace."""
    code = ("import json, urllib.request, urllib.error\n"
            f"try:\n    r = urllib.request.urlopen({url!r}, timeout=5); print(json.dumps([r.status, r.read().decode()]))\n"
            "except urllib.error.HTTPError as e:\n    print(json.dumps([e.code, e.read().decode()]))\n")
    status, body = json.loads(_in_netns(netns, code))
    return status, body


def metrics(netns, port: int) -> dict[str, float]:
    code = f"import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=5).read().decode())"
    out = _in_netns(netns, code)
    return {name: float(v) for name, _, v in (l.rpartition(" ") for l in out.splitlines() if l and l[0] != "#")}


def role(server: Server) -> str | None:
    p = server.cli("status", "-o", "json", check=False)
    return json.loads(p.stdout)["role"] if p.returncode == 0 else None


def set_config(server: Server, **database) -> None:
    cfg = yaml.safe_load(server.config_path.read_text())
    cfg["database"].update(database)
    server.config_path.write_text(yaml.safe_dump(cfg))


@pytest.fixture(scope="module")
def world(netns, client_binaries, tmp_path_factory):
    work = tmp_path_factory.mktemp("pgha")
    pg = PostgresServer.shared()
    db = pg.new_database()
    target = work / "forward-to"
    target.write_text(str(PORT_A))
    forwarder = subprocess.Popen(netns.wrap([sys.executable, "-m", "tests.realclient.forwarder", str(FORWARDER),
                                             str(target)]), cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                                 stdout=open(work / "forwarder.log", "ab"), stderr=subprocess.STDOUT)
    mesh_key = work / "mesh.key"
    mesh_key.write_text(os.urandom(32).hex() + "\n")
    mesh_key.chmod(0o600)
    url = f"http://127.0.0.1:{FORWARDER}"
    # The database section names both: SQLite first (where the tailnet starts), PostgreSQL's
    # settings already there for `db migrate`; over the socket, which the namespace can reach.
    database = {"type": "sqlite", "postgres": db.config(socket=True)["postgres"]}
    a = Server(netns, work / "a", port=PORT_A, url=url,
               overrides={**_derp(PORT_A, PORT_B, mesh_key, 3491, 9951), "database": database})
    b = Server(netns, work / "b", port=PORT_B, url=url,
               overrides={**_derp(PORT_B, PORT_A, mesh_key, 3492, 9952), "database": {**database, "type": "postgres"}})
    env = {"TS_DEBUG_USE_DERP_HTTP": "1"}
    nodes = {name: Node(netns, work, name, client_binaries, env=env) for name in NAMES}
    state = {"work": work, "db": db, "a": a, "b": b, "nodes": nodes, "target": target, "netns": netns}
    try:
        a.start()
        a.cli("users", "create", "alice")
        key = a.cli("preauthkeys", "create", "--user", "alice", "--reusable").stdout.strip()
        for n in nodes.values():
            n.start()
            n.up(a, key)
        state["pids"] = {name: n.proc.pid for name, n in nodes.items()}
        state["before"] = {name: (sorted(n.ips()), n.status()["Self"]["DNSName"]) for name, n in nodes.items()}
        state["ids"] = {x["givenName"]: x["id"] for x in a.cli_json("nodes", "list")}
        yield state
    finally:
        for n in nodes.values():
            n.stop()
        for s in (a, b):
            if s.proc is not None and s.proc.poll() is None:
                s.proc.send_signal(signal.SIGCONT)
            s.stop()
        forwarder.kill()
        forwarder.wait()
        pg.drop_database(db)


def move_to(world, server: Server) -> None:
    world["target"].write_text(str(server.port))


def clients_follow(world, server: Server, timeout: float = FOLLOW) -> float:
    """The same tailscaled processes (never restarted, never `up` again) are Running with the
    same addresses and names within ``timeout``, see each other online and ping each other
    through ``server``. Returns how long they took to be Running."""
    t0 = time.monotonic()
    nodes = world["nodes"]
    for name, n in nodes.items():
        assert n.proc.pid == world["pids"][name] and n.proc.poll() is None

    def running() -> bool:
        return all(n.status()["BackendState"] == "Running" for n in nodes.values()) and \
            all(x["online"] for x in server.cli_json("nodes", "list"))

    wait_until(running, timeout, interval=0.5, what=f"every client Running on {server.dir.name}")
    took = time.monotonic() - t0
    for name, n in nodes.items():
        st = n.status()
        ips, dns_name = world["before"][name]
        assert sorted(st["Self"]["TailscaleIPs"]) == ips
        assert st["Self"]["DNSName"] == dns_name or name == world.get("renamed")
        wait_until(lambda: set(n.peers()) == set(NAMES) - {name} and all(p["Online"] for p in n.peers().values()),
                   30, interval=0.5, what=f"{name} to see its peers online")
    assert {x["givenName"]: x["id"] for x in server.cli_json("nodes", "list")}.items() >= {
        k: v for k, v in world["ids"].items() if k != world.get("renamed")}.items()
    for src, dst in (("ant", "bee"), ("bee", "cat"), ("cat", "ant")):
        ip = world["before"][dst][0][0]
        out = wait_until(lambda: (o := nodes[src].ping(ip, count=3)) and f"pong from {dst}" in o and o, 30,
                         interval=1, what=f"{src} to ping {dst}")
        assert f"pong from {dst}" in out
    return took


def test_sqlite_to_postgresql_with_the_clients_following(world):
    a = world["a"]
    a.stop()
    res = a.cli("db", "migrate", "--to", "postgres")
    assert "copied 1 users, 3 nodes, 1 pre-auth keys" in res.stdout and "set database.type: postgres" in res.stdout
    again = a.cli("db", "migrate", "--to", "postgres", check=False)  # never over a database in use
    assert again.returncode == 1 and "not empty" in again.stderr
    set_config(a, type="postgres")
    a.start()
    assert role(a) == "active"
    clients_follow(world, a, timeout=120)


def test_a_second_server_stands_by(world):
    a, b, netns = world["a"], world["b"], world["netns"]
    # The Noise key is shared as a file, as Headscale keeps it: an admin copies it over.
    (b.dir / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy(a.dir / "data" / "noise_private.key", b.dir / "data" / "noise_private.key")
    b.start(ready=("status",))
    assert (role(a), role(b)) == ("active", "standby")
    st = b.cli_json("status")
    assert st["active"] == a.cli_json("status")["server"] and st["database"] == "postgres"

    status, body = http_get(netns, f"http://127.0.0.1:{PORT_B}/health")
    assert status == 503 and json.loads(body)["role"] == "standby"
    status, body = http_get(netns, f"http://127.0.0.1:{PORT_A}/health")
    assert status == 200 and json.loads(body)["role"] == "active"
    assert http_get(netns, f"http://127.0.0.1:{PORT_B}/key")[1] == http_get(netns, f"http://127.0.0.1:{PORT_A}/key")[1]
    status, _ = http_get(netns, f"http://127.0.0.1:{PORT_B}/api/v1/user")
    assert status == 503
    refused = b.cli("users", "list", check=False)
    assert refused.returncode == 1 and "standby" in refused.stderr and "the active one is" in refused.stderr

    # The two relays are meshed: the standby's knows the clients attached to the active's.
    wait_until(lambda: (m := metrics(netns, 9952))["trioscale_derp_mesh_links_connected"] == 1
               and m["trioscale_derp_remote_keys"] >= len(NAMES), 30, interval=0.5, what="the relays meshed")
    assert metrics(netns, 9951)["trioscale_active"] == 1 and metrics(netns, 9952)["trioscale_active"] == 0
    # The standby's relay lets in the tailnet's node keys only, from the database.
    probe = [sys.executable, "-m", "tests.realclient.derpprobe", f"http://127.0.0.1:{PORT_B}", "-"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run(netns.wrap([*probe, world["nodes"]["ant"].private_node_key()]), cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=30)
    assert ok.stdout.strip() == "accepted", ok.stdout + ok.stderr
    stranger = subprocess.run(netns.wrap([*probe, "privkey:" + "42" * 32]), cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=30)
    assert stranger.stdout.startswith("refused"), stranger.stdout + stranger.stderr


def test_failover_when_the_active_server_dies(world):
    a, b = world["a"], world["b"]
    t0 = time.monotonic()
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait()
    wait_until(lambda: role(b) == "active", TAKEOVER, interval=0.2, what="the standby to take over")
    world["takeover_after_kill"] = time.monotonic() - t0
    print(f"standby active {world['takeover_after_kill']:.1f}s after the SIGKILL")
    move_to(world, b)
    took = clients_follow(world, b)
    print(f"clients Running {took:.1f}s after the address moved")
    # A change made through the new active server reaches the clients.
    b.cli("nodes", "rename", "-i", str(world["ids"]["ant"]), "ant-renamed")
    world["renamed"] = "ant"
    for name in ("bee", "cat"):
        wait_until(lambda: world["nodes"][name].peers()["ant"]["DNSName"].startswith("ant-renamed."), 30,
                   interval=0.5, what=f"{name} to see the rename")
    # The old server comes back (systemd restarts it) as a standby.
    a.proc = None
    a.start(ready=("status",))
    assert role(a) == "standby" and role(b) == "active"


def test_split_brain_a_frozen_active_cannot_write_and_steps_down(world):
    a, b, db = world["a"], world["b"], world["db"]
    with db.connect() as conn:  # who commits what, from now on
        conn.execute("""
            CREATE TABLE write_audit (at timestamptz NOT NULL DEFAULT clock_timestamp(), app text, tbl text);
            CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
            BEGIN
                INSERT INTO write_audit (app, tbl) VALUES (current_setting('application_name'), TG_TABLE_NAME);
                RETURN NULL;
            END $$;
        """)
        for table in ("users", "nodes", "pre_auth_keys", "api_keys", "policies", "settings", "trioscale_cluster"):
            conn.execute(f"CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON {table}"
                         " FOR EACH STATEMENT EXECUTE FUNCTION audit()")
    b.proc.send_signal(signal.SIGSTOP)
    t0 = time.monotonic()
    # A write sent to the frozen server waits in its admin socket.
    late = subprocess.Popen([sys.executable, "-m", "appliance", "-c", str(b.config_path), "users", "create",
                             "written-by-the-old-active"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: role(a) == "active", TAKEOVER, interval=0.2, what="the standby to take over from a frozen one")
    print(f"standby active {time.monotonic() - t0:.1f}s after the SIGSTOP")
    move_to(world, a)
    a.cli("users", "create", "written-by-the-new-active")
    with db.connect() as conn:
        takeover = conn.execute("SELECT active_since FROM trioscale_cluster").fetchone()[0]
    b.proc.send_signal(signal.SIGCONT)
    out, err = late.communicate(timeout=60)
    assert late.returncode == 1, out + err
    wait_until(lambda: role(b) == "standby", 20, interval=0.2, what="the resumed server to step down")
    assert "lost the active role" in b.log_text()
    users = [u["name"] for u in a.cli_json("users", "list")]
    assert "written-by-the-new-active" in users and "written-by-the-old-active" not in users
    with db.connect() as conn:
        writers = conn.execute("SELECT DISTINCT app FROM write_audit WHERE at >= %s", (takeover,)).fetchall()
    apps = {r[0] for r in writers}
    assert any(f"127.0.0.1:{PORT_A}" in app for app in apps), apps  # the audit sees the new active's writes
    assert not any(f"127.0.0.1:{PORT_B}" in app for app in apps), apps  # and none of the old one's
    clients_follow(world, a)


def test_back_to_sqlite(world):
    a, b = world["a"], world["b"]
    b.stop()
    a.stop()
    set_config(a, sqlite={"path": str(a.dir / "data" / "back.sqlite")})
    res = a.cli("db", "migrate", "--to", "sqlite")
    assert "copied 2 users, 3 nodes" in res.stdout, res.stdout
    set_config(a, type="sqlite")
    a.start()
    assert role(a) == "active" and a.cli_json("status")["database"] == "sqlite"
    clients_follow(world, a, timeout=120)
