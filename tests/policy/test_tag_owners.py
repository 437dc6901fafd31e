"""tagOwners decide which tags a user's device may request."""

from appliance.policy import Node, PolicyEngine, User

POLICY = """{
  "groups": {"group:ops": ["bob@example.com", "carol@"]},
  "tagOwners": {
    "tag:server": ["alice@example.com"],
    "tag:db": ["group:ops"],
    "tag:any": ["autogroup:member"],
    "tag:boss": ["autogroup:admin"],
    "tag:nested": ["tag:server"],
  },
}"""


def engine() -> PolicyEngine:
    users = [User(1, "alice", "alice@example.com"), User(2, "bob", "bob@example.com"), User(3, "carol", "")]
    e = PolicyEngine(None, users, [Node(1, "n1", 1)])
    e.set_policy(POLICY)
    return e


def test_owners_by_login_group_and_autogroups():
    e = engine()
    assert e.owns_tag(1, "tag:server") and not e.owns_tag(2, "tag:server")
    assert e.owns_tag(2, "tag:db") and e.owns_tag(3, "tag:db") and not e.owns_tag(1, "tag:db")
    assert all(e.owns_tag(u, "tag:any") for u in (1, 2, 3))
    assert e.owns_tag(1, "tag:boss") and not e.owns_tag(2, "tag:boss")
    assert not e.owns_tag(1, "tag:nested")  # owned by a tag: only tagged devices, not users
    assert not e.owns_tag(1, "tag:unknown")
