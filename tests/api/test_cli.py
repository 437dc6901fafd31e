"""The CLI against a real server: hostile names reach the server as written (every path segment
encoded), every error is one line, and the same verbs work remotely over https with an API key
(TRIOSCALE_CLI_* and Headscale's HEADSCALE_CLI_* variables)."""

from __future__ import annotations

import json
import re

import pytest


def one_line_error(res) -> str:
    assert res.returncode == 1, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trioscale: "), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


def user_names(server, env=None) -> list[str]:
    return [u["name"] for u in json.loads(server.ok("users", "list", "-o", "json", env=env))]


HOSTILE = ["q?z", "q#z", "a b", "🚀", "zoë", "x/y", "../x", "a%2Fb", "%", "a&b=c", "-", "a\tb", "ab\n"]


def test_hostile_names_reach_the_server_as_written(api_server):
    s = api_server
    s.ok("users", "create", "alice", "--email", "alice@example.com", "--display-name", "Alice Å 🚀")
    for i, name in enumerate(HOSTILE):
        err = one_line_error(s.cli("users", "rename", "alice", name))
        assert "not a valid user name" in err and repr(name) in err
        if i % 3 == 0:  # the body and the node paths take the same road; a sample is enough
            assert "not a valid user name" in one_line_error(s.cli("users", "create", name))
            assert "not a valid node name" in one_line_error(s.cli("nodes", "rename", "-i", "1", name))
    assert user_names(s) == ["alice"]  # nothing was renamed to a cut-off name ("q", "x")
    # Names that need encoding and are valid arrive whole.
    s.ok("users", "rename", "alice", "a.b@corp")
    assert user_names(s) == ["a.b@corp"]
    s.ok("users", "rename", "a.b@corp", "alice")
    user = json.loads(s.ok("users", "list", "-o", "json"))[0]
    assert user["displayName"] == "Alice Å 🚀" and user["email"] == "alice@example.com"


def test_every_error_is_one_line(api_server, tmp_path):
    s = api_server
    assert "alice@" in one_line_error(s.cli("users", "create", "bob", "--email", "alice@"))
    assert "already has the email" in one_line_error(s.cli("users", "create", "bob", "--email", "ALICE@example.com"))
    assert "not found" in one_line_error(s.cli("nodes", "delete", "-i", "999"))
    assert "not found" in one_line_error(s.cli("nodes", "expire", "-i", "999"))
    assert "route" in one_line_error(s.cli("nodes", "approve-routes", "-i", "1", "-r", "banana"))
    assert "tag" in one_line_error(s.cli("nodes", "tag", "-i", "1", "-t", "server"))
    assert "not found" in one_line_error(s.cli("preauthkeys", "create", "--user", "nobody"))
    bad = tmp_path / "bad.hujson"
    bad.write_text('{"acls": [{"action": "accept", "src": ["nobody@"],\n "dst": ["*:*"]}],\n "bogus": [}')
    one_line_error(s.cli("policy", "set", "-f", str(bad)))
    assert "policy" not in s.ok("policy", "get").lower() or "bogus" not in s.ok("policy", "get")


def test_remote_cli_over_https_with_an_api_key(api_server):
    s = api_server
    out = s.ok("apikeys", "create", "--expiration", "1h")
    key = out.strip()
    assert out == key + "\n" and re.fullmatch(r"hskey-api-[a-z0-9]{12}-[0-9a-f]{64}", key)
    trust = {"SSL_CERT_FILE": str(s.certs.ca)}
    remote = {**trust, "TRIOSCALE_CLI_ADDRESS": s.url, "TRIOSCALE_CLI_API_KEY": key}
    # The config's socket does not exist for the remote client: it must not be used.
    assert user_names(s, env=remote) == ["alice"]
    s.ok("users", "create", "remote-made", env=remote)
    headscale = {**trust, "HEADSCALE_CLI_ADDRESS": f"localhost:{s.port}", "HEADSCALE_CLI_API_KEY": key}
    assert "remote-made" in user_names(s, env=headscale)
    assert "q?z" in one_line_error(s.cli("users", "rename", "remote-made", "q?z", env=remote))
    s.ok("users", "destroy", "remote-made", env=remote)
    # TLS is checked unless told otherwise.
    untrusted = {k: v for k, v in remote.items() if k != "SSL_CERT_FILE"}
    assert "TLS" in one_line_error(s.cli("users", "list", env=untrusted))
    assert user_names(s, env={**untrusted, "TRIOSCALE_CLI_INSECURE": "1"}) == ["alice"]
    wrong = {**remote, "TRIOSCALE_CLI_API_KEY": "hskey-api-aaaaaaaaaaaa-" + "0" * 64}
    assert "valid API key" in one_line_error(s.cli("users", "list", env=wrong))
    keys = json.loads(s.ok("apikeys", "list", "-o", "json"))
    mine = next(k for k in keys if key.startswith(k["prefix"].removesuffix("***")))
    assert mine["prefix"].endswith("-***") and key not in json.dumps(keys)
    # Expired: refused; deleted: gone.
    s.ok("apikeys", "expire", "--prefix", mine["prefix"])
    assert "valid API key" in one_line_error(s.cli("users", "list", env=remote))
    s.ok("apikeys", "delete", "--prefix", mine["prefix"])
    assert all(k["id"] != mine["id"] for k in json.loads(s.ok("apikeys", "list", "-o", "json")))


def test_dns_settings_and_last_use_survive_a_restart(api_server):
    s = api_server
    key = s.ok("apikeys", "create").strip()
    remote = {"SSL_CERT_FILE": str(s.certs.ca), "TRIOSCALE_CLI_ADDRESS": s.url, "TRIOSCALE_CLI_API_KEY": key}
    s.ok("users", "list", env=remote)
    doc = json.loads(s.ok("dns", "set", "--nameservers", "9.9.9.9,2620:fe::fe", "--search-domains", "corp.example",
                          "--split", "internal.example=10.0.0.53", "-o", "json"))
    assert doc["nameservers"]["global"] == ["9.9.9.9", "2620:fe::fe"]
    assert set(doc["changedByApi"]) == {"nameservers.global", "nameservers.split", "search_domains"}
    assert "not an IP address" in one_line_error(s.cli("dns", "set", "--nameservers", "banana"))
    s.stop()
    s.start()
    doc = json.loads(s.ok("dns", "show", "-o", "json"))
    assert doc["searchDomains"] == ["corp.example"] and doc["nameservers"]["split"] == {
        "internal.example": ["10.0.0.53"]}
    settings_changed = json.loads(s.ok("dns", "set", "--reset", "all", "-o", "json"))["changedByApi"]
    assert settings_changed == []
    # The use above was recorded when the server stopped (last use is written in batches).
    keys = json.loads(s.ok("apikeys", "list", "-o", "json"))
    assert next(k for k in keys if key.startswith(k["prefix"].removesuffix("***")))["lastSeen"]


def test_failed_key_attempts_from_one_source_get_429(api_server):
    s = api_server
    env = {"SSL_CERT_FILE": str(s.certs.ca), "TRIOSCALE_CLI_ADDRESS": s.url,
           "TRIOSCALE_CLI_API_KEY": "hskey-api-bbbbbbbbbbbb-" + "1" * 64}
    errors = []
    while len(errors) < 25 and not (errors and "too many" in errors[-1]):
        errors.append(one_line_error(s.cli("users", "list", env=env)))
    # Ten at once, then one per 6 s: a slow machine may earn back a try or two meanwhile.
    assert all("valid API key" in e for e in errors[:10])
    assert "too many failed API key attempts" in errors[-1] and len(errors) <= 15, errors
    log = s.log_text()
    assert "API key refused from 127.0.0.1" in log and "Traceback" not in log


@pytest.fixture(autouse=True)
def _no_tracebacks(api_server):
    yield
    assert "Traceback" not in api_server.log_text()


def test_sign_in_verbs_answer_in_one_line(api_server):
    s = api_server
    assert json.loads(s.ok("auth", "list", "-o", "json")) == []
    missing = "hskey-authreq-" + "0" * 24
    for verb in (("auth", "approve", "--auth-id", missing), ("auth", "reject", "--auth-id", missing),
                 ("auth", "register", "--auth-id", missing, "--user", "alice"),
                 ("nodes", "register", "--key", missing, "--user", "alice")):
        assert "no pending auth request" in one_line_error(s.cli(*verb))
    assert "hskey-authreq-<24 hex digits>" in one_line_error(s.cli("auth", "reject", "--auth-id=rm -rf"))
    assert "not found" in one_line_error(s.cli("nodes", "approve", "-i", "999"))
    key = json.loads(s.ok("preauthkeys", "create", "--user", "alice", "--pre-approved", "-o", "json"))
    assert key["preApproved"] is True
    # Roles: one owner, handed over, never just dropped.
    users = {u["name"]: u for u in json.loads(s.ok("users", "list", "-o", "json"))}
    owner = next(name for name, u in users.items() if u["role"] == "owner")
    s.ok("users", "create", "roly")
    assert "owns the tailnet" in one_line_error(s.cli("users", "set-role", owner, "member"))
    assert "not found" in one_line_error(s.cli("users", "set-role", "nobody", "admin"))
    assert "roly is now network-admin" in s.ok("users", "set-role", "roly", "network-admin")
    s.ok("users", "set-role", "roly", "owner")
    roles = {u["name"]: u["role"] for u in json.loads(s.ok("users", "list", "-o", "json"))}
    assert roles[owner] == "admin" and roles["roly"] == "owner"
    s.ok("users", "set-role", owner, "owner")
    s.ok("users", "set-role", "roly", "member")
    s.ok("users", "destroy", "roly")
