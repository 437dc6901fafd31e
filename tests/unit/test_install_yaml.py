"""install's edits of config.yaml text for nested keys (``--cert-domain``): comments and every
other line stay; missing sections are added inside their parent."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from appliance.install import Refused, check_config, render_config, set_nested_key


def test_example_config_gets_the_zone_with_its_comments():
    plain = render_config(None, "vpn.example.com", "admin@example.com")
    text = render_config(None, "vpn.example.com", "admin@example.com", "ts.example.com")
    changed = [(a, b) for a, b in zip(plain.splitlines(), text.splitlines()) if a != b]
    assert changed == [
        ("  base_domain: tailnet.internal", '  base_domain: "ts.example.com"'),
        ("    enabled: false", "    enabled: true"),
        ("    provider: embedded", '    provider: "embedded"'),
    ]
    cfg = check_config(text, Path("/etc/trioscale/config.yaml"), "ts.example.com")
    assert cfg.dns.certificates.enabled and cfg.dns.certificates.ns_name == "vpn.example.com"


def test_missing_sections_are_added_in_place():
    text = "server_url: https://vpn.example.com\nlog:\n  level: info\n# end\n"
    text = set_nested_key(text, ("dns", "certificates", "enabled"), True)
    text = set_nested_key(text, ("dns", "base_domain"), "ts.example.com")
    text = set_nested_key(text, ("log", "format"), "json")
    doc = yaml.safe_load(text)
    assert doc == {"server_url": "https://vpn.example.com", "log": {"level": "info", "format": "json"},
                   "dns": {"certificates": {"enabled": True}, "base_domain": "ts.example.com"}}
    assert text.rstrip().endswith("# end")


def test_other_indentation_and_commented_keys():
    text = "dns:\n    magic_dns: true\n    # base_domain: example.org\nderp:\n  urls: []\n"
    text = set_nested_key(text, ("dns", "base_domain"), "ts.example.com")
    assert "    base_domain: \"ts.example.com\"\n" in text and "# base_domain" not in text
    text = set_nested_key(text, ("dns", "certificates", "provider"), "embedded")
    assert yaml.safe_load(text)["dns"] == {"magic_dns": True, "base_domain": "ts.example.com",
                                           "certificates": {"provider": "embedded"}}


def test_flow_style_section_is_refused_not_mangled():
    text = 'server_url: "https://vpn.example.com"\ndns: {magic_dns: true, base_domain: a.example.com}\n'
    with pytest.raises(Refused):
        check_config(render_config(text, None, None, "ts.example.com"), Path("/etc/trioscale/config.yaml"),
                     "ts.example.com")
