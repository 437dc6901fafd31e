"""The audit log against a real server: changes from the CLI (admin socket) and from an API key
are recorded with who, from where, before and after; filters and pages; the JSON-lines export;
the CLI's audit verbs."""

from __future__ import annotations

import json
import os
import pwd

import pytest
import requests


@pytest.fixture(scope="module")
def key(api_server):
    return api_server.ok("apikeys", "create").strip()


def api(server, key, method, path, **kw):
    r = requests.request(method, server.url + path, headers={"Authorization": f"Bearer {key}"},
                         verify=str(server.certs.ca), timeout=10, **kw)
    return r


def test_changes_from_the_cli_and_an_api_key_are_recorded(api_server, key):
    s = api_server
    s.ok("users", "create", "carol", "--email", "carol@example.com")
    uid = next(u["id"] for u in json.loads(s.ok("users", "list", "-o", "json")) if u["name"] == "carol")
    r = api(s, key, "POST", f"/api/v1/user/{uid}/rename/dave")
    assert r.status_code == 200, r.text
    r = api(s, key, "PUT", "/api/v1/policy", json={"policy": '{"acls": [{"action": "accept", "src": ["*"], '
                                                             '"dst": ["*:*"]}]}'})
    assert r.status_code == 200, r.text

    doc = api(s, key, "GET", "/api/v1/audit", params={"user": uid}).json()
    ops = [(e["operation"], e["actor"]["kind"]) for e in doc["entries"]]
    assert ops[:2] == [("renameUser", "apikey"), ("createUser", "cli")], ops
    rename, create = doc["entries"][:2]
    assert rename["before"]["name"] == "carol" and rename["after"]["name"] == "dave"
    assert rename["target"] == {"kind": "user", "id": uid, "name": "dave"}
    assert rename["actor"]["source"] == "127.0.0.1" and rename["actor"]["name"].startswith("hskey-api-")
    assert rename["actor"]["name"].endswith("-***") and key not in json.dumps(doc)
    assert create["before"] is None and create["after"]["email"] == "carol@example.com"
    assert create["actor"]["source"] == "local"
    assert (create["actor"]["id"], create["actor"]["name"]) == (str(os.getuid()), pwd.getpwuid(os.getuid()).pw_name)
    assert create["request"] == {"name": "carol", "displayName": "", "email": "carol@example.com",
                                 "pictureUrl": ""}

    policy = api(s, key, "GET", "/api/v1/audit", params={"kind": "policy"}).json()["entries"][0]
    assert policy["operation"] == "setPolicy" and policy["actor"]["kind"] == "apikey"
    assert policy["target"]["kind"] == "policy" and '"accept"' in policy["after"]["policy"]

    # The key's own creation is there too, without the key.
    created = api(s, key, "GET", "/api/v1/audit", params={"operation": "createApiKey"}).json()["entries"]
    assert created and created[-1]["after"]["prefix"].endswith("-***")


def test_filters_pages_and_export(api_server, key):
    s = api_server
    for name in ("erin", "frank", "grace"):
        s.ok("users", "create", name)
    first = api(s, key, "GET", "/api/v1/audit", params={"actor": "cli", "operation": "createUser", "limit": 2}).json()
    assert [e["after"]["name"] for e in first["entries"]] == ["grace", "frank"]
    second = api(s, key, "GET", "/api/v1/audit", params={"actor": "cli", "operation": "createUser", "limit": 2,
                                                        "cursor": first["nextCursor"]}).json()
    assert second["entries"][0]["after"]["name"] == "erin"
    assert api(s, key, "GET", "/api/v1/audit", params={"since": "2999-01-01T00:00:00Z"}).json() == {
        "entries": [], "nextCursor": None}
    bad = api(s, key, "GET", "/api/v1/audit", params={"since": "2030-01-01T00:00:00Z", "until": "2020-01-01T00:00:00Z"})
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    assert api(s, key, "GET", "/api/v1/audit", params={"user": "nobody"}).status_code == 404

    r = api(s, key, "GET", "/api/v1/audit/export", params={"actor": "cli"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in r.text.splitlines()]
    listed = api(s, key, "GET", "/api/v1/audit", params={"actor": "cli", "limit": 1000}).json()["entries"]
    assert lines == listed and len(lines) >= 4


def test_cli_audit_verbs(api_server):
    s = api_server
    s.ok("users", "create", "heidi")
    table = s.ok("audit", "list", "--operation", "createUser", "--since", "1h")
    assert "heidi" in table and "created" in table and "cli" in table
    doc = json.loads(s.ok("audit", "list", "--actor", "cli", "--limit", "1", "-o", "json"))
    assert len(doc["entries"]) == 1 and doc["nextCursor"]
    exported = [json.loads(line) for line in s.ok("audit", "export", "--operation", "createUser").splitlines()]
    assert [e["after"]["name"] for e in exported][:1] == ["heidi"]
    assert all(e["operation"] == "createUser" for e in exported)
