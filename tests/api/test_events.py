"""The event stream, the stats samples and the webhook API against a real server: events reach
a stream over https with a key and over the admin socket, Last-Event-ID resumes, a lost position
says so, nothing without a key; webhooks are made (secret shown once), listed without it,
deliver to a real receiver, keep a log, and config.yaml's are read only."""

from __future__ import annotations

import json
import socket
import ssl
import time

import pytest
import requests

from appliance.events.signature import verify
from tests.events.receiver import Receiver
from tests.events.sse_client import SSEReader


@pytest.fixture(scope="module")
def key(api_server):
    return api_server.ok("apikeys", "create").strip()


def api(server, key, method, path, **kw):
    return requests.request(method, server.url + path, headers={"Authorization": f"Bearer {key}"},
                            verify=str(server.certs.ca), timeout=10, **kw)


def tls_stream(server, key: str | None, path: str = "/api/v1/events", headers=None) -> SSEReader:
    ctx = ssl.create_default_context(cafile=str(server.certs.ca))
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock = ctx.wrap_socket(raw, server_hostname="localhost")
    hdrs = {**({"authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    return SSEReader(sock, path, hdrs)


def test_events_reach_streams_over_https_and_the_admin_socket(api_server, key):
    s = api_server
    remote = tls_stream(s, key)
    local = SSEReader.unix(s.dir / "admin.sock", "/api/v1/events?types=user.created")
    try:
        time.sleep(0.5)  # both subscribed
        s.ok("users", "create", "ivan")
        for stream in (remote, local):
            e = stream.wait_for(lambda e: e["event"] == "user.created")
            assert e["data"]["data"]["user"]["name"] == "ivan" and e["data"]["data"]["actor"]["kind"] == "cli"
            assert e["id"] == e["data"]["id"] and e["data"]["type"] == "user.created"
        assert remote.status == 200 and remote.headers["content-type"] == "text/event-stream"
        notice = remote.wait_for(lambda e: e["event"] == "changed")
        assert notice["data"]["data"]["kind"] == "user" and notice["data"]["data"]["operation"] == "createUser"
        assert all(e["event"] == "user.created" for e in local.events)  # filtered
        last = remote.events[-1]["id"]
    finally:
        remote.close()
        local.close()
    # Resume: what happened while away comes first.
    s.ok("users", "create", "judy")
    again = tls_stream(s, key, headers={"last-event-id": last})
    try:
        e = again.wait_for(lambda e: e["event"] == "user.created")
        assert e["data"]["data"]["user"]["name"] == "judy"
    finally:
        again.close()
    lost = tls_stream(s, key, "/api/v1/events?lastEventId=1-1")
    try:
        e = lost.wait_for(lambda e: e["event"] == "changed")
        assert e["data"]["data"]["kind"] == "all"
    finally:
        lost.close()


def test_no_stream_without_a_key_and_bad_filters_refused(api_server, key):
    s = api_server
    r = requests.get(s.url + "/api/v1/events", verify=str(s.certs.ca), timeout=10)
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    r = api(s, key, "GET", "/api/v1/events", params={"types": "node.exploded"})
    assert r.status_code == 422


def test_stats_have_a_sample_from_the_start(api_server, key):
    doc = api(api_server, key, "GET", "/api/v1/stats").json()
    assert doc["range"] == "day" and doc["step"] == 300 and doc["samples"]
    sample = doc["samples"][-1]
    assert set(sample) == {"time", "nodesOnline", "nodesTotal", "mapSessions", "relayedBytes", "registrations"}
    assert doc["current"]["nodesTotal"] == 0
    week = api(api_server, key, "GET", "/api/v1/stats", params={"range": "week"}).json()
    assert week["step"] == 3600 and week["samples"]
    assert api(api_server, key, "GET", "/api/v1/stats", params={"range": "year"}).status_code == 422


def test_webhooks_through_the_api(api_server, key):
    s = api_server
    with Receiver() as rx:
        r = api(s, key, "POST", "/api/v1/webhook", json={"url": rx.url, "events": ["user.created"]})
        assert r.status_code == 200, r.text
        made = r.json()
        secret, hook = made["secret"], made["webhook"]
        assert secret.startswith("whsec_") and hook["source"] == "api" and hook["events"] == ["user.created"]
        listed = api(s, key, "GET", "/api/v1/webhook").json()["webhooks"]
        assert hook in listed and secret not in json.dumps(listed)
        assert api(s, key, "GET", f"/api/v1/webhook/{hook['id']}").json()["webhook"] == hook
        s.ok("users", "create", "mallory")
        deadline = time.monotonic() + 15
        while not rx.delivered() and time.monotonic() < deadline:
            time.sleep(0.1)
        (got,) = rx.requests
        assert verify(secret, got["headers"]["x-trioscale-signature"], got["body"].encode(), int(time.time()))
        assert json.loads(got["body"])["data"]["user"]["name"] == "mallory"
        log = api(s, key, "GET", f"/api/v1/webhook/{hook['id']}/deliveries").json()["deliveries"]
        assert [(d["eventType"], d["status"], d["attempts"], d["responseStatus"]) for d in log] == [
            ("user.created", "delivered", 1, 200)]
        audit = api(s, key, "GET", "/api/v1/audit", params={"operation": "createWebhook"}).json()["entries"][0]
        assert audit["after"]["url"] == rx.url and secret not in json.dumps(audit)
        assert api(s, key, "DELETE", f"/api/v1/webhook/{hook['id']}").status_code == 200
        assert api(s, key, "GET", f"/api/v1/webhook/{hook['id']}").status_code == 404
    mine = "my-own-secret-" + "x" * 20
    r = api(s, key, "POST", "/api/v1/webhook", json={"url": "http://127.0.0.1:9/x", "secret": mine})
    assert r.json()["secret"] == mine and r.json()["webhook"]["events"] == ["*"]
    audit = api(s, key, "GET", "/api/v1/audit", params={"kind": "webhook", "limit": 1}).json()["entries"][0]
    assert audit["request"]["secret"] == "***" and mine not in json.dumps(audit)
    api(s, key, "DELETE", f"/api/v1/webhook/{r.json()['webhook']['id']}")
    bad = api(s, key, "POST", "/api/v1/webhook", json={"url": "ftp://x", "events": ["*"]})
    assert bad.status_code == 422
    bad = api(s, key, "POST", "/api/v1/webhook", json={"url": "https://x.example", "secret": "short"})
    assert bad.status_code == 422
