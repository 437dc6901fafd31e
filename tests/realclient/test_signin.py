"""Interactive registration with the CLI and device approval, with the official tailscaled
1.96.4 (issue 11's bar): its states go NeedsLogin -> NeedsMachineAuth -> Running as each step
happens, and a rejected registration leaves no node."""

from __future__ import annotations

import subprocess
import time

import pytest

from .harness import Node, Server, http_get, ssh_check_url, start_ssh, wait_until

POLICY = """{
  "tagOwners": {"tag:box": ["autogroup:admin"]},
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
  "ssh": [{"action": "check", "src": ["autogroup:member"], "dst": ["tag:box"], "users": ["root"]}],
}"""


@pytest.fixture(scope="module")
def signin(netns, client_binaries, tmp_path_factory):
    work = tmp_path_factory.mktemp("signin")
    (work / "policy.hujson").write_text(POLICY)
    server = Server(netns, work / "server", port=9921, overrides={
        "node": {"approval_required": True},
        "policy": {"mode": "file", "path": str(work / "policy.hujson")},
        # A client counts as Running once it has a DERP home: the embedded relay gives it one.
        "derp": {"server": {"enabled": True, "stun_listen_addr": "127.0.0.1:3478"}},
    })
    observer = Node(netns, work, "observer", client_binaries, env=ENV)
    try:
        server.start()
        server.cli("users", "create", "alice", "--email", "alice@example.com")
        observer.start()
        key = server.cli("preauthkeys", "create", "--user", "alice", "--pre-approved").stdout.strip()
        observer.up(server, key)
        yield {"server": server, "work": work, "binaries": client_binaries, "observer": observer}
    finally:
        observer.stop()
        server.stop()


ENV = {"TS_DEBUG_USE_DERP_HTTP": "1"}  # the relay shares the plain-HTTP control port here


def backend_state(node: Node) -> str:
    return node.status()["BackendState"]


def nodes_by_name(server: Server) -> dict[str, dict]:
    return {n["givenName"]: n for n in server.cli_json("nodes", "list")}


def test_cli_registration_then_device_approval(signin, netns):
    server, observer = signin["server"], signin["observer"]
    laptop = Node(netns, signin["work"], "laptop", signin["binaries"], env=ENV)
    laptop.start()
    try:
        up, url = laptop.up_interactive(server)
        auth_id = url.rsplit("/", 1)[-1]
        assert backend_state(laptop) == "NeedsLogin"
        listed = server.cli_json("auth", "list")
        assert [(r["authId"], r["hostname"], r["kind"]) for r in listed] == [(auth_id, "laptop", "register")]

        server.cli("auth", "register", "--auth-id", auth_id, "--user", "alice")
        wait_until(lambda: backend_state(laptop) == "NeedsMachineAuth", 15, what="laptop to wait for approval")
        node = nodes_by_name(server)["laptop"]
        assert node["approved"] is False and node["registerMethod"] == "REGISTER_METHOD_CLI"
        time.sleep(1)
        assert "laptop" not in observer.peers()  # a node waiting for approval is nobody's peer
        assert laptop.peers() == {}

        server.cli("nodes", "approve", "-i", node["id"])
        wait_until(lambda: backend_state(laptop) == "Running", 15, what="laptop to run once approved")
        assert up.wait(30) == 0
        wait_until(lambda: "laptop" in observer.peers(), 10, what="observer to see the approved laptop")
        wait_until(lambda: "observer" in laptop.peers(), 10, what="laptop to see the observer")
        assert nodes_by_name(server)["laptop"]["approved"] is True
    finally:
        laptop.stop()


def test_a_rejected_registration_leaves_no_node(signin, netns):
    server = signin["server"]
    intruder = Node(netns, signin["work"], "intruder", signin["binaries"], env=ENV)
    intruder.start()
    try:
        up, url = intruder.up_interactive(server)
        server.cli("auth", "reject", "--auth-id", url.rsplit("/", 1)[-1])
        out, _ = up.communicate(timeout=30)
        assert up.returncode != 0 and "rejected" in out, out
        assert "intruder" not in nodes_by_name(server)
        assert backend_state(intruder) == "NeedsLogin"
        assert server.cli_json("auth", "list") == []
    finally:
        intruder.stop()


def test_pre_auth_keys_decide_approval_per_key(signin, netns):
    server = signin["server"]
    plain_key = server.cli("preauthkeys", "create", "--user", "alice").stdout.strip()
    tagged_ok = server.cli("preauthkeys", "create", "--tags", "tag:server", "--pre-approved").stdout.strip()
    waiting = Node(netns, signin["work"], "waiting", signin["binaries"], env=ENV)
    server_node = Node(netns, signin["work"], "tagged", signin["binaries"], env=ENV)
    waiting.start()
    server_node.start()
    try:
        # `tailscale up` waits for Running, which needs the approval: run it in the background.
        up = subprocess.Popen(
            [str(waiting.cli_bin), f"--socket={waiting.socket}", "up", f"--login-server={server.url}",
             "--hostname=waiting", f"--authkey={plain_key}", "--timeout=60s"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=waiting.env,
        )
        wait_until(lambda: backend_state(waiting) == "NeedsMachineAuth", 15, what="the plain key's node to wait")
        assert nodes_by_name(server)["waiting"]["approved"] is False
        server_node.up(server, tagged_ok)
        assert backend_state(server_node) == "Running"
        assert nodes_by_name(server)["tagged"]["approved"] is True
        server.cli("nodes", "approve", "-i", nodes_by_name(server)["waiting"]["id"])
        assert up.wait(30) == 0 and backend_state(waiting) == "Running"
    finally:
        waiting.stop()
        server_node.stop()


def test_ssh_check_without_oidc_waits_for_auth_approve(signin, netns):
    """Without OIDC an SSH check rule holds the session until an admin runs `auth approve`."""
    server, observer = signin["server"], signin["observer"]
    box = Node(netns, signin["work"], "box", signin["binaries"], env=ENV)
    box.start()
    try:
        box.up(server, server.cli("preauthkeys", "create", "--tags", "tag:box", "--pre-approved").stdout.strip(),
               "--ssh")
        wait_until(lambda: "box" in observer.peers(), 20, what="the observer to see box")
        ssh = start_ssh(observer, box.ips()[0])
        url = ssh_check_url(ssh, server)
        auth_id = url.rsplit("/", 1)[-1]
        page = http_get(netns, url)
        assert f"trioscale auth approve --auth-id {auth_id}" in page
        [pending] = server.cli_json("auth", "list")
        assert pending["kind"] == "ssh-check" and pending["localUser"] == "root"
        time.sleep(1)
        assert ssh.poll() is None  # held
        server.cli("auth", "approve", "--auth-id", auth_id)
        out, _ = ssh.communicate(timeout=60)
        err = ssh.errfile.read_text()
        assert ssh.returncode == 0 and out.strip() == "ssh-ok", err
    finally:
        box.stop()
