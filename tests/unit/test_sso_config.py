"""`sso setup` replaces only the oidc section of a config file (issue 11: "keeping the rest of
the file as it was")."""

from __future__ import annotations

import yaml

from appliance.sso import replace_oidc_section

BEFORE = """# header comment
server_url: https://vpn.example.org  # why this URL
oidc:
  issuer: https://old
  # comment in the old block
  scope:
    - openid

dns:
  base_domain: t.example
# trailing comment
"""


def test_only_the_oidc_block_changes():
    after = replace_oidc_section(BEFORE, {"issuer": "https://new", "client_id": "c"})
    assert yaml.safe_load(after) == {"server_url": "https://vpn.example.org", "dns": {"base_domain": "t.example"},
                                     "oidc": {"issuer": "https://new", "client_id": "c"}}
    for line in ("# header comment", "server_url: https://vpn.example.org  # why this URL", "dns:",
                 "  base_domain: t.example", "# trailing comment"):
        assert line in after.splitlines()
    assert "old" not in after


def test_a_file_without_oidc_gets_it_appended():
    after = replace_oidc_section("server_url: https://x\n", {"issuer": "https://new"})
    assert after.startswith("server_url: https://x\n") and yaml.safe_load(after)["oidc"] == {"issuer": "https://new"}
    assert yaml.safe_load(replace_oidc_section("", {"issuer": "i"})) == {"oidc": {"issuer": "i"}}
