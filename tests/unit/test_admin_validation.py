"""The admin API's boundary: names and emails, the typed definitions, reading requests, the
OpenAPI document they generate, and API keys (rate limits, last use). No server process: the
router and the model run in-process on a real SQLite store."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone

import h11
import jsonschema
import pytest

from appliance.admin.api import AdminAPI
from appliance.admin.apikeys import FAIL_BURST, ApiKeys, source_key
from appliance.admin.problem import RateLimited, Unauthorized
from appliance.admin.schema import ID, UNSET, FieldError, List, Prefix, Str, Time
from appliance.admin.types import CreatePreAuthKeyBody, CreateUserBody
from appliance.errors import Invalid
from appliance.policy import PolicyEngine
from tests.stores import new_store, open_store_again, pg_database, store_engine  # noqa: F401
from appliance.tailnet import names
from appliance.tailnet.model import Tailnet
from appliance.tailnet.policy import policy_user

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["al", "alice", "Alice.B_c-d", "alice@corp", "a" * 64, "x1"])
def test_valid_user_names(name):
    assert names.check_user_name(name) == name


@pytest.mark.parametrize("name", ["", "a", "1alice", "-alice", "q?z", "a b", "zoë", "🚀rocket", "a@b@c",
                                  "a" * 65, "a/b", "a%2Fb", "alice\n", "../x"])
def test_invalid_user_names(name):
    with pytest.raises(Invalid, match="not a valid user name"):
        names.check_user_name(name)


@pytest.mark.parametrize("email", ["", "alice@example.com", "a.b+c@sub.example.org", "bob@github"])
def test_valid_emails(email):
    assert names.check_email(email) == email


@pytest.mark.parametrize("email", ["alice@", "@example.com", "alice", "a@@b.c", "a b@c.d", "a..b@c.d",
                                   "a@-c.d", "a@c..d", "x" * 65 + "@e.com", "a@" + "b" * 250 + ".com", "zoë@e.com"])
def test_invalid_emails(email):
    with pytest.raises(Invalid, match="not a valid email"):
        names.check_email(email)


def test_display_names_take_any_script_but_no_controls():
    assert names.check_display_name("Zoë Ångström 🚀 👩‍💻") == "Zoë Ångström 🚀 👩‍💻"
    for bad in ("line\nbreak", "bidi \u202eevil", "x" * 129, "nul\x00"):
        with pytest.raises(Invalid):
            names.check_display_name(bad)


@pytest.mark.parametrize("tag,ok", [("tag:server", True), ("tag:Web-1_a", True), ("tag:", False), ("server", False),
                                    ("tag:1abc", False), ("tag:a b", False), ("tag:" + "a" * 125, False)])
def test_tags(tag, ok):
    if ok:
        assert names.check_tag(tag) == tag
    else:
        with pytest.raises(Invalid):
            names.check_tag(tag)


# --- specs -----------------------------------------------------------------------------------


def test_time_reads_rfc3339_and_refuses_the_rest():
    t = Time()
    assert t.parse("2030-01-02T03:04:05Z", "x") == datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert t.parse("2030-01-02T05:04:05.123456789+02:00", "x") == datetime(2030, 1, 2, 3, 4, 5, 123456,
                                                                           tzinfo=timezone.utc)
    for bad in (1e300, 0, True, None, "tomorrow", "2030-01-02", "2030-13-01T00:00:00Z",
                "9999-12-31T23:59:59-23:59", "2030-01-02T03:04:05+24:00", "0001-01-01T00:00:00Z"):
        with pytest.raises(FieldError):
            t.parse(bad, "x")
    assert t.dump(datetime(2030, 1, 2, 3, 4, 5, 500000, tzinfo=timezone.utc)) == "2030-01-02T03:04:05.5Z"


def test_a_number_is_never_a_route():
    p = Prefix()
    assert p.parse("10.0.0.1/24", "r") == "10.0.0.0/24"
    assert p.parse("fd00::1/64", "r") == "fd00::/64"
    for bad in (1, 1.0, "1", "10.0.0.1", "10.0.0.0/33", "fe80::1%eth0/64", "", None, ["10.0.0.0/8"]):
        with pytest.raises(FieldError):
            p.parse(bad, "routes[0]")


def test_ids_strings_and_lists_have_limits():
    assert ID().parse("42", "id") == 42 and ID().parse(42, "id") == 42 and ID().dump(42) == "42"
    for bad in ("-1", "1e3", "", "9" * 20, True, 1.5):
        with pytest.raises(FieldError):
            ID().parse(bad, "id")
    with pytest.raises(FieldError, match="at most 3"):
        Str(max_len=3).parse("abcd", "s")
    with pytest.raises(FieldError, match="NUL"):
        Str(max_len=9).parse("a\x00b", "s")
    with pytest.raises(FieldError):
        Str(max_len=9, pattern="^[a-z]+$").parse("abc\n", "s")
    with pytest.raises(FieldError, match="at most 2 items"):
        List(Str(max_len=3), max_items=2).parse(["a", "b", "c"], "l")
    with pytest.raises(FieldError) as e:
        List(Str(max_len=3), max_items=5).parse(["a", 1, "b", None], "tags")
    assert [at for at, _ in e.value.problems] == ["tags[1]", "tags[3]"]


def test_objects_report_every_bad_field_and_ignore_unknown_ones():
    with pytest.raises(FieldError) as e:
        CreateUserBody.spec.parse({"email": "alice@", "displayName": 7, "extra": [[[]]]}, "body")
    where = {at for at, _ in e.value.problems}
    assert where == {"body.name", "body.email", "body.displayName"}
    body = CreatePreAuthKeyBody.spec.parse({"user": 3, "aclTags": ["tag:a"]}, "body")
    assert body.user == "3" and body.acl_tags == ("tag:a",) and body.expiration is None
    with pytest.raises(FieldError, match=r"aclTags\[0\]"):
        CreatePreAuthKeyBody.spec.parse({"aclTags": [1]}, "body")


# --- the router, in-process ------------------------------------------------------------------


@pytest.fixture
async def api(new_store):
    """On each engine (tests/stores.py)."""
    tailnet = Tailnet(new_store, v4=None, v6=None, clock=lambda: NOW)
    await tailnet.load()
    a = AdminAPI(tailnet)
    await a.apikeys.load()
    return a


async def call(api, method: str, target: str, body: bytes = b"", *, public: bool = False,
               headers: list | None = None):
    req = h11.Request(method=method, target=target, headers=[("host", "x"), *(headers or [])])
    answer = await (api.public_route() if public else api)(req, body)
    status, hdrs, data = answer
    return status, dict(hdrs), json.loads(data)


@pytest.mark.parametrize("body,status", [
    (b"[" * 100_000, 400),
    (b'{"name": "\xff\xfe"}', 400),
    (b'{"name": NaN}', 400),
    (b'{"name": 1' + b"0" * 5000 + b"}", 400),
    (b'{"name": "alice"', 400),
    (b'"alice"', 422),
    (b'{"name": ["alice"]}', 422),
    (b'{"name": "q?z"}', 422),
    (b'{"name": "alice", "email": "alice@"}', 422),
])
async def test_bad_bodies_get_a_problem_never_a_traceback(api, body, status, caplog):
    got, headers, doc = await call(api, "POST", "/api/v1/user", body)
    assert got == status and headers["content-type"] == "application/problem+json"
    assert doc["status"] == status and doc["detail"] and doc["title"]
    assert not api.backend.tailnet.users
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_path_and_query_are_decoded_strictly(api):
    await api.backend.tailnet.create_user("alice")
    status, _, doc = await call(api, "POST", "/api/v1/user/1/rename/q%3Fz")
    assert status == 422 and "'q?z'" in doc["detail"]
    status, _, doc = await call(api, "POST", "/api/v1/user/1/rename/%FF")
    assert status == 400
    status, _, doc = await call(api, "GET", "/api/v1/user?name=%C3")
    assert status == 400
    status, _, doc = await call(api, "POST", "/api/v1/user/1/rename/a.b%40corp")
    assert status == 200 and doc["user"]["name"] == "a.b@corp"
    status, _, doc = await call(api, "GET", "/api/v1/user?name=a.b%40corp")
    assert [u["id"] for u in doc["users"]] == ["1"]


async def test_unknown_paths_and_methods(api):
    status, headers, _ = await call(api, "PUT", "/api/v1/node/1")
    assert status == 405 and set(headers["allow"].split(", ")) == {"GET", "DELETE"}
    status, _, _ = await call(api, "GET", "/api/v1/nothing/here")
    assert status == 404
    status, _, doc = await call(api, "GET", "/api/v1/node/abc")
    assert status == 422 and doc["errors"][0]["location"] == "path.nodeId"
    status, _, _ = await call(api, "GET", "/api/v1/node/5")
    assert status == 404


async def test_route_approval_refuses_numbers(api):
    status, _, doc = await call(api, "POST", "/api/v1/node/1/approve_routes", b'{"routes": [1]}')
    assert status == 422 and doc["errors"][0]["location"] == "body.routes[0]"


async def test_expirations_out_of_range(api):
    for body in (b'{"expiration": 1e300}', b'{"expiration": "1971-01-01T00:00:00Z"}',
                 b'{"expiration": "10000-01-01T00:00:00Z"}'):
        status, _, _ = await call(api, "POST", "/api/v1/apikey", body)
        assert status == 422
    assert not api.apikeys.keys


async def test_changes_are_reported_with_who_and_what(api):
    seen = []
    api.router.on_change.append(seen.append)
    await call(api, "POST", "/api/v1/user", b'{"name": "alice", "email": "a@example.com"}')
    await call(api, "GET", "/api/v1/user")
    await call(api, "POST", "/api/v1/user/1/rename/bob")
    assert [(c.operation, c.actor.kind, c.target) for c in seen] == [
        ("createUser", "cli", {}), ("renameUser", "cli", {"old_id": 1, "new_name": "bob"})]
    assert seen[0].request == {"name": "alice", "displayName": "", "email": "a@example.com", "pictureUrl": ""}
    assert seen[1].result["user"]["name"] == "bob"


# --- the OpenAPI document --------------------------------------------------------------------


async def test_openapi_covers_every_operation_with_auth_and_problems(api):
    doc = api.openapi
    assert doc["openapi"] == "3.1.0"
    ops = [(p, m, o) for p, item in doc["paths"].items() for m, o in item.items()]
    assert len(ops) == len(api.router.operations)
    for path, method, op in ops:
        assert op["security"] == [{"bearer": []}], (path, method)
        assert {"200", "401", "422", "default"} <= set(op["responses"])
        for status, resp in op["responses"].items():
            if status != "200":
                assert resp["content"]["application/problem+json"]["schema"]["$ref"] == "#/components/schemas/Problem"
    # Headscale's v1 paths are there, with its verbs.
    for path, method in [("/api/v1/user", "get"), ("/api/v1/user/{oldId}/rename/{newName}", "post"),
                         ("/api/v1/node/{nodeId}/approve_routes", "post"), ("/api/v1/apikey/{prefix}", "delete"),
                         ("/api/v1/preauthkey", "delete"), ("/api/v1/policy", "put"), ("/api/v1/health", "get")]:
        assert method in doc["paths"][path]


async def test_answers_match_their_schemas(api):
    """Responses dumped from the types validate against the generated JSON Schema."""
    t = api.backend.tailnet
    await t.create_user("alice", "Alice", "alice@example.com")
    await call(api, "POST", "/api/v1/preauthkey", b'{"user": "1", "reusable": true, "aclTags": ["tag:a"]}')
    await call(api, "POST", "/api/v1/apikey", b"")
    registry = {"components": api.openapi["components"]}
    for target, path in [("/api/v1/user", "/api/v1/user"), ("/api/v1/preauthkey", "/api/v1/preauthkey"),
                         ("/api/v1/apikey", "/api/v1/apikey"), ("/api/v1/version", "/api/v1/version")]:
        status, _, doc = await call(api, "GET", target)
        schema = api.openapi["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        jsonschema.validate(doc, {**schema, **registry})
    status, _, doc = await call(api, "GET", "/api/v1/nope")
    jsonschema.validate(doc, api.openapi["components"]["schemas"]["Problem"])


async def test_docs_page_is_self_contained(api):
    req = h11.Request(method="GET", target="/api/v1/docs", headers=[("host", "x")])
    status, headers, body = await api(req, b"")
    page = body.decode()
    assert status == 200 and "text/html" in dict(headers)["content-type"]
    assert "renameNode" in page and "/api/v1/node/{nodeId}/rename/{newName}" in page
    assert "<script" not in page and "http://" not in page.replace("http://127.0.0.1", "")
    assert "https://" not in page.replace("https://SERVER", "")


# --- users, emails and the policy ------------------------------------------------------------


async def test_an_email_cannot_take_over_a_policy_user(api):
    t = api.backend.tailnet
    alice = await t.create_user("alice")
    status, _, _ = await call(api, "POST", "/api/v1/user", b'{"name": "bob", "email": "alice@"}')
    assert status == 422
    bob = await t.create_user("bob", email="bob@example.com")
    with pytest.raises(Exception, match="already has the email"):
        await t.create_user("carol", email="BOB@example.com")
    with pytest.raises(Exception, match="already exists"):
        await t.create_user("ALICE")
    # Data written before these rules (an import, an old version): "alice@" as bob's email
    # still does not make the policy's alice@ mean bob.
    await t.store.run_sync(lambda c: c.execute("UPDATE users SET email = 'alice@' WHERE id = ?", (bob.id,)))
    users = [policy_user(u) for u in (alice, bob)]
    users[1] = type(users[1])(id=bob.id, name="bob", email="alice@")
    engine = PolicyEngine(None, users, [], server_url="http://x")
    engine.set_policy('{"tagOwners": {"tag:a": ["alice@"], "tag:b": ["bob@"]}, "acls": []}')
    assert engine.owns_tag(alice.id, "tag:a") and not engine.owns_tag(bob.id, "tag:a")
    assert engine.owns_tag(bob.id, "tag:b")



# --- API keys --------------------------------------------------------------------------------


class FakeStore:
    def __init__(self):
        self.touches = []

    async def touch_api_keys(self, used):
        self.touches.append(dict(used))


async def test_failed_key_attempts_are_limited_per_source_and_logged(api, caplog):
    keys = api.apikeys
    _, good = await keys.create(NOW + timedelta(days=1))
    caplog.set_level(logging.WARNING, "appliance.admin.apikeys")
    for i in range(FAIL_BURST):
        with pytest.raises(Unauthorized):
            await keys.authenticate("Bearer hskey-api-aaaaaaaaaaaa-" + "0" * 64, "192.0.2.7")
    with pytest.raises(RateLimited) as e:
        await keys.authenticate(f"Bearer {good}", "192.0.2.7")  # even a good key waits: it is not looked at
    assert dict(e.value.headers)["retry-after"].isdigit()
    assert (await keys.authenticate(f"Bearer {good}", "192.0.2.8")).prefix in good  # another source is fine
    assert keys.failed_total == FAIL_BURST and keys.failed_by_source["192.0.2.7"] == FAIL_BURST
    assert "192.0.2.7" in caplog.text and "unknown key" in caplog.text
    # IPv6 sources count per /64.
    assert source_key("2001:db8::1") == source_key("2001:db8::ffff") == "2001:db8::/64"
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    status, headers, doc = await call(api, "GET", "/api/v1/user", public=True,
                                      headers=[("authorization", "Bearer nope")])
    assert status == 401 and doc["status"] == 401


async def test_last_use_is_batched(api):
    keys = ApiKeys(FakeStore(), lambda: NOW)
    keys.keys = dict(api.apikeys.keys)
    rec, text = await api.apikeys.create(None)
    keys.keys[rec.id] = rec
    for _ in range(50):
        await keys.authenticate(f"Bearer {text}", "127.0.0.1")
    assert keys.store.touches == []
    assert keys.listed()[-1].last_seen == NOW  # shown before it is written
    await keys.flush()
    await keys.flush()
    assert keys.store.touches == [{rec.id: NOW}]


async def test_unset_fields_are_left_out():
    from appliance.admin.runtime import DnsChanges

    changes = DnsChanges.spec.parse({"searchDomains": None, "nameservers": {"global": ["9.9.9.9"]}}, "body")
    assert changes.magic_dns is UNSET and changes.search_domains is None
    assert DnsChanges.spec.dump(changes) == {"nameservers": {"global": ["9.9.9.9"]}, "searchDomains": None}
