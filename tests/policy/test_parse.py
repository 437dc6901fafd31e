"""Parsing: HuJSON syntax, positions, unknown fields, Tailscale's wording."""

import pytest

from appliance.policy import ParseError, PolicyError, parse_policy
from appliance.policy.hujson import loads


def test_hujson_comments_and_trailing_commas():
    value, _ = loads('{\n  // a comment\n  "a": [1, 2,], /* block */\n  "b": {"c": null,},\n}')
    assert value == {"a": [1, 2], "b": {"c": None}}


def test_syntax_error_has_line_and_column():
    with pytest.raises(ParseError) as ei:
        parse_policy('{\n  "acls": [\n    {"action": "accept",, }\n  ]\n}')
    assert (ei.value.line, ei.value.column) == (3, 25)


def test_unknown_top_level_field_is_refused_with_position():
    with pytest.raises(ParseError) as ei:
        parse_policy('{\n  "groups": {},\n  "aclz": []\n}')
    e = ei.value
    assert 'unknown field "aclz"' in e.message
    assert (e.line, e.column, e.field) == (3, 3, "aclz")


def test_unknown_rule_field_names_the_field():
    with pytest.raises(ParseError) as ei:
        parse_policy('{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"], "port": 22}]}')
    assert ei.value.field == "port"
    assert ei.value.line == 1


def test_single_quotes_are_not_hujson():
    with pytest.raises(ParseError):
        parse_policy("{'acls': []}")


@pytest.mark.parametrize("policy, message", [
    ('{"acls": [{"action": "deny", "src": ["*"], "dst": ["*:*"]}]}',
     'action="deny" is not supported'),
    ('{"acls": [{"action": "accept", "src": ["tag:x"], "dst": ["*:*"]}]}',
     'src=tag not found: "tag:x"'),
    ('{"acls": [{"action": "accept", "src": ["*"], "dst": ["tag:server:ssh"]}], "tagOwners": {"tag:server": []}}',
     'dst="tag:server:ssh": port range "ssh": invalid first integer'),
    ('{"acls": [{"action": "accept", "src": ["autogroup:self"], "dst": ["*:*"]}]}',
     '"autogroup:self" not valid on the src side of a rule'),
    ('{"grants": [{"src": ["*"], "dst": ["*"]}]}', "ip and app can not both be empty"),
    ('{"groups": {"group:a": ["group:b"], "group:b": ["x@example.com"]}}',
     'groups["group:a"]: "group:b": group members cannot be recursive'),
    ('{"ssh": [{"action": "accept", "src": ["*"], "dst": ["autogroup:self"], "users": ["root"], "checkPeriod": "200h"}]}',
     "checkPeriod 200h0m0s is above the max (168h)"),
])
def test_tailscale_messages(policy, message):
    with pytest.raises(PolicyError) as ei:
        parse_policy(policy)
    assert ei.value.message == message
