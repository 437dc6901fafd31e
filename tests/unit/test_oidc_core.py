"""The pieces of OIDC sign-in that need no provider: discovery documents, the allow rules in
Headscale's order, the client secret file, and the settings (the provider itself is tested for
real in tests/realclient/test_oidc.py)."""

from __future__ import annotations

import json

import pytest

from appliance.config import ConfigError, config_from_dict
from appliance.oidc.provider import Identity, ProviderError, parse_metadata, pkce_challenge
from appliance.oidc.rules import Refusal, check_allowed
from appliance.oidc.settings import OIDCSettings, oidc_settings, read_secret_file

ISSUER = "https://id.example.com/realm"
DOC = {"issuer": ISSUER, "authorization_endpoint": ISSUER + "/auth", "token_endpoint": ISSUER + "/token",
       "jwks_uri": ISSUER + "/jwks", "userinfo_endpoint": ISSUER + "/me",
       "id_token_signing_alg_values_supported": ["RS256", "HS256", "none"]}


def test_discovery_keeps_only_asymmetric_algorithms_and_needs_the_same_issuer():
    m = parse_metadata(json.dumps(DOC).encode(), ISSUER)
    assert m.algorithms == ("RS256",) and m.userinfo_endpoint == ISSUER + "/me"
    for bad, why in ((dict(DOC, issuer=ISSUER + "/"), "must match"), (dict(DOC, token_endpoint=5), "token_endpoint"),
                     (dict(DOC, id_token_signing_alg_values_supported=["HS256", "none"]), "no algorithm")):
        with pytest.raises(ProviderError, match=why):
            parse_metadata(json.dumps(bad).encode(), ISSUER)
    with pytest.raises(ProviderError):
        parse_metadata(b"[" * 100_000, ISSUER)


def test_pkce_s256_is_rfc_7636s_example():
    assert pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk", "S256") == \
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def who(**kw) -> Identity:
    base = dict(issuer=ISSUER, subject="1", email="a@example.com", email_verified=True, groups=("staff",))
    return Identity(**{**base, **kw})


def settings(**kw) -> OIDCSettings:
    return OIDCSettings(issuer=ISSUER, client_id="c", client_secret="s", **kw)


@pytest.mark.parametrize("rules, person, kind", [
    (dict(allowed_groups=("admins",)), who(), "group"),
    (dict(allowed_domains=("example.com",)), who(email_verified=False), "unverified-email"),
    (dict(allowed_domains=("example.com",)), who(email="a@evil.test"), "domain"),
    (dict(allowed_users=("b@example.com",)), who(), "user"),
    (dict(allowed_organizations=("acme",)), who(organizations=("other",)), "organization"),
    # Headscale's order: the group rule speaks before the email rules.
    (dict(allowed_groups=("admins",), allowed_domains=("example.com",)), who(email_verified=False), "group"),
])
def test_refusals(rules, person, kind):
    with pytest.raises(Refusal) as e:
        check_allowed(settings(**rules), person)
    assert e.value.kind == kind


def test_allowed_people_pass():
    check_allowed(settings(), who(email_verified=False))  # no email rules: not needed
    check_allowed(settings(allowed_domains=("example.com",), allowed_groups=("staff",),
                           allowed_users=("a@example.com",)), who())
    check_allowed(settings(allowed_domains=("example.com",), email_verified_required=False), who(email_verified=False))


def test_the_secret_file_expands_the_environment(tmp_path):
    (tmp_path / "secret").write_text("  s3cret\n")
    assert read_secret_file("${CREDENTIALS_DIRECTORY}/secret", {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "s3cret"
    with pytest.raises(ConfigError, match="unset environment variable"):
        read_secret_file("${NOPE}/secret", {})
    with pytest.raises(ConfigError, match="cannot read"):
        read_secret_file(str(tmp_path / "missing"), {})


def test_settings_need_a_client_id_and_openid():
    assert oidc_settings(config_from_dict({})) is None
    with pytest.raises(ConfigError, match="client_id"):
        oidc_settings(config_from_dict({"oidc": {"issuer": ISSUER}}))
    with pytest.raises(ConfigError, match="openid"):
        oidc_settings(config_from_dict({"oidc": {"issuer": ISSUER, "client_id": "c", "scope": ["email"]}}))
    s = oidc_settings(config_from_dict({"oidc": {"issuer": ISSUER, "client_id": "c", "client_secret": "x",
                                                 "allowed_domains": ["Example.COM"]}}))
    assert s.allowed_domains == ("example.com",) and s.redirect_uri("https://hs.example.com") == \
        "https://hs.example.com/oidc/callback"
    gh = oidc_settings(config_from_dict({"oidc": {"issuer": "https://github.com", "client_id": "c",
                                                  "client_secret": "x", "provider": "github"}}))
    assert gh.github_api == "https://api.github.com"


def test_the_authorization_request_carries_scope_pkce_and_extra_params():
    from urllib.parse import parse_qs, urlsplit

    from appliance.oidc.provider import Metadata, OIDCProvider

    for method in ("S256", "plain"):
        p = OIDCProvider(settings(scope=("openid", "email", "groups"), pkce_enabled=True, pkce_method=method,
                                  extra_params={"domain_hint": "example.com", "prompt": "login"}),
                         "https://hs.example.com/oidc/callback")
        p.metadata = Metadata(issuer=ISSUER, authorization_endpoint=ISSUER + "/auth?tenant=x",
                              token_endpoint=ISSUER + "/token")
        q = {k: v[0] for k, v in parse_qs(urlsplit(p.authorization_url("st", "no", "v" * 43)).query).items()}
        assert q["tenant"] == "x" and q["state"] == "st" and q["nonce"] == "no"
        assert q["scope"] == "openid email groups" and q["redirect_uri"] == "https://hs.example.com/oidc/callback"
        assert q["code_challenge_method"] == method and q["domain_hint"] == "example.com" and q["prompt"] == "login"
        assert q["code_challenge"] == ("v" * 43 if method == "plain" else pkce_challenge("v" * 43, "S256"))
