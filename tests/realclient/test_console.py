"""The web console in a real browser (issue 12's bar): Debian's chromium driven by Playwright,
in the test's network namespace, against a real server and two official tailscaled 1.96.4.

One server, one browser, one pair of clients for the module; the tests run in order and build
on each other (sign in, rename, approve a route, edit the policy, roll it back). Every request
the browser makes is checked to go to the server (anything else is aborted and counted), and
every console error or uncaught page error is counted: the last test asserts both are none.
Screenshots of each page go to $TRIOSCALE_TEST_ARTIFACTS/console (or the pytest tmp dir); the
directory is printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ..browser import Unavailable as NoBrowser
from ..browser import open_browser
from .harness import REPO, Node, Server, serve_files, socks_fetch, wait_until

PORT = 9931
OPEN = '{\n  // everyone may reach everything\n  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],\n}\n'
BROKEN = '{\n  "acls": [\n    {"action": "accept", "src": ["*"], "dst": ["nosuchhost:*"]},\n  ],\n}\n'
SSH_ONLY = '{\n  // only SSH now\n  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:22"]}],\n}\n'
ROUTE = "10.77.0.0/24"
ENV = {"TS_DEBUG_USE_DERP_HTTP": "1"}  # the embedded relay shares the plain-HTTP port here


class Watch:
    """What the browser did that it must not: requests to another host, console errors."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.requests = 0
        self.outside: list[str] = []
        self.errors: list[str] = []

    def attach(self, ctx) -> None:
        def route(r):
            self.requests += 1
            u = urlsplit(r.request.url)
            if f"{u.scheme}://{u.netloc}" != self.origin:
                self.outside.append(r.request.url)
                r.abort()
            else:
                r.continue_()

        ctx.route("**/*", route)

    def page(self, ctx):
        p = ctx.new_page()
        p.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        p.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        p.on("dialog", lambda d: d.accept())
        return p


@pytest.fixture(scope="module")
def world(netns, client_binaries, tmp_path_factory):
    work = tmp_path_factory.mktemp("console")
    shots = Path(os.environ.get("TRIOSCALE_TEST_ARTIFACTS") or work) / "console"
    shots.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {shots}")
    server = Server(netns, work / "server", port=PORT, overrides={
        "policy": {"mode": "database"},
        "derp": {"server": {"enabled": True, "stun_listen_addr": "127.0.0.1:3478"}},
    })
    nodes = {"alpha": Node(netns, work, "alpha", client_binaries, env=ENV, socks_port=1081),
             "beta": Node(netns, work, "beta", client_binaries, env=ENV)}
    try:
        server.start()
        server.cli("users", "create", "alice", "--email", "alice@example.com")
        server.cli("users", "create", "bob", "--email", "bob@example.com")
        (work / "open.hujson").write_text(OPEN)
        server.cli("policy", "set", "-f", str(work / "open.hujson"))
        for n in nodes.values():
            n.start()
        key = server.cli("preauthkeys", "create", "--user", "alice", "--reusable").stdout.strip()
        nodes["alpha"].up(server, key)
        nodes["beta"].up(server, key, f"--advertise-routes={ROUTE}")
        with serve_files(netns, REPO / "tests", 8090), open_browser(work, netns) as browser:
            watch = Watch(server.url)
            ctx = browser.new_context(viewport={"width": 1280, "height": 900})
            watch.attach(ctx)
            yield {"server": server, "nodes": nodes, "binaries": client_binaries, "browser": browser, "ctx": ctx, "page": watch.page(ctx),
                   "watch": watch, "shots": shots, "netns": netns, "work": work}
            ctx.close()
    except NoBrowser as e:
        pytest.skip(f"browser unavailable: {e}")
    finally:
        for n in nodes.values():
            n.stop()
        server.stop()


def login_link(server: Server, *user: str) -> str:
    out = server.cli("admin", "login", *(("--user", user[0]) if user else ())).stdout
    assert out.count("\n") == 1, out  # the link alone on stdout
    return out.strip()


def node(server: Server, name: str) -> dict:
    return next(n for n in server.cli_json("nodes", "list") if n["givenName"] == name)


def direct(world, method: str, path: str, cookie: str, csrf: str = "", body: dict | None = None) -> tuple[int, dict]:
    """A request straight to the server from inside the namespace (no browser), as a script
    holding the cookie and token would send it: (status, JSON answer)."""
    code = (
        "import json, sys, urllib.request, urllib.error\n"
        "m, url, cookie, csrf, body = sys.argv[1:6]\n"
        "req = urllib.request.Request(url, method=m, data=body.encode() or None, headers={"
        "'cookie': 'trioscale_console=' + cookie, 'x-csrf-token': csrf, 'origin': url.split('/admin')[0], "
        "'content-type': 'application/json'})\n"
        "try:\n    r = urllib.request.urlopen(req, timeout=15); print(r.status); print(r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n    print(e.code); print(e.read().decode())\n"
    )
    argv = [sys.executable, "-c", code, method, world["server"].url + path, cookie, csrf,
            json.dumps(body) if body is not None else ""]
    out = subprocess.run(world["netns"].wrap(argv), capture_output=True, text=True, timeout=30).stdout
    status, _, text = out.partition("\n")
    return int(status), json.loads(text)


def fetch_ok(world, timeout: float = 5) -> bool:
    ip = world["nodes"]["beta"].ips()[0]
    return socks_fetch(world["netns"], 1081, ip, 8090, "/__init__.py", timeout) is not None


def test_sign_in_with_a_one_time_link_and_every_page_renders(world):
    page, server = world["page"], world["server"]
    page.goto(server.url + "/admin/")
    assert page.url.endswith("/admin/login")
    link = login_link(server)
    page.goto(link)
    page.click("#signin")
    page.wait_for_url(server.url + "/admin/")
    assert page.inner_text("#online-count") == "2"
    cookie = next(c for c in world["ctx"].cookies() if c["name"] == "trioscale_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/admin"
    for name in ("", "machines", "users", "keys", "policy", "access", "dns"):
        page.goto(f"{server.url}/admin/{name}")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(world["shots"] / f"{name or 'dashboard'}.png"), full_page=True)
    # Phone-sized: the same page, narrow.
    phone = world["browser"].new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        phone.add_cookies([cookie])
        p = phone.new_page()
        p.goto(server.url + "/admin/machines")
        p.screenshot(path=str(world["shots"] / "machines-phone.png"), full_page=True)
        assert p.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # no sideways scrolling of the page
    finally:
        phone.close()
    # The link was used up.
    page2 = world["watch"].page(world["ctx"])
    page2.goto(link)
    assert page2.title().startswith("Sign in")
    page2.close()


def test_renaming_reaches_a_real_client_within_two_seconds(world):
    page, server, beta = world["page"], world["server"], world["nodes"]["beta"]
    page.goto(server.url + "/admin/machines")
    row = page.locator("tr.machine[data-name=alpha]")
    row.locator("form.rename input").fill("alpha-renamed")
    start = time.monotonic()
    row.locator("form.rename button").click()

    def renamed():
        peer = beta.peers().get("alpha") or {}
        return peer.get("DNSName", "").startswith("alpha-renamed.")

    wait_until(renamed, 5, interval=0.05, what="beta to show alpha renamed")
    took = time.monotonic() - start
    print(f"rename seen by the real client after {took:.2f} s")
    assert took < 2.0
    page.wait_for_selector("tr.machine[data-name=alpha-renamed]")
    # Search and filter run in the page.
    page.fill("#search", "beta")
    assert page.locator("tr.machine:visible").count() == 1


def test_approving_a_route_in_the_console(world):
    page, server, alpha = world["page"], world["server"], world["nodes"]["alpha"]
    assert node(server, "beta")["approvedRoutes"] == []
    page.goto(server.url + "/admin/machines")
    row = page.locator("tr.machine[data-name=beta]")
    row.locator(f"form.routes input[value='{ROUTE}']").check()
    row.locator("form.routes button").click()
    answer = wait_until(lambda: page.inner_text("#status"), 30, what="the console's answer")
    assert answer == "Done.", answer
    wait_until(lambda: node(server, "beta")["approvedRoutes"] == [ROUTE], 5, what="the route to be approved")
    wait_until(lambda: ROUTE in (alpha.peers()["beta"].get("PrimaryRoutes") or []), 10,
               what="alpha to route through beta")
    page.wait_for_load_state("networkidle")
    assert row.locator(f"form.routes input[value='{ROUTE}']").is_checked()


def test_registering_a_machine_that_waits_to_join(world):
    """A real `tailscale up` without a key waits for an admin: the machines page lists it and
    registers it as the chosen user."""
    page, server = world["page"], world["server"]
    gamma = world["nodes"]["gamma"] = Node(world["netns"], world["work"], "gamma", world["binaries"], env=ENV)
    gamma.start()
    up, _ = gamma.up_interactive(server)
    page.goto(server.url + "/admin/machines")
    row = page.locator("#pending tr.pending")
    assert "gamma" in row.inner_text()
    page.screenshot(path=str(world["shots"] / "machines-waiting.png"), full_page=True)
    row.locator("select[name=user]").select_option(label="bob")
    row.locator("form.api button", has_text="Register").click()
    assert up.wait(60) == 0
    assert node(server, "gamma")["user"]["name"] == "bob"


def test_policy_editor_error_save_and_rollback_change_real_access(world):
    page, server = world["page"], world["server"]
    assert wait_until(lambda: fetch_ok(world), 30, interval=1, what="alpha to fetch from beta")
    page.goto(server.url + "/admin/policy")
    editor = page.locator("#policy")
    editor.fill(BROKEN)
    page.wait_for_selector("#policy-check.bad")
    error = page.inner_text("#policy-check")
    assert "nosuchhost" in error, error
    page.click("#review")
    page.wait_for_timeout(500)
    assert page.locator("#save").is_hidden()  # nothing to save while the engine refuses it
    assert server.cli("policy", "get").stdout == OPEN  # nothing applied
    page.screenshot(path=str(world["shots"] / "policy-error.png"), full_page=True)

    editor.fill(SSH_ONLY)
    page.wait_for_selector("#policy-check.good")
    page.click("#review")
    page.wait_for_selector("#save:visible")
    diff = page.inner_text("#diff")
    assert '+   "acls": [{"action": "accept", "src": ["*"], "dst": ["*:22"]}],' in diff, diff
    assert '-   "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],' in diff, diff
    page.screenshot(path=str(world["shots"] / "policy-diff.png"), full_page=True)
    page.click("#save")
    answer = wait_until(lambda: page.inner_text("#status"), 30, what="the console's answer")
    assert answer.startswith("Saved"), answer
    wait_until(lambda: server.cli("policy", "get").stdout == SSH_ONLY, 30, what="the policy to be saved")
    assert wait_until(lambda: not fetch_ok(world, 3), 20, interval=0.5, what="alpha to lose access to beta:8090")

    page.goto(server.url + "/admin/policy")
    rows = page.locator("#history tbody tr")
    assert rows.count() == 2
    assert "console:operator" in rows.nth(0).inner_text() and "cli" in rows.nth(1).inner_text()
    page.screenshot(path=str(world["shots"] / "policy-history.png"), full_page=True)
    rows.nth(1).locator("form.restore button").click()  # the confirm dialog is accepted
    wait_until(lambda: server.cli("policy", "get").stdout == OPEN, 30, what="the rollback")
    assert wait_until(lambda: fetch_ok(world), 30, interval=1, what="alpha to reach beta:8090 again")
    page.goto(server.url + "/admin/policy")
    assert "restored version 1" in page.locator("#history tbody tr").nth(0).inner_text()


def test_access_explorer(world):
    page, server = world["page"], world["server"]
    page.goto(server.url + "/admin/access")
    page.select_option("#reach select[name=src]", "alpha-renamed")
    page.select_option("#reach select[name=dst]", "beta")
    page.fill("#reach input[name=port]", "8090")
    page.click("#reach button")
    page.wait_for_selector("#reach-result.good")
    assert "acls[0] allows" in page.inner_text("#reach-result")
    page.select_option("#reachers select[name=dst]", "beta")
    page.click("#reachers button")
    page.wait_for_selector("#reachers-result li")
    assert "alpha-renamed" in page.inner_text("#reachers-result")
    page.screenshot(path=str(world["shots"] / "access-answered.png"), full_page=True)


def test_everything_done_in_the_console_is_in_the_audit_log(world):
    page, server = world["page"], world["server"]
    page.goto(server.url + "/admin/audit?actor=console")
    ops = [r.get_attribute("data-operation") for r in page.locator("#audit tr.entry").all()]
    for op in ("renameNode", "setApprovedRoutes", "setPolicy", "restorePolicyVersion"):
        assert op in ops, ops
    rename = page.locator("#audit tr.entry[data-operation=renameNode]").first.inner_text()
    assert "console:operator" in rename and "alpha-renamed" in rename, rename
    page.screenshot(path=str(world["shots"] / "audit.png"), full_page=True)
    page.fill("#audit-filter input[name=operation]", "setPolicy")
    page.click("#audit-filter button")
    page.wait_for_url("**/admin/audit?*operation=setPolicy*")
    assert {r.get_attribute("data-operation") for r in page.locator("#audit tr.entry").all()} == {"setPolicy"}


def test_the_machines_page_updates_live(world):
    """A change made elsewhere (the CLI) shows up without a reload by the person: the page
    listens to the event stream."""
    page, server = world["page"], world["server"]
    page.goto(server.url + "/admin/machines")
    page.locator("body").click()  # nothing focused: the page may reload itself
    server.cli("nodes", "rename", "-i", node(server, "alpha-renamed")["id"], "alpha-live")
    page.wait_for_selector("tr.machine[data-name=alpha-live]", timeout=15_000)


def test_a_member_cannot_change_anything(world):
    server, watch = world["server"], world["watch"]
    ctx = world["browser"].new_context()
    watch.attach(ctx)
    try:
        page = watch.page(ctx)
        page.goto(login_link(server, "bob"))
        page.click("#signin")
        page.wait_for_url(server.url + "/admin/")
        assert "can look but not change" in page.inner_text("main")
        page.goto(server.url + "/admin/machines")
        assert page.locator("tr.machine[data-name=beta] form.rename button").is_disabled()
        page.screenshot(path=str(world["shots"] / "machines-member.png"), full_page=True)
        csrf = page.get_attribute("meta[name=csrf]", "content")
        cookie = next(c["value"] for c in ctx.cookies() if c["name"] == "trioscale_console")
        beta_id = node(server, "beta")["id"]
        # Straight to the server with bob's cookie and token, as a script would.
        for method, path, body in (("POST", f"/admin/api/v1/node/{beta_id}/rename/stolen", None),
                                   ("PUT", "/admin/api/v1/policy", {"policy": SSH_ONLY}),
                                   ("POST", f"/admin/api/v1/node/{beta_id}/approve_routes", {"routes": []}),
                                   ("POST", "/admin/api/v1/user", {"name": "mallory"})):
            status, doc = direct(world, method, path, cookie, csrf, body)
            assert status == 403, (path, status, doc)
            assert "your role (member) may not do this" in doc["detail"]
        status, doc = direct(world, "GET", "/admin/api/v1/node", cookie)
        assert status == 200 and len(doc["nodes"]) == len(server.cli_json("nodes", "list"))  # reading is allowed
        assert node(server, "beta")["givenName"] == "beta"
        assert server.cli("policy", "get").stdout == OPEN
        assert "mallory" not in server.cli("users", "list").stdout
    finally:
        ctx.close()


def test_sign_out_revokes_the_session(world):
    page, server = world["page"], world["server"]
    page.goto(server.url + "/admin/")
    cookie = next(c["value"] for c in world["ctx"].cookies() if c["name"] == "trioscale_console")
    assert direct(world, "GET", "/admin/api/v1/node", cookie)[0] == 200
    page.click("#logout")
    page.wait_for_url(server.url + "/admin/login")
    assert direct(world, "GET", "/admin/api/v1/node", cookie)[0] == 401  # the old cookie, kept by someone


def test_no_request_left_the_machine_and_no_javascript_errors(world):
    watch = world["watch"]
    assert watch.requests > 20
    assert watch.outside == []
    assert watch.errors == []
