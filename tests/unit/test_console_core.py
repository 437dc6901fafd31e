"""The web console's core (issue 12): one-time links and sessions kept hashed, single use and
expiry, revocation, CSRF and Origin checks, and the role map the router enforces for every
changing operation, whatever the page shows."""

from __future__ import annotations

import ipaddress
import json
from datetime import timedelta

import h11
import pytest

from appliance.admin import permissions
from appliance.admin.api import AdminAPI
from appliance.admin.router import Actor
from appliance.console.sessions import (
    LINK_LIFETIME, SESSION_LIFETIME, LinkRefused, Sessions, cookie_value, csrf_token, same_origin,
)
from appliance.console.web import Console
from appliance.errors import Forbidden
from appliance.policy.model import ROLES
from tests.stores import new_store, open_store_again, pg_database, store_engine  # noqa: F401
from appliance.tailnet.model import Tailnet, utcnow

URL = "https://hs.example.com"
HOST = "hs.example.com"


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self):
        return self.now


@pytest.fixture
async def world(new_store):
    store = new_store
    clock = Clock()
    t = Tailnet(store, v4=ipaddress.ip_network("100.64.0.0/10"), v6=None, clock=clock)
    await t.load()
    sessions = Sessions(t, URL)
    api = AdminAPI(t, console=sessions)
    await api.apikeys.load()
    yield {"tailnet": t, "store": store, "clock": clock, "sessions": sessions, "api": api,
           "console": Console(api.router, sessions)}


def request(method: str, target: str, *, secret: str | None = None, origin: str | None = "https://hs.example.com",
            csrf: str | None = None, body: bytes = b"") -> h11.Request:
    headers = [("host", HOST)]
    if secret:
        headers.append(("cookie", f"other=1; trioscale_console={secret}"))
    if origin:
        headers.append(("origin", origin))
    if csrf:
        headers.append(("x-csrf-token", csrf))
    if body:
        headers.append(("content-type", "application/json"))
    return h11.Request(method=method, target=target, headers=headers)


# --- the role map -----------------------------------------------------------------------------


async def test_every_changing_operation_is_refused_to_read_only_roles_and_reads_are_open(world):
    ops = world["api"].router.operations
    assert set(permissions.READ_ONLY) == {"billing-admin", "auditor", "member"}
    for op in ops:
        for role in ROLES:
            allowed = role in permissions.roles_for(op.id, op.tag, op.changes)
            if not op.changes and op.id != "createConsoleLogin":
                assert allowed, (op.id, role)
            if op.changes and role in permissions.READ_ONLY:
                assert not allowed, (op.id, role)
    for op in ops:  # the CLI and API keys keep every right
        permissions.check("apikey", "", op.id, op.tag, op.changes)
        permissions.check("cli", "", op.id, op.tag, op.changes)


@pytest.mark.parametrize("role, may, may_not", [
    ("network-admin", {"setPolicy", "restorePolicyVersion", "updateDns", "setDerpRegions", "setApprovedRoutes"},
     {"renameNode", "createPreAuthKey", "createUser", "createApiKey", "setUserRole"}),
    ("it-admin", {"renameNode", "deleteNode", "setTags", "approveNode", "createUser", "createPreAuthKey", "authRegister"},
     {"setPolicy", "setApprovedRoutes", "updateDns", "createApiKey", "setUserRole"}),
    ("admin", {"setPolicy", "renameNode", "createApiKey", "setUserRole", "setApprovedRoutes"}, {"createConsoleLogin"}),
    ("owner", {"setPolicy", "renameNode", "createApiKey", "setUserRole", "deleteUser"}, {"createConsoleLogin"}),
])
async def test_admin_roles_change_what_is_theirs(world, role, may, may_not):
    by_id = {op.id: op for op in world["api"].router.operations}
    for op_id in may:
        op = by_id[op_id]
        permissions.check("console", role, op.id, op.tag, op.changes)
    for op_id in may_not:
        op = by_id[op_id]
        with pytest.raises(Forbidden, match=f"your role \\({role}\\) may not do this"):
            permissions.check("console", role, op.id, op.tag, op.changes)


async def test_only_the_owner_hands_ownership_over(world):
    t, router = world["tailnet"], world["api"].router
    await t.create_user("alice")
    bob = await t.create_user("bob")
    admin = Actor("console", "9", "x", "carol", "admin")

    async def set_role(role: str):
        body = json.dumps({"role": role}).encode()
        return (await router.serve(request("POST", f"/api/v1/user/{bob.id}/role", body=body), body, admin))[0]

    assert await set_role("owner") == 403
    assert await set_role("network-admin") == 200
    assert t.roles()[bob.id] == "network-admin"
    with pytest.raises(ValueError, match="changes something"):
        await router.read_now("setUserRole", admin, id=bob.id)


# --- links and sessions -----------------------------------------------------------------------


async def test_a_link_works_once_and_only_its_hash_is_stored(world):
    s, t = world["sessions"], world["tailnet"]
    alice = await t.create_user("alice")
    token, uid = await s.create_link("alice")
    assert uid == alice.id
    secret = await s.redeem_link(token, "192.0.2.1")
    with pytest.raises(LinkRefused, match="already used"):
        await s.redeem_link(token, "192.0.2.1")
    signed = await s.lookup(secret)
    assert (signed.user_id, signed.name, signed.role) == (alice.id, "alice", "owner")
    assert signed.actor("192.0.2.1").describe() == "console:alice"
    rows = await world["store"].run_sync(
        lambda c: [dict(r) for r in c.execute("SELECT * FROM console_sessions")]
        + [dict(r) for r in c.execute("SELECT * FROM console_links")])
    raw = repr(rows)
    assert len(rows) == 1 and len(rows[0]["hash"]) == 64  # SHA-256 hex; the used link is gone
    assert secret not in raw and token not in raw


async def test_an_expired_link_or_session_signs_nobody_in(world):
    s, clock = world["sessions"], world["clock"]
    token, _ = await s.create_link(None)
    clock.now += LINK_LIFETIME + timedelta(seconds=1)
    with pytest.raises(LinkRefused):
        await s.redeem_link(token, "x")
    token, _ = await s.create_link(None)
    secret = await s.redeem_link(token, "x")
    assert (await s.lookup(secret)).role == "owner"  # a link without --user: the operator
    clock.now += SESSION_LIFETIME
    assert await s.lookup(secret) is None


async def test_sessions_survive_a_restart_end_at_logout_and_follow_the_users_role(world):
    s, t = world["sessions"], world["tailnet"]
    await t.create_user("alice")
    bob = await t.create_user("bob")
    token, _ = await s.create_link("bob")
    secret = await s.redeem_link(token, "x")
    again = Sessions(t, URL)  # a new process reads the same database
    assert (await again.lookup(secret)).role == "member"
    await t.set_role("bob", "it-admin")
    assert (await again.lookup(secret)).role == "it-admin"
    await again.end(secret)
    assert await s.lookup(secret) is None
    token, _ = await s.create_link("bob")
    secret = await s.redeem_link(token, "x")
    await t.delete_user(bob.id)
    assert await s.lookup(secret) is None  # the user's sessions go with the user


async def test_unknown_users_and_malformed_secrets(world):
    s = world["sessions"]
    from appliance.errors import NotFound

    with pytest.raises(NotFound):
        await s.create_link("nobody")
    for bad in ("", "short", "x" * 200, "bad chars!" * 5):
        assert await s.lookup(bad) is None
        with pytest.raises(LinkRefused):
            await s.redeem_link(bad, "x")


async def test_cookie_csrf_and_origin_rules(world):
    s = world["sessions"]
    set_cookie = s.set_cookie("a" * 43)[1]
    for attr in ("Path=/admin", "HttpOnly", "SameSite=Strict", "Secure"):
        assert attr in set_cookie
    assert "Secure" not in Sessions(world["tailnet"], "http://127.0.0.1:1").set_cookie("a" * 43)[1]
    assert cookie_value("x=1; trioscale_console=" + "b" * 43) == "b" * 43
    assert cookie_value("trioscale_console=<script>") is None
    assert csrf_token("a" * 43) != csrf_token("b" * 43) and len(csrf_token("a" * 43)) == 40
    assert same_origin("https://hs.example.com", "hs.example.com", True)
    assert same_origin("https://HS.example.com", "hs.example.com", True)
    for origin, host in (("https://evil.example", "hs.example.com"), ("http://hs.example.com", "hs.example.com"),
                         (None, "hs.example.com"), ("null", "hs.example.com"), ("https://hs.example.com", None),
                         ("https://hs.example.com.evil.example", "hs.example.com")):
        assert not same_origin(origin, host, True), origin


# --- the console's API edge -------------------------------------------------------------------


async def signed_in(world, user: str | None) -> tuple[str, str]:
    token, _ = await world["sessions"].create_link(user)
    secret = await world["sessions"].redeem_link(token, "x")
    return secret, csrf_token(secret)


async def test_changes_need_a_session_its_csrf_token_and_this_origin(world):
    t, console = world["tailnet"], world["console"]
    await t.create_user("alice")
    secret, csrf = await signed_in(world, "alice")
    body = json.dumps({"name": "bob"}).encode()

    async def post(**kw):
        status, _, out = await console.route(request("POST", "/admin/api/v1/user", body=body, **kw), body)
        return status, json.loads(out)

    assert (await post())[0] == 401
    status, doc = await post(secret=secret)
    assert status == 403 and "CSRF" in doc["detail"]
    status, doc = await post(secret=secret, csrf=csrf, origin="https://evil.example")
    assert status == 403 and "Origin" in doc["detail"]
    status, doc = await post(secret=secret, csrf=csrf, origin=None)
    assert status == 403
    assert (await post(secret=secret, csrf=csrf_token("z" * 43)))[0] == 403
    status, doc = await post(secret=secret, csrf=csrf)
    assert status == 200 and doc["user"]["name"] == "bob"
    # Reads need the session but no token.
    status, _, out = await console.route(request("GET", "/admin/api/v1/user", secret=secret, origin=None), b"")
    assert status == 200 and len(json.loads(out)["users"]) == 2


async def test_a_member_is_refused_by_the_server_and_nothing_changes(world):
    t, console = world["tailnet"], world["console"]
    await t.create_user("alice")
    await t.create_user("bob")
    secret, csrf = await signed_in(world, "bob")
    body = json.dumps({"name": "mallory"}).encode()
    status, headers, out = await console.route(
        request("POST", "/admin/api/v1/user", secret=secret, csrf=csrf, body=body), body)
    assert status == 403 and dict(headers)["content-type"] == "application/problem+json"
    assert "your role (member) may not do this" in json.loads(out)["detail"]
    assert sorted(u.name for u in t.users.values()) == ["alice", "bob"]
    status, _, _ = await console.route(request("GET", "/admin/machines", secret=secret, origin=None), b"")
    assert status == 200  # a member may look


async def test_pages_need_a_session_and_logout_revokes_it(world):
    console, s = world["console"], world["sessions"]
    status, headers, _ = await console.route(request("GET", "/admin/machines", origin=None), b"")
    assert status == 303 and dict(headers)["location"] == "/admin/login"
    secret, csrf = await signed_in(world, None)
    status, headers, page = await console.route(request("GET", "/admin/users", secret=secret, origin=None), b"")
    assert status == 200 and csrf.encode() in page and "script-src 'self'" in dict(headers)["content-security-policy"]
    # A sign-out without the token (a cross-site form) does nothing.
    status, _, _ = await console.route(request("POST", "/admin/logout", secret=secret, origin="https://evil.example"),
                                       f"csrf={csrf}".encode())
    assert status == 403 and await s.lookup(secret) is not None
    status, headers, _ = await console.route(request("POST", "/admin/logout", secret=secret),
                                             f"csrf={csrf}".encode())
    assert status == 303 and "Max-Age=0" in dict(headers)["set-cookie"]
    assert await s.lookup(secret) is None
