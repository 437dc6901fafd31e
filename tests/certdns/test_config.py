"""The ``dns.certificates`` keys: defaults, what they need, the refusals that name the key, and
secrets kept out of ``configtest``'s output."""

from __future__ import annotations

import pytest
import yaml

from appliance.config import ConfigError, config_from_dict, config_to_dict, config_to_yaml

ENV = {"HOME": "/home/tester"}
SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I="


def build(certificates: dict | None, base_domain: str = "ts.example.com",
          server_url: str = "https://vpn.example.com", **dns) -> object:
    dns_doc: dict = {"base_domain": base_domain, **dns}
    if certificates is not None:
        dns_doc["certificates"] = certificates
    return config_from_dict({"server_url": server_url, "dns": dns_doc}, env=ENV)


def test_off_by_default():
    c = build(None).dns.certificates
    assert (c.enabled, c.provider, c.listen_addr) == (False, "embedded", ":53")


def test_embedded_names_the_server_from_server_url():
    c = build({"enabled": True}).dns.certificates
    assert (c.enabled, c.provider, c.ns_name) == (True, "embedded", "vpn.example.com")
    assert build({"enabled": True, "ns_name": "ns1.example.net"}).dns.certificates.ns_name == "ns1.example.net"


@pytest.mark.parametrize("doc,kw,key,words", [
    ({"enabled": True}, {"base_domain": "tailnet.internal"}, "dns.base_domain", "cannot be delegated"),
    ({"enabled": True}, {"magic_dns": False}, "dns.certificates.enabled", "MagicDNS"),
    ({"enabled": True}, {"server_url": "http://192.0.2.1:8080"}, "dns.certificates.ns_name", "IP address"),
    ({"enabled": True, "ns_name": "ns.ts.example.com"}, {}, "dns.certificates.ns_name", "inside the zone"),
    ({"enabled": True, "provider": "route53"}, {}, "dns.certificates.provider", "expected one of"),
    ({"enabled": True, "listen_addr": "53"}, {}, "dns.certificates.listen_addr", "expected an address"),
    ({"enabled": True, "provider": "rfc2136"}, {}, "dns.certificates.rfc2136.server", "primary DNS server"),
    ({"enabled": True, "provider": "rfc2136", "rfc2136": {"server": "192.0.2.53:53"}}, {},
     "dns.certificates.rfc2136.tsig_key_name", "is needed"),
    ({"enabled": True, "provider": "rfc2136", "rfc2136": {"server": "192.0.2.53:53", "tsig_key_name": "k"}}, {},
     "dns.certificates.rfc2136.tsig_secret", "needed"),
    ({"enabled": True, "provider": "rfc2136", "rfc2136": {"server": "192.0.2.53:53", "tsig_key_name": "k",
                                                          "tsig_secret": "not base64!"}}, {},
     "dns.certificates.rfc2136.tsig_secret", "base64"),
    ({"enabled": True, "provider": "rfc2136", "rfc2136": {"server": "192.0.2.53:53", "tsig_key_name": "k",
                                                          "tsig_secret": SECRET, "tsig_algorithm": "hmac-sha3"}}, {},
     "dns.certificates.rfc2136.tsig_algorithm", "expected one of"),
    ({"enabled": True, "provider": "rfc2136", "rfc2136": {"server": "192.0.2.53:53", "tsig_key_name": "k",
                                                          "tsig_secret": SECRET, "zone": "example.org"}}, {},
     "dns.certificates.rfc2136.zone", "not inside the zone"),
    ({"enabled": True, "provider": "cloudflare"}, {}, "dns.certificates.cloudflare.api_token", "needed"),
    ({"enabled": True, "provider": "cloudflare", "cloudflare": {"api_token": "t", "api_token_path": "/x"}}, {},
     "dns.certificates.cloudflare.api_token_path", "not both"),
])
def test_refusals_name_the_key(doc, kw, key, words):
    with pytest.raises(ConfigError) as info:
        build(doc, **kw)
    assert info.value.key == key and words in str(info.value), str(info.value)


def test_rfc2136_with_the_secret_in_a_file(tmp_path):
    secret = tmp_path / "tsig.secret"
    secret.write_text(SECRET + "\n")
    c = build({"enabled": True, "provider": "rfc2136", "rfc2136": {
        "server": "192.0.2.53:53", "tsig_key_name": "trioscale.", "tsig_secret_path": str(secret)}}).dns.certificates
    r = c.rfc2136
    assert (r.server, r.zone, r.tsig_key_name, r.tsig_algorithm, r.tsig_secret) == (
        "192.0.2.53:53", "ts.example.com", "trioscale", "hmac-sha256", SECRET)
    with pytest.raises(ConfigError, match="cannot read"):
        build({"enabled": True, "provider": "rfc2136", "rfc2136": {
            "server": "192.0.2.53:53", "tsig_key_name": "k", "tsig_secret_path": str(tmp_path / "missing")}})


def test_cloudflare_defaults():
    c = build({"enabled": True, "provider": "cloudflare", "cloudflare": {"api_token": "tok"}}).dns.certificates
    assert (c.cloudflare.api_token, c.cloudflare.zone_id, c.cloudflare.api_url) == (
        "tok", None, "https://api.cloudflare.com/client/v4")


def test_secrets_are_redacted_and_the_dump_loads_back():
    for certs in ({"enabled": True, "provider": "cloudflare", "cloudflare": {"api_token": "cf-token-4711", "zone_id": "z"}},
                  {"enabled": True, "provider": "rfc2136", "rfc2136": {"server": "192.0.2.53:53",
                                                                       "tsig_key_name": "k", "tsig_secret": SECRET}}):
        cfg = build(certs)
        shown = config_to_yaml(cfg, redact=True)
        assert "cf-token-4711" not in shown and SECRET not in shown and "<redacted>" in shown
        again = config_from_dict(yaml.safe_load(yaml.safe_dump(config_to_dict(cfg))), env=ENV)
        assert again.dns.certificates == cfg.dns.certificates
