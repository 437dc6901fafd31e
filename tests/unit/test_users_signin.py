"""Users of people who sign in (issue 11): roles with one owner, and users matched by their
provider identity, their profile and groups brought up to date at each sign-in."""

from __future__ import annotations

import ipaddress

import pytest
import trio

from appliance.control.hostinfo import Hostinfo
from appliance.errors import Conflict, Invalid
from appliance.storage.records import NodeRecord
from appliance.tailnet.model import Tailnet
from tests.stores import new_store, open_store_again, pg_database, store_engine  # noqa: F401


@pytest.fixture
async def tailnet(new_store):
    """On each engine (tests/stores.py)."""
    t = Tailnet(new_store, v4=ipaddress.ip_network("100.64.0.0/10"), v6=None)
    await t.load()
    return t


async def reload(t: Tailnet) -> Tailnet:
    again = Tailnet(t.store, v4=ipaddress.ip_network("100.64.0.0/10"), v6=None)
    await again.load()
    return again


async def test_the_first_user_owns_the_tailnet_and_ownership_is_handed_over(tailnet):
    a = await tailnet.create_user("alice")
    b = await tailnet.create_user("bob")
    assert (a.role, b.role) == ("owner", "member")
    with pytest.raises(Invalid):
        await tailnet.set_role("bob", "superuser")
    with pytest.raises(Conflict, match="owns the tailnet"):
        await tailnet.set_role("alice", "member")
    await tailnet.set_role("bob", "auditor")
    await tailnet.set_role("bob", "owner")
    stored = await reload(tailnet)
    assert {u.name: u.role for u in stored.users.values()} == {"alice": "admin", "bob": "owner"}


async def test_sign_in_matches_the_provider_identity_not_the_email(tailnet):
    cli_alice = await tailnet.create_user("alice", email="alice@example.com")
    u = await tailnet.sign_in_user(provider="oidc", provider_id="https://id/1", name_hint="alice",
                                   display_name="Alice", email="alice@example.com", picture="p1", groups=("eng",))
    assert u.id != cli_alice.id and u.name == "alice-1" and u.groups == ("eng",)
    assert u.email == ""  # alice@example.com is the other user's: an admin decides, nobody takes it over
    again = await tailnet.sign_in_user(provider="oidc", provider_id="https://id/1", name_hint="renamed",
                                       display_name="Alice L.", email="alice@example.org", picture="p2", groups=())
    assert (again.id, again.name, again.display_name, again.email, again.profile_pic_url, again.groups) == (
        u.id, "alice-1", "Alice L.", "alice@example.org", "p2", ())
    stored = await reload(tailnet)
    assert stored.users[u.id] == again


async def test_what_a_provider_says_is_held_to_the_rules_of_names(tailnet):
    u = await tailnet.sign_in_user(provider="oidc", provider_id="https://id/2", name_hint="1 José Müller!",
                                   display_name="Jos\u00e9\u202e\x1b[31m", email="not an email", picture="",
                                   groups=("ops",))
    assert (u.name, u.display_name, u.email) == ("JoseMuller", "José[31m", "")
    again = await tailnet.sign_in_user(provider="oidc", provider_id="https://id/3", name_hint="josemuller",
                                       display_name="", email="", picture="", groups=())
    assert again.name == "josemuller-1"  # unique without regard to case


async def test_roles_resolve_as_the_policy_engine_does(tailnet):
    """A store that names no owner (an import, the owner deleted): the first user owns the
    tailnet, for the API, set-role's rules and the policy alike."""
    a = await tailnet.create_user("alice")
    b = await tailnet.create_user("bob")
    await tailnet.delete_user(a.id)
    assert tailnet.roles() == {b.id: "owner"} and b.role == "member"
    with pytest.raises(Conflict, match="owns the tailnet"):
        await tailnet.set_role("bob", "admin")
    c = await tailnet.create_user("carol")
    assert (await tailnet.set_role("carol", "owner")).role == "owner"
    assert tailnet.roles() == {b.id: "admin", c.id: "owner"}


@pytest.mark.parametrize("store_engine", ["postgres"])
async def test_a_server_that_takes_over_has_the_sign_in_state(open_store_again):
    """What a standby that takes over loads (issue 16): who owns the tailnet and the roles, a
    person's provider identity (the same person signs in as the same user), and a device that
    waits for approval still waits, until it is approved through the new active server."""
    net = ipaddress.ip_network("100.64.0.0/10")
    old, new = open_store_again(), open_store_again()
    assert await old.try_become_active("old", "k") is not None
    t = Tailnet(old, v4=net, v6=None, approval_required=True)
    await t.load()
    alice = await t.sign_in_user(provider="oidc", provider_id="https://id/1", name_hint="alice", display_name="",
                                 email="", picture="", groups=("eng",))
    bob = await t.create_user("bob")
    await t.set_role("bob", "admin")
    waiting = await old.save_node(NodeRecord(
        id=0, machine_key="mkey:" + "1" * 64, node_key="nodekey:" + "2" * 64, disco_key="", ipv4="100.64.0.1",
        ipv6=None, hostname="laptop", given_name="laptop", user_id=bob.id, auth_key_id=None, tags=(),
        hostinfo=Hostinfo(hostname="laptop"), endpoints=(), expiry=None, last_seen=None,
        created_at=t.clock(), authorized=False))
    old.close()  # the old active server dies
    lease = None
    with trio.fail_after(10):
        while lease is None:
            lease = await new.try_become_active("new", "k")
            await trio.sleep(0.1)
    t2 = Tailnet(new, v4=net, v6=None, approval_required=True)
    await t2.load()
    assert t2.roles() == {alice.id: "owner", bob.id: "admin"}
    assert not t2.is_usable(t2.nodes[waiting.id])
    again = await t2.sign_in_user(provider="oidc", provider_id="https://id/1", name_hint="other", display_name="",
                                  email="", picture="", groups=("eng", "ops"))
    assert (again.id, again.name, again.groups) == (alice.id, "alice", ("eng", "ops"))
    await t2.update_node(waiting.id, authorized=True)
    assert t2.is_usable(t2.nodes[waiting.id])
