"""Issue 12's events, audit log and metrics with a real tailscaled 1.96.4: its registration,
coming online, a route the policy auto-approves and going offline reach a webhook (a real
receiver in the namespace: signed, node.created retried after a 500, one node's events in
order) and the event stream (over the admin socket); the audit log says who did what (the
client's pre-auth key, the CLI, the server's auto-approver) with before and after; /metrics
counts what happened."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from appliance.adminclient import AdminClient, APIError
from appliance.events.signature import verify
from tests.events.receiver import read_log
from tests.events.sse_client import SSEReader
from tests.ports import free_port

from .harness import REPO, Node, Server, http_get, stop_process, wait_until

SECRET = "0123456789abcdef-webhook-secret"
ENV = {"TS_DEBUG_USE_DERP_HTTP": "1"}  # the embedded relay over plain HTTP (one machine, no TLS)
POLICY = """{
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
  "autoApprovers": {"routes": {"10.97.0.0/24": ["alice@example.com"]}},
}"""


@pytest.fixture(scope="module")
def world(netns, client_binaries, tmp_path_factory):
    work = tmp_path_factory.mktemp("events")
    hook_port, metrics_port = free_port(), free_port()
    hook_log = work / "hooks.jsonl"
    receiver = subprocess.Popen(
        netns.wrap([sys.executable, "-m", "tests.events.receiver", str(hook_port), str(hook_log), "node.created=1"]),
        cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE, text=True)
    assert receiver.stdout.readline().strip() == "listening"
    server = Server(netns, work / "server", overrides={
        "policy": {"mode": "database"}, "metrics_listen_addr": f"127.0.0.1:{metrics_port}",
        "derp": {"server": {"enabled": True, "stun_listen_addr": f"127.0.0.1:{free_port()}"}},
        "webhooks": [{"url": f"http://127.0.0.1:{hook_port}/hook", "secret": SECRET, "events": ["*"]}],
    })
    server.start()
    server.cli("users", "create", "alice", "--email", "alice@example.com")
    (work / "policy.hujson").write_text(POLICY)
    server.cli("policy", "set", "-f", str(work / "policy.hujson"))
    stream = SSEReader.unix(server.dir / "data" / "trioscale.sock")
    node = Node(netns, work, "gw", client_binaries, env=ENV)
    try:
        yield {"server": server, "node": node, "stream": stream, "hooks": hook_log, "work": work,
               "metrics": f"http://127.0.0.1:{metrics_port}/metrics", "ns": netns}
    finally:
        stream.close()
        node.stop()
        server.stop()
        stop_process(receiver, 5)


def hooks_of(world, node_id: str | None = None) -> list[dict]:
    out = []
    for r in read_log(world["hooks"]):
        doc = json.loads(r["body"])
        if node_id is None or doc["data"].get("node", {}).get("id") == node_id:
            out.append({**doc, "_status": r["status"], "_headers": r["headers"], "_body": r["body"]})
    return out


def test_a_real_client_joining_reaches_webhooks_the_stream_and_the_audit_log(world):
    server, node, stream = world["server"], world["node"], world["stream"]
    key = server.cli("preauthkeys", "create", "--user", "alice").stdout.strip()
    node.start()
    node.up(server, key, "--advertise-routes=10.97.0.0/24")
    nid = wait_until(lambda: next((n["id"] for n in server.cli_json("nodes", "list") if n["givenName"] == "gw"), None),
                     20, what="the node listed")

    for kind in ("node.created", "node.online", "route.approved"):
        e = stream.wait_for(lambda e, k=kind: e["event"] == k and e["data"]["data"]["node"]["id"] == nid)
        assert e["data"]["data"]["node"]["givenName"] == "gw"
    approved = stream.wait_for(lambda e: e["event"] == "route.approved")
    assert approved["data"]["data"]["routes"] == ["10.97.0.0/24"]
    assert approved["data"]["data"]["actor"] == {"kind": "server", "id": "auto-approver", "name": "", "source": ""}

    wait_until(lambda: {"node.created", "node.online", "route.approved"} <= {
        h["type"] for h in hooks_of(world, nid) if h["_status"] == 200}, 30, what="the webhook deliveries")
    hooks = hooks_of(world, nid)
    created = [h for h in hooks if h["type"] == "node.created"]
    assert [h["_status"] for h in created] == [500, 200]  # retried after the 500
    assert len({h["id"] for h in created}) == 1  # the same event
    order = [h["type"] for h in hooks if h["_status"] == 200]
    assert order.index("node.created") < order.index("node.online")  # waited for the retry
    for h in hooks:
        assert verify(SECRET, h["_headers"]["x-trioscale-signature"], h["_body"].encode(), int(time.time()))

    # The audit log: the client's key registered it, the server approved its route.
    reg = server.cli_json("audit", "list", "--operation", "registerNode", "--node", nid)["entries"][0]
    assert reg["actor"]["kind"] == "preauthkey" and reg["actor"]["name"].startswith("hskey-auth-")
    assert reg["actor"]["source"] == "127.0.0.1" and reg["before"] is None and reg["after"]["givenName"] == "gw"
    routes = server.cli_json("audit", "list", "--operation", "setApprovedRoutes", "--node", nid)["entries"][0]
    assert (routes["actor"]["kind"], routes["actor"]["id"]) == ("server", "auto-approver")
    assert routes["before"]["approvedRoutes"] == [] and routes["after"]["approvedRoutes"] == ["10.97.0.0/24"]

    server.cli("nodes", "rename", "-i", nid, "gateway")
    renamed = server.cli_json("audit", "list", "--operation", "renameNode")["entries"][0]
    assert renamed["actor"]["kind"] == "cli" and renamed["actor"]["source"] == "local"
    assert (renamed["before"]["givenName"], renamed["after"]["givenName"]) == ("gw", "gateway")
    stream.wait_for(lambda e: e["event"] == "changed" and e["data"]["data"] == {
        "kind": "node", "id": nid, "operation": "renameNode"})

    # Going offline: after its online, in the stream and at the webhook.
    node.ts("down")
    stream.wait_for(lambda e: e["event"] == "node.offline" and e["data"]["data"]["node"]["id"] == nid)
    wait_until(lambda: "node.offline" in [h["type"] for h in hooks_of(world, nid) if h["_status"] == 200], 30,
               what="node.offline delivered")
    order = [h["type"] for h in hooks_of(world, nid) if h["_status"] == 200]
    assert order.index("node.online") < order.index("node.offline")

    # config.yaml's webhook is read only through the API; its delivery log shows the retry.
    admin = AdminClient(server.dir / "data" / "trioscale.sock")
    with pytest.raises(APIError) as refused:
        admin.call("DELETE", "/api/v1/webhook/config-0")
    assert refused.value.status == 403
    log = admin.call("GET", "/api/v1/webhook/config-0/deliveries")["deliveries"]
    first = next(d for d in log if d["eventType"] == "node.created" and d["nodeId"] == nid)
    assert (first["status"], first["attempts"], first["responseStatus"]) == ("delivered", 2, 200)

    node.up(server, None, "--advertise-routes=10.97.0.0/24")  # online again, for the metrics below
    wait_until(lambda: sum(e["event"] == "node.online" for e in stream.events) >= 2, 30, what="online again")


def test_interactive_login_decisions_are_audited(world, client_binaries):
    server = world["server"]
    laptop = Node(world["ns"], world["work"], "laptop", client_binaries, env=ENV)
    laptop.start()
    try:
        up, url = laptop.up_interactive(server)
        server.cli("auth", "register", "--auth-id", url.rsplit("/", 1)[-1], "--user", "alice")
        up.wait(60)
        entry = server.cli_json("audit", "list", "--operation", "authRegister")["entries"][0]
        assert entry["actor"]["kind"] == "cli" and entry["target"]["kind"] == "node"
        assert entry["before"] is None and entry["after"]["givenName"] == "laptop"
        assert entry["after"]["registerMethod"] == "REGISTER_METHOD_CLI"
        assert entry["request"]["authId"] == url.rsplit("/", 1)[-1]
        laptop.ts("logout")
        up, url = laptop.up_interactive(server)
        auth_id = url.rsplit("/", 1)[-1]
        server.cli("auth", "reject", "--auth-id", auth_id)
        up.communicate(timeout=30)
        rejected = server.cli_json("audit", "list", "--operation", "authReject")["entries"][0]
        assert rejected["actor"]["kind"] == "cli" and rejected["request"]["authId"] == auth_id
        logout = server.cli_json("audit", "list", "--operation", "logoutNode")["entries"][0]
        assert logout["actor"]["kind"] == "node" and logout["actor"]["name"] == "laptop"
    finally:
        laptop.stop()


def test_metrics_after_real_activity(world, client_binaries):
    stranger = Node(world["ns"], world["work"], "stranger", client_binaries, env=ENV)
    stranger.start()
    try:
        bad = stranger.up(world["server"], "hskey-auth-aaaaaaaaaaaa-" + "0" * 64, check=False)
        assert bad.returncode != 0 and "not known" in bad.stderr + bad.stdout, bad
    finally:
        stranger.stop()
    text = http_get(world["ns"], world["metrics"])

    def value(pattern: str) -> float:
        m = re.search(r"^" + re.escape(pattern) + r" ([0-9.e+]+)$", text, re.M)
        assert m, f"{pattern} not in /metrics"
        return float(m.group(1))

    assert value('trioscale_registrations_total{method="authkey"}') >= 1
    assert value('trioscale_registrations_refused_total{reason="unknown_key"}') >= 1
    assert value('trioscale_nodes_by_state{state="online"}') == 1
    assert value("trioscale_map_sessions") >= 1
    assert value("trioscale_map_deltas_total") >= 1
    assert value('trioscale_map_delta_seconds_bucket{le="+Inf"}') == value("trioscale_map_deltas_total")
    assert value('trioscale_webhook_deliveries_total{result="delivered"}') >= 4
    assert value('trioscale_webhook_deliveries_total{result="retry"}') >= 1
    assert value('trioscale_api_requests_total{status="200"}') >= 5
    assert value("trioscale_store_seconds_count") > 10
    assert value("trioscale_event_streams") == 1
    assert value("trioscale_audit_entries_total") >= 4
