"""Backup and restore with official tailscaled clients (issue 10, item 4): `trioscale backup`
while clients are connected, the database lost, `trioscale restore`, and the clients come back
by themselves and reach each other."""

from __future__ import annotations

import sqlite3

from .harness import Node, Server, wait_until


def test_backup_while_connected_then_restore_and_clients_reconnect(netns, client_binaries, tmp_path):
    server = Server(netns, tmp_path / "server", overrides={
        "derp": {"server": {"enabled": True, "stun_listen_addr": "127.0.0.1:3478"}},
    })
    server.start()
    env = {"TS_DEBUG_USE_DERP_HTTP": "1"}  # the relay shares the plain-HTTP control port here
    nodes = [Node(netns, tmp_path, name, client_binaries, env=env) for name in ("alpha", "beta")]
    try:
        server.cli("users", "create", "alice")
        key = server.cli("preauthkeys", "create", "--user", "alice", "--reusable").stdout.strip()
        for n in nodes:
            n.start()
            n.up(server, key)
        alpha, beta = nodes
        wait_until(lambda: beta.peers().get("alpha", {}).get("Online"), 10, what="beta to see alpha online")
        before = {n["givenName"]: n for n in server.cli_json("nodes", "list")}
        backup = tmp_path / "trioscale-backup.sqlite"
        res = server.cli("backup", str(backup))
        assert "taken online by the running server" in res.stdout
        assert (backup.stat().st_mode & 0o777) == 0o600
        refused = server.cli("restore", str(backup), check=False)
        assert refused.returncode != 0 and "stop it first" in refused.stderr
        server.cli("users", "create", "after-the-backup")  # what the restore takes back
        server.stop()

        # The disk loses the database (here: its first page is overwritten).
        db = server.dir / "data" / "db.sqlite"
        with open(db, "r+b") as f:
            f.write(b"\0" * 4096)
        broken = server.cli("restore", str(tmp_path / "missing.sqlite"), check=False)
        assert broken.returncode != 0 and "restore refused" in broken.stderr
        res = server.cli("restore", str(backup))
        assert "Restored" in res.stdout and "previous database is kept as" in res.stdout
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()

        server.start()
        assert [u["name"] for u in server.cli_json("users", "list")] == ["alice"]
        after = {n["givenName"]: n for n in server.cli_json("nodes", "list")}
        assert {k: (v["id"], v["ipAddresses"], v["nodeKey"]) for k, v in after.items()} == {
            k: (v["id"], v["ipAddresses"], v["nodeKey"]) for k, v in before.items()}
        for n in nodes:
            wait_until(lambda: n.status()["BackendState"] == "Running"
                       and all(p["Online"] for p in n.peers().values()) and len(n.peers()) == 1,
                       60, interval=0.5, what=f"{n.name} to reconnect after the restore")
        wait_until(lambda: all(x["online"] for x in server.cli_json("nodes", "list")), 30,
                   what="both nodes online at the server")
        out = alpha.ping(beta.ips()[0])
        assert "pong from beta" in out, out
    finally:
        for n in nodes:
            n.stop()
        server.stop()
