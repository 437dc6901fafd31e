"""Sign-in through a real OpenID provider (npm's oidc-provider) with a real browser (Debian's
chromium through Playwright) and the official tailscaled 1.96.4 (issue 11's bar): from the
client's AuthURL through the provider's login page to the callback and the client Running;
each refusal with its page and no node; the provider rotating its signing key between logins."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from ..browser import Unavailable as NoBrowser
from ..browser import open_browser
from ..oidc.fixture import OIDCProvider, Unavailable as NoProvider
from .harness import REPO, Node, Server, serve_files, socks_fetch, ssh_check_url, start_ssh, wait_until

ENV = {"TS_DEBUG_USE_DERP_HTTP": "1"}
SERVER_PORT = 9931
SSO_PORT = 9932
PROVIDER_PORT = 9510
STAFF = ["staff"]
USERS = {
    "alice": {"email": "alice@example.com", "email_verified": True, "groups": ["staff", "admins"],
              "name": "Alice Liddell", "picture": "https://example.com/alice.png"},
    "bob": {"email": "bob@example.com", "email_verified": True, "groups": STAFF, "name": "Bob"},
    "mallory": {"email": "mallory@evil.test", "email_verified": True, "groups": STAFF},
    "dave": {"email": "dave@example.com", "email_verified": True, "groups": STAFF},
    "erin": {"email": "erin@example.com", "email_verified": True, "groups": ["contractors"]},
    "frank": {"email": "frank@example.com", "email_verified": False, "groups": STAFF},
}


def policy_text() -> str:
    return """{
      // group:admins is filled by the identity provider's groups claim at each login.
      "groups": {"group:admins": []},
      "tagOwners": {"tag:web": ["autogroup:admin"]},
      "acls": [
        {"action": "accept", "src": ["group:admins"], "dst": ["tag:web:8080"]},
        {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
        {"action": "accept", "src": ["tag:web"], "dst": ["autogroup:member:*"]},
      ],
    }"""


@pytest.fixture(scope="module")
def world(netns, client_binaries, tmp_path_factory):
    work = tmp_path_factory.mktemp("oidc")
    server_url = f"http://127.0.0.1:{SERVER_PORT}"
    try:
        provider = OIDCProvider(work / "provider", port=PROVIDER_PORT, users=USERS, wrap=netns.wrap, clients=[{
            "client_id": "trioscale", "client_secret": "provider-secret-for-tests",
            "redirect_uris": [f"{server_url}/oidc/callback"],
            "grant_types": ["authorization_code"], "response_types": ["code"],
        }, {
            "client_id": "trioscale-sso", "client_secret": "sso-setup-secret",
            "redirect_uris": [f"http://127.0.0.1:{SSO_PORT}/oidc/callback"],
            "grant_types": ["authorization_code"], "response_types": ["code"],
        }])
        provider.start()
    except NoProvider as e:
        pytest.skip(f"oidc-provider unavailable: {e}")
    creds = work / "creds"
    creds.mkdir()
    (creds / "oidc_secret").write_text("provider-secret-for-tests\n")
    (work / "policy.hujson").write_text(policy_text())
    server = Server(netns, work / "server", port=SERVER_PORT, env={"CREDENTIALS_DIRECTORY": str(creds)}, overrides={
        "derp": {"server": {"enabled": True, "stun_listen_addr": "127.0.0.1:3478"}},
        "policy": {"mode": "file", "path": str(work / "policy.hujson")},
        "oidc": {
            "issuer": provider.issuer, "client_id": "trioscale",
            # Headscale's systemd-credentials form: the variable is expanded by the server.
            "client_secret_path": "${CREDENTIALS_DIRECTORY}/oidc_secret",
            "scope": ["openid", "profile", "email", "groups"],
            "pkce": {"enabled": True, "method": "S256"},
            "allowed_domains": ["example.com"], "allowed_groups": ["staff"],
            "allowed_users": ["alice@example.com", "bob@example.com", "frank@example.com", "erin@example.com"],
        },
    })
    server.start()
    nodes: dict[str, Node] = {}
    try:
        with open_browser(work, netns) as browser:
            yield {"server": server, "provider": provider, "browser": browser, "work": work, "netns": netns,
                   "binaries": client_binaries, "nodes": nodes}
    except NoBrowser as e:
        pytest.skip(f"browser unavailable: {e}")
    finally:
        for node in nodes.values():
            node.stop()
        server.stop()
        provider.stop()


SOCKS = {"alice-laptop": 1081, "door": 1082}


def start_node(world, name: str) -> Node:
    node = Node(world["netns"], world["work"], name, world["binaries"], env=ENV, socks_port=SOCKS.get(name))
    node.start()
    world["nodes"][name] = node
    return node


def sign_in(world, url: str, login: str, *, confirm: str | None = "add", callbacks: list | None = None,
            rewrite_state: bool = False) -> str:
    """A person opens the AuthURL, signs in at the provider as ``login``, and (if asked) clicks
    ``confirm`` on our page. Returns the text of the last page."""
    ctx = world["browser"].new_context()
    try:
        page = ctx.new_page()
        # The provider's redirect to our callback is the last hop of a redirect chain, which
        # Playwright's page.route never sees; Chromium's own Fetch interception does.
        cdp = ctx.new_cdp_session(page)

        def on_paused(ev):
            target = ev["request"]["url"]
            if callbacks is not None:
                callbacks.append(target)
            params = {"requestId": ev["requestId"]}
            if rewrite_state:
                params["url"] = re.sub(r"state=([^&]+)", lambda m: "state=" + m.group(1)[::-1], target)
            cdp.send("Fetch.continueRequest", params)

        cdp.on("Fetch.requestPaused", on_paused)
        cdp.send("Fetch.enable", {"patterns": [{"urlPattern": "*/oidc/callback?*"}]})
        page.goto(url)
        page.fill("input[name=login]", login)
        page.fill("input[name=password]", "any password")
        page.click("button[type=submit]")
        page.wait_for_load_state()
        if confirm and page.locator(f"#{confirm}").count():
            page.click(f"#{confirm}")
            page.wait_for_load_state()
        return page.inner_text("body")
    finally:
        ctx.close()


def nodes_by_name(server: Server) -> dict[str, dict]:
    return {n["givenName"]: n for n in server.cli_json("nodes", "list")}


def test_a_person_signs_in_and_the_client_runs(world):
    server = world["server"]
    laptop = start_node(world, "alice-laptop")
    up, url = laptop.up_interactive(server)
    assert laptop.status()["BackendState"] == "NeedsLogin"
    callbacks: list[str] = []
    text = sign_in(world, url, "alice", callbacks=callbacks)
    assert "Machine added" in text, text
    assert up.wait(60) == 0
    assert laptop.status()["BackendState"] == "Running"
    node = nodes_by_name(server)["alice-laptop"]
    assert node["registerMethod"] == "REGISTER_METHOD_OIDC"
    user = node["user"]
    assert (user["name"], user["email"], user["displayName"], user["provider"]) == (
        "alice", "alice@example.com", "Alice Liddell", "oidc")
    assert user["providerId"] == f"{world['provider'].issuer}/alice"
    assert user["profilePicUrl"] == "https://example.com/alice.png"
    world["alice_callback"] = callbacks[0]
    log = server.log_text()
    for secret in ("provider-secret-for-tests", re.search(r"code=([^&]+)", callbacks[0]).group(1)):
        assert secret not in log


def console_sign_in(world, login: str):
    """Sign in to the web console through the provider; returns (context, page) at the end."""
    ctx = world["browser"].new_context()
    page = ctx.new_page()
    page.goto(world["server"].url + "/admin/login")
    page.click("#oidc")
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", "any password")
    page.click("button[type=submit]")
    page.wait_for_load_state()
    return ctx, page


def test_the_web_console_signs_in_through_the_same_provider_with_the_stored_role(world):
    """After alice's machine login (she owns the tailnet): the console's sign-in is the same
    flow; the role stored for her user decides what she may change."""
    server = world["server"]
    ctx, page = console_sign_in(world, "alice")
    try:
        page.wait_for_url(server.url + "/admin/", timeout=30_000)  # through our continue page
        header = page.inner_text("header")
        assert "alice@example.com" in header and "owner" in header, header
        assert "can look but not change" not in page.inner_text("main")
        assert len([u for u in server.cli_json("users", "list") if u["email"] == "alice@example.com"]) == 1
    finally:
        ctx.close()
    ctx, page = console_sign_in(world, "mallory")  # not in allowed_domains: the same refusal
    try:
        assert "Sign-in refused" in page.inner_text("body")
        assert not any(c["name"] == "trioscale_console" for c in ctx.cookies())
    finally:
        ctx.close()


def test_a_replayed_callback_is_refused(world):
    server = world["server"]
    before = set(nodes_by_name(server))
    ctx = world["browser"].new_context()
    try:
        page = ctx.new_page()
        page.goto(world["alice_callback"])
        text = page.inner_text("body")
    finally:
        ctx.close()
    assert "expired or was already used" in text, text
    assert set(nodes_by_name(server)) == before


@pytest.fixture(scope="module")
def door(world):
    """One waiting client whose AuthURL every refusal case uses: none of them may add it."""
    node = start_node(world, "door")
    up, url = node.up_interactive(world["server"])
    yield url
    up.kill()


@pytest.mark.parametrize("login, words", [
    ("mallory", "email domain are not allowed"),
    ("dave", "not on the list of people allowed"),
    ("erin", "not in a group allowed"),
    ("frank", "email address is not verified"),
])
def test_people_the_rules_exclude_are_refused(world, door, login, words):
    text = sign_in(world, door, login)
    assert "Sign-in refused" in text and words in text, text
    assert "door" not in nodes_by_name(world["server"])
    assert login not in {u["name"] for u in world["server"].cli_json("users", "list")}


def test_a_tampered_state_is_refused(world, door):
    text = sign_in(world, door, "alice", rewrite_state=True)
    assert "expired or was already used" in text, text
    assert "door" not in nodes_by_name(world["server"])


@pytest.mark.parametrize("tamper", [{"rogue": True}, {"aud": "someone-else"}, {"exp": -3600}],
                         ids=["key-not-in-jwks", "wrong-audience", "expired"])
def test_bad_id_tokens_are_refused(world, door, tamper):
    provider = world["provider"]
    provider.tamper(**tamper)
    try:
        text = sign_in(world, door, "alice")
    finally:
        provider.tamper()
    assert "could not be verified" in text, text
    assert "door" not in nodes_by_name(world["server"])


def test_the_provider_rotating_its_key_between_two_logins(world, door):
    server, provider = world["server"], world["provider"]
    kid = provider.rotate_keys()
    text = sign_in(world, door, "bob")
    assert "Machine added" in text, text
    wait_until(lambda: world["nodes"]["door"].status()["BackendState"] == "Running", 30, what="door to run")
    assert nodes_by_name(server)["door"]["user"]["name"] == "bob"
    assert kid  # the server verified a token signed by a key it had never seen


def test_provider_groups_decide_reachability_and_change_at_next_login(world):
    """group:admins in the policy is filled from the groups claim: alice (admins) reaches the
    web server's port, bob (staff) does not; after the provider moves them, each one's access
    changes at their next login, and peers get it as a policy delta."""
    server, provider, netns = world["server"], world["provider"], world["netns"]
    nodes = world["nodes"]
    web = start_node(world, "web")
    web.up(server, server.cli("preauthkeys", "create", "--tags", "tag:web").stdout.strip())
    web_ip = web.ips()[0]
    site = world["work"] / "site"
    site.mkdir()
    (site / "hello").write_text("hello from web\n")

    def reaches(name: str) -> bool:
        return socks_fetch(netns, SOCKS[name], web_ip, 8080, "/hello", timeout=4) is not None

    with serve_files(netns, site, 8080):
        wait_until(lambda: reaches("alice-laptop"), 30, interval=1, what="alice (group:admins) to reach web")
        assert not reaches("door")  # bob is staff only
        users = {u["name"]: u for u in server.cli_json("users", "list")}
        assert set(users["alice"]["groups"]) == {"staff", "admins"} and users["bob"]["groups"] == ["staff"]

        provider.set_users({**USERS, "alice": {**USERS["alice"], "groups": ["staff"]},
                            "bob": {**USERS["bob"], "groups": ["staff", "admins"]}})
        up, url = nodes["door"].up_interactive(server, "--force-reauth")
        assert "Machine added" in sign_in(world, url, "bob")
        assert up.wait(60) == 0
        assert nodes_by_name(server)["door"]["user"]["name"] == "bob"  # the same node, signed in again
        wait_until(lambda: reaches("door"), 30, interval=1, what="bob to reach web after his next login")
        assert reaches("alice-laptop")  # alice has not signed in again: her groups are as they were

        up, url = nodes["alice-laptop"].up_interactive(server, "--force-reauth")
        assert "Machine added" in sign_in(world, url, "alice")
        assert up.wait(60) == 0
        wait_until(lambda: not reaches("alice-laptop"), 30, interval=1, what="alice to lose access after her login")
    users = {u["name"]: u for u in server.cli_json("users", "list")}
    assert users["alice"]["groups"] == ["staff"] and set(users["bob"]["groups"]) == {"staff", "admins"}


SSH_POLICY = """{
  "groups": {"group:admins": []},
  "tagOwners": {"tag:web": ["autogroup:admin"], "tag:db": ["autogroup:admin"]},
  "acls": [
    {"action": "accept", "src": ["autogroup:member"], "dst": ["tag:web:22", "tag:db:22"]},
    {"action": "accept", "src": ["tag:web"], "dst": ["autogroup:member:*"]},
  ],
  "ssh": [
    {"action": "check", "src": ["autogroup:member"], "dst": ["tag:web"], "users": ["root"], "checkPeriod": "%s"},
    {"action": "accept", "src": ["autogroup:member"], "dst": ["tag:db"], "users": ["root"]},
  ],
}"""


def test_ssh_check_holds_until_sign_in_and_honours_check_period(world):
    """With the real client's SSH server (`tailscale up --ssh`): a check rule holds the session
    until the person signs in through the provider, then lets it through; within checkPeriod
    the next session is not asked again, with "always" it is; an accept rule never asks."""
    server, nodes = world["server"], world["nodes"]
    policy_file = world["work"] / "policy.hujson"
    reloads = server.log_text().count("policy reloaded")
    policy_file.write_text(SSH_POLICY % "1h")
    wait_until(lambda: server.log_text().count("policy reloaded") > reloads, 10, what="the policy to reload")
    web = nodes["web"]
    web.ts("set", "--ssh")
    db = start_node(world, "db")
    db.up(server, server.cli("preauthkeys", "create", "--tags", "tag:db").stdout.strip(), "--ssh")
    alice = nodes["alice-laptop"]
    web_ip, db_ip = web.ips()[0], db.ips()[0]
    wait_until(lambda: "db" in alice.peers(), 20, what="alice to see db")

    ssh = start_ssh(alice, web_ip)
    url = ssh_check_url(ssh, server)
    time.sleep(2)
    assert ssh.poll() is None  # held: no shell before the sign-in
    assert [r["kind"] for r in server.cli_json("auth", "list")] == ["ssh-check"]
    text = sign_in(world, url, "alice")
    assert "SSH connection allowed" in text, text
    out, _ = ssh.communicate(timeout=60)
    err = ssh.errfile.read_text()
    assert ssh.returncode == 0 and out.strip() == "ssh-ok", err

    again = start_ssh(alice, web_ip)  # within checkPeriod: straight through
    out, _ = again.communicate(timeout=60)
    err = again.errfile.read_text()
    assert again.returncode == 0 and out.strip() == "ssh-ok" and "/auth/" not in err, err

    reloads = server.log_text().count("policy reloaded")
    policy_file.write_text(SSH_POLICY % "always")
    wait_until(lambda: server.log_text().count("policy reloaded") > reloads, 10, what="the policy to reload")
    always = start_ssh(alice, web_ip)
    ssh_check_url(always, server)  # asked again
    always.kill()
    always.communicate()

    accepted = start_ssh(alice, db_ip)
    out, _ = accepted.communicate(timeout=60)
    err = accepted.errfile.read_text()
    assert accepted.returncode == 0 and out.strip() == "ssh-ok" and "/auth/" not in err, err


def test_sso_setup_generic_against_the_provider_ends_in_a_working_login(world):
    """`sso setup generic` checks the real provider, writes the config; `sso test` finds it
    working (and a wrong secret wrong); a server started with it signs a person in."""
    netns, provider = world["netns"], world["provider"]
    server = Server(netns, world["work"] / "sso-server", port=SSO_PORT, overrides={
        "derp": {"server": {"enabled": True, "stun_listen_addr": "127.0.0.1:3479"}}})

    def trioscale(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(netns.wrap([sys.executable, "-m", "appliance", *args, "-c", str(server.config_path)]),
                              cwd=REPO, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": str(REPO)})

    r = trioscale("sso", "setup", "generic", "--issuer", provider.issuer, "--client-id", "trioscale-sso",
                  "--client-secret", "sso-setup-secret")
    assert r.returncode == 0, r.stderr
    assert f"Redirect URI (paste it exactly): http://127.0.0.1:{SSO_PORT}/oidc/callback" in r.stdout
    r = trioscale("sso", "test")
    assert r.returncode == 0 and "FAIL" not in r.stdout, r.stdout + r.stderr
    assert "client ID and secret are accepted" in r.stdout
    secret = server.config_path.with_name("oidc_client_secret")
    secret.write_text("not-the-secret\n")
    r = trioscale("sso", "test")
    assert r.returncode == 1 and "client ID or secret is wrong" in r.stdout, r.stdout
    secret.write_text("sso-setup-secret\n")

    server.start()
    try:
        node = start_node(world, "sso-laptop")
        up, url = node.up_interactive(server)
        assert "Machine added" in sign_in(world, url, "bob")
        assert up.wait(60) == 0 and node.status()["BackendState"] == "Running"
        assert nodes_by_name(server)["sso-laptop"]["user"]["email"] == "bob@example.com"
    finally:
        server.stop()


GITHUB_PORT = 9520
GITHUB_USERS = {
    "octocat": {"id": 583231, "name": "The Octocat", "email": "octocat@example.com", "orgs": ["acme"],
                "teams": [["acme", "admins"]]},
    "stranger": {"id": 4242, "email": "stranger@example.com", "orgs": ["elsewhere"]},
}


def test_github_sign_in_through_oauth_and_its_apis(world):
    """GitHub mode (OAuth 2.0, no OIDC) against a local stand-in of GitHub's web flow and API:
    a member of an allowed organisation signs in, their teams become groups; others are refused."""
    netns = world["netns"]
    users = world["work"] / "github-users.json"
    import json

    users.write_text(json.dumps(GITHUB_USERS))
    stub = subprocess.Popen(netns.wrap([sys.executable, "-m", "tests.oidc.github_stub", str(users), "gh-client",
                                        "gh-secret", str(GITHUB_PORT)]), cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert stub.stdout.readline().strip() == "ready"
    server = Server(netns, world["work"] / "github-server", port=GITHUB_PORT + 10, overrides={
        "derp": {"server": {"enabled": True, "stun_listen_addr": "127.0.0.1:3480"}},
        "oidc": {"provider": "github", "issuer": f"http://127.0.0.1:{GITHUB_PORT}", "client_id": "gh-client",
                 "client_secret": "gh-secret", "allowed_organizations": ["acme"]},
    })
    server.start()
    try:
        node = start_node(world, "gh-laptop")
        up, url = node.up_interactive(server)

        def github_login(login: str) -> str:
            ctx = world["browser"].new_context()
            try:
                page = ctx.new_page()
                page.goto(url)
                page.fill("input[name=login]", login)
                page.click("button[type=submit]")
                page.wait_for_load_state()
                if page.locator("#add").count():
                    page.click("#add")
                    page.wait_for_load_state()
                return page.inner_text("body")
            finally:
                ctx.close()

        text = github_login("stranger")
        assert "not a member of an organisation allowed" in text, text
        assert "gh-laptop" not in nodes_by_name(server)
        assert "Machine added" in github_login("octocat")
        assert up.wait(60) == 0 and node.status()["BackendState"] == "Running"
        user = nodes_by_name(server)["gh-laptop"]["user"]
        assert (user["name"], user["email"], user["groups"]) == ("octocat", "octocat@example.com", ["acme/admins"])
        assert user["providerId"] == f"http://127.0.0.1:{GITHUB_PORT}/583231"
    finally:
        server.stop()
        stub.kill()
        stub.wait()
