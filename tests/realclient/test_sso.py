"""`trioscale sso setup PROVIDER` for every provider (issue 11's bar): it checks the provider's
discovery (served by a local stand-in, reached through the namespace's /etc/hosts and a test
CA, since the real ones cannot be reached here), writes a config that `configtest` accepts and
keeps the rest of the file as it was. `generic` against a real provider ends in a working login:
tests/realclient/test_oidc.py."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import yaml

from .harness import REPO, make_certs

HOSTS = ["accounts.google.com", "login.microsoftonline.com", "dev-42.okta.com", "github.com", "api.github.com",
         "gitlab.com", "sso.example.org", "auth.example.org"]
ORIGINAL = """# my trioscale config, with comments that must survive
server_url: https://vpn.example.org
listen_addr: 127.0.0.1:8080   # trailing comment
oidc:
  issuer: https://old.example.org
  # an old comment inside the old block
  client_id: old
dns:
  base_domain: tailnet.example
"""
CASES = {
    "google": (["--domain", "example.org"], "https://accounts.google.com",
               {"allowed_domains": ["example.org"], "extra_params": {"hd": "example.org"}}),
    "microsoft": (["--tenant", "contoso.onmicrosoft.com"],
                  "https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0", {}),
    "okta": (["--domain", "dev-42.okta.com"], "https://dev-42.okta.com", {}),
    "github": (["--organization", "acme,acme-labs"], "https://github.com",
               {"provider": "github", "allowed_organizations": ["acme", "acme-labs"]}),
    "gitlab": ([], "https://gitlab.com", {}),
    "keycloak": (["--url", "https://sso.example.org", "--realm", "staff"], "https://sso.example.org/realms/staff", {}),
    "authentik": (["--url", "https://auth.example.org", "--slug", "trioscale"],
                  "https://auth.example.org/application/o/trioscale/", {}),
    "generic": (["--issuer", "https://sso.example.org/realms/other"], "https://sso.example.org/realms/other", {}),
}


@pytest.fixture(scope="module")
def stub(netns, tmp_path_factory):
    work = tmp_path_factory.mktemp("sso")
    certs = make_certs(work / "certs", *HOSTS)
    for h in HOSTS:
        netns.add_host(h)
    proc = subprocess.Popen(netns.wrap([sys.executable, "-m", "tests.oidc.discovery_stub", str(certs.cert),
                                        str(certs.key), "443"]), cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "ready"
    yield {"work": work, "ca": certs.ca}
    proc.kill()
    proc.wait()


def trioscale(netns, stub, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(netns.wrap([sys.executable, "-m", "appliance", *args]), cwd=REPO, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONPATH": str(REPO), "SSL_CERT_FILE": str(stub["ca"])})


@pytest.mark.parametrize("provider", sorted(CASES))
def test_setup_writes_a_config_configtest_accepts(netns, stub, provider):
    flags, issuer, extra = CASES[provider]
    config = stub["work"] / provider / "config.yaml"
    config.parent.mkdir()
    config.write_text(ORIGINAL)
    r = trioscale(netns, stub, "sso", "setup", provider, "-c", str(config), "--client-id", f"{provider}-id",
                  "--client-secret", "s3cret-value", *flags)
    assert r.returncode == 0, r.stderr
    assert "Redirect URI (paste it exactly): https://vpn.example.org/oidc/callback" in r.stdout
    text = config.read_text()
    # Every line outside the oidc block is as it was, comments included.
    kept = [line for line in ORIGINAL.splitlines() if not line.startswith(("oidc:", "  issuer", "  # an old",
                                                                           "  client_id"))]
    assert [line for line in text.splitlines() if line in kept] == kept
    assert "s3cret-value" not in text and "old.example.org" not in text
    oidc = yaml.safe_load(text)["oidc"]
    assert oidc["issuer"] == issuer and oidc["client_id"] == f"{provider}-id"
    for k, v in extra.items():
        assert oidc[k] == v
    secret = config.with_name("oidc_client_secret")
    assert secret.read_text().strip() == "s3cret-value" and stat.S_IMODE(secret.stat().st_mode) == 0o600
    check = trioscale(netns, stub, "configtest", "-c", str(config))
    assert check.returncode == 0, check.stderr
    assert "configuration OK" in check.stderr


def test_an_unreachable_provider_writes_nothing(netns, stub):
    config = stub["work"] / "unreachable.yaml"
    config.write_text(ORIGINAL)
    r = trioscale(netns, stub, "sso", "setup", "generic", "-c", str(config), "--issuer", "https://nowhere.invalid",
                  "--client-id", "x", "--client-secret", "y")
    assert r.returncode == 1 and "nothing was written" in r.stderr
    assert config.read_text() == ORIGINAL and not config.with_name("oidc_client_secret").exists()
