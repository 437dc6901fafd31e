"""Roles and identity-provider groups in the policy (issue 11 items 4 and 6): autogroup:<role>
resolves to the users with that role (the owner also counts as an admin), group:NAME takes in the
users whose provider gave them NAME, and users are named as Tailscale names them."""

from __future__ import annotations

import pytest

from appliance.policy import PolicyEngine, PolicyError
from appliance.policy.model import Node, User
from appliance.policy.reach import reach

USERS = [
    User(1, "olivia", "olivia@example.com", role="owner"),
    User(2, "adam", "adam@example.com", role="admin"),
    User(3, "nora", "nora@example.com", role="network-admin"),
    User(4, "ivan", "ivan@example.com", role="it-admin"),
    User(5, "bill", "bill@example.com", role="billing-admin"),
    User(6, "aud", "aud@example.com", role="auditor"),
    User(7, "mia", "mia@example.com", groups=("admins", "eng"), role="member"),
    User(8, "max", "", groups=("eng",), role="member"),
]
NODES = [Node(u.id, f"n{u.id}", u.id, ipv4=f"100.64.0.{u.id}") for u in USERS] + [
    Node(100, "web", None, tags=("tag:web",), ipv4="100.64.1.1")]


def reachers(policy: str, users=USERS) -> set[int]:
    """Who may reach the web server's port 80."""
    e = PolicyEngine(policy, users, NODES)
    web = NODES[-1]
    return {n.id for n in NODES[:-1] if reach(e, n, web, 80)[0]}


def acl(src: str) -> str:
    return ('{"tagOwners": {"tag:web": ["autogroup:admin"]}, "acls": [{"action": "accept", '
            f'"src": ["{src}"], "dst": ["tag:web:80"]}}]}}')


@pytest.mark.parametrize("group, ids", [
    ("autogroup:owner", {1}), ("autogroup:admin", {1, 2}), ("autogroup:network-admin", {3}),
    ("autogroup:it-admin", {4}), ("autogroup:billing-admin", {5}), ("autogroup:auditor", {6}),
    ("autogroup:member", {1, 2, 3, 4, 5, 6, 7, 8}),
])
def test_role_autogroups(group, ids):
    assert reachers(acl(group)) == ids


def test_without_roles_the_first_user_owns_the_tailnet():
    plain = [User(u.id, u.name, u.email) for u in USERS]
    assert reachers(acl("autogroup:owner"), plain) == {1}
    assert reachers(acl("autogroup:admin"), plain) == {1}
    assert reachers(acl("autogroup:it-admin"), plain) == set()


def test_provider_groups_fill_policy_groups_and_need_no_definition():
    assert reachers(acl("group:eng")) == {7, 8}
    both = ('{"groups": {"group:admins": ["adam@example.com"]}, "tagOwners": {"tag:web": []}, '
            '"acls": [{"action": "accept", "src": ["group:admins"], "dst": ["tag:web:80"]}]}')
    assert reachers(both) == {2, 7}
    with pytest.raises(PolicyError, match="group not found"):
        PolicyEngine(acl("group:nobody-has-it"), USERS, NODES)


def test_users_as_tailscale_writes_them():
    assert reachers(acl("mia@example.com")) == {7}
    assert reachers(acl("max@")) == {8}  # a user without an email: name@


def test_tag_owners_by_role_and_provider_group():
    policy = ('{"tagOwners": {"tag:web": ["autogroup:network-admin", "group:eng"]}, "acls": []}')
    e = PolicyEngine(policy, USERS, NODES)
    assert {u.id for u in USERS if e.owns_tag(u.id, "tag:web")} == {3, 7, 8}


def test_ssh_check_period_of_a_pair():
    policy = ('{"tagOwners": {"tag:web": []}, "ssh": ['
              '{"action": "check", "src": ["mia@example.com"], "dst": ["tag:web"], "users": ["root"], "checkPeriod": "2h"},'
              '{"action": "check", "src": ["autogroup:member"], "dst": ["tag:web"], "users": ["root"]},'
              '{"action": "check", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["root"], '
              '"checkPeriod": "always"},'
              '{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:member"], "users": ["root"]}]}')
    e = PolicyEngine(policy, USERS, NODES)
    assert e.ssh_check_period(7, 100) == 7200  # the first check rule that covers the pair
    assert e.ssh_check_period(2, 100) == 12 * 3600  # Tailscale's default
    assert e.ssh_check_period(2, 2) == 0  # "always"
    assert e.ssh_check_period(2, 3) is None  # only an accept rule
