"""Tests of appliance.config: loading, defaults, validation and the dump."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from appliance import config as config_mod
from appliance.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    default_data_dir,
    format_duration,
    load_config,
    parse_duration,
    split_host_port,
)
from appliance.config import load as load_mod
from appliance.config import schema

HERE = Path(__file__).parent
HEADSCALE_FIXTURE = HERE / "headscale-0.29.yaml"
EXAMPLE = Path(config_mod.__file__).parent.parent / "config-example.yaml"
LOGGER = "appliance.config"

ENV = {"HOME": "/home/tester"}


@pytest.fixture(autouse=True)
def _not_root(monkeypatch):
    # Results must not depend on who runs the tests.
    monkeypatch.setattr(load_mod.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(load_mod, "SYSTEM_CONFIG_PATH", Path("/nonexistent/trioscale/config.yaml"))


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def nest(dotted: str, value) -> dict:
    *parents, leaf = dotted.split(".")
    doc = {leaf: value}
    for part in reversed(parents):
        doc = {part: doc}
    return doc


def build(doc: dict | None, **kw) -> Config:
    kw.setdefault("env", ENV)
    return config_from_dict(doc, **kw)


def config_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def without_path(cfg: Config) -> Config:
    return dataclasses.replace(cfg, path=None)


# --- defaults and finding the file -------------------------------------------


def test_defaults():
    cfg = load_config(None, env=ENV)
    data = Path("/home/tester/.local/share/trioscale")
    assert cfg.path is None
    assert cfg.server_url == "http://127.0.0.1:8080"
    assert cfg.listen_addr == "127.0.0.1:8080"
    assert cfg.metrics_listen_addr is None
    assert cfg.data_dir == data
    assert cfg.noise_private_key_path == data / "noise_private.key"
    assert cfg.prefixes.v4 == ipaddress.IPv4Network("100.64.0.0/10")
    assert cfg.prefixes.v6 == ipaddress.IPv6Network("fd7a:115c:a1e0::/48")
    assert cfg.prefixes.allocation == "sequential"
    assert cfg.database.type == "sqlite"
    assert cfg.database.sqlite_path == data / "db.sqlite"
    assert cfg.database.write_ahead_log is True
    assert cfg.unix_socket == data / "trioscale.sock"
    assert cfg.unix_socket_permission == 0o770
    assert cfg.node.expiry is None
    assert cfg.node.ephemeral_inactivity_timeout == timedelta(minutes=30)
    assert cfg.node.routes_ha_probe_interval == timedelta(seconds=10)
    assert cfg.node.routes_ha_probe_timeout == timedelta(seconds=5)
    assert cfg.dns.magic_dns is True
    assert cfg.dns.base_domain == "tailnet.internal"
    assert cfg.dns.override_local_dns is True
    assert cfg.dns.nameservers_global == ("1.1.1.1", "1.0.0.1", "2606:4700:4700::1111", "2606:4700:4700::1001")
    assert cfg.dns.nameservers_split == {}
    assert cfg.dns.search_domains == ()
    assert cfg.dns.extra_records == ()
    assert cfg.dns.extra_records_path is None
    assert cfg.derp.server_enabled is True
    assert cfg.derp.region_id == 999
    assert cfg.derp.region_code == "trioscale"
    assert cfg.derp.stun_listen_addr == "0.0.0.0:3478"
    assert cfg.derp.private_key_path == data / "derp_server_private.key"
    assert cfg.derp.verify_clients is True
    assert cfg.derp.ipv4 is None and cfg.derp.ipv6 is None
    assert cfg.derp.automatically_add_embedded_derp_region is True
    assert cfg.derp.urls == ()  # we contact nobody's DERP map by default
    assert cfg.derp.paths == ()
    assert cfg.derp.auto_update_enabled is True
    assert cfg.derp.update_frequency == timedelta(hours=3)
    assert cfg.policy.mode == "file" and cfg.policy.path is None
    assert cfg.log.level == "info" and cfg.log.level_no == logging.INFO
    assert cfg.log.format == "text"
    assert cfg.tls.cert_path is None and cfg.tls.key_path is None
    assert cfg.tls.letsencrypt_hostname is None
    assert cfg.tls.letsencrypt_challenge_type == "HTTP-01"
    assert cfg.tls.letsencrypt_listen == ":http"
    assert cfg.tls.letsencrypt_cache_dir == data / "cache"
    assert cfg.tls.acme_url == "https://acme-v02.api.letsencrypt.org/directory"
    assert cfg.tls.acme_email is None
    assert cfg.tls.enabled is False
    assert cfg.trusted_proxies == ()
    assert cfg.extras["taildrop.enabled"] is True
    assert cfg.extras["grpc_allow_insecure"] is False
    assert "oidc.issuer" not in cfg.extras


def test_default_data_dir(monkeypatch):
    assert default_data_dir({"HOME": "/h"}) == Path("/h/.local/share/trioscale")
    assert default_data_dir({"HOME": "/h", "XDG_DATA_HOME": "/xdg"}) == Path("/xdg/trioscale")
    # the XDG spec says relative values are to be ignored
    assert default_data_dir({"HOME": "/h", "XDG_DATA_HOME": "rel"}) == Path("/h/.local/share/trioscale")
    monkeypatch.setattr(load_mod.os, "geteuid", lambda: 0)
    assert default_data_dir({"HOME": "/root"}) == Path("/var/lib/trioscale")


def test_empty_file_is_defaults(tmp_path, caplog):
    path = write(tmp_path, "# nothing here\n")
    cfg = load_config(path, env=ENV)
    assert cfg.path == path
    assert without_path(cfg) == load_config(None, env=ENV)
    assert config_warnings(caplog) == []


def test_file_from_environment_variable(tmp_path):
    path = write(tmp_path, "listen_addr: 0.0.0.0:9999\n")
    cfg = load_config(env={**ENV, "TRIOSCALE_CONFIG": str(path)})
    assert cfg.path == path and cfg.listen_addr == "0.0.0.0:9999"


def test_missing_file_from_environment_variable_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(env={**ENV, "TRIOSCALE_CONFIG": str(tmp_path / "nope.yaml")})


def test_system_file_wins_over_user_file(tmp_path, monkeypatch):
    system = write(tmp_path, "listen_addr: 0.0.0.0:1\n", "system.yaml")
    user_dir = tmp_path / "xdg" / "trioscale"
    user_dir.mkdir(parents=True)
    write(user_dir, "listen_addr: 0.0.0.0:2\n")
    env = {**ENV, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert load_config(env=env).listen_addr == "0.0.0.0:2"
    monkeypatch.setattr(load_mod, "SYSTEM_CONFIG_PATH", system)
    assert load_config(env=env).listen_addr == "0.0.0.0:1"


def test_user_file_under_home_config(tmp_path):
    user_dir = tmp_path / ".config" / "trioscale"
    user_dir.mkdir(parents=True)
    write(user_dir, "listen_addr: 0.0.0.0:3\n")
    cfg = load_config(env={"HOME": str(tmp_path)})
    assert cfg.listen_addr == "0.0.0.0:3"
    assert cfg.path == user_dir / "config.yaml"


def test_explicit_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file") as info:
        load_config(tmp_path / "absent.yaml", env=ENV)
    assert info.value.source == tmp_path / "absent.yaml"


# --- the example file and Headscale's layout ---------------------------------


def test_example_equals_defaults(caplog):
    cfg = load_config(EXAMPLE, env=ENV)
    assert config_warnings(caplog) == []
    assert without_path(cfg) == load_config(None, env=ENV)


def test_example_documents_every_key():
    text = EXAMPLE.read_text()
    for key in schema.MAIN_KEYS:
        assert key.split(".")[-1] + ":" in text, key


def test_headscale_example_loads_without_warnings(caplog):
    cfg = load_config(HEADSCALE_FIXTURE, env=ENV)
    assert config_warnings(caplog) == []
    assert cfg.server_url == "https://hs.example.net:443"
    assert cfg.metrics_listen_addr == "127.0.0.1:9090"
    assert cfg.noise_private_key_path == Path("/var/lib/headscale/noise_private.key")
    assert cfg.derp.server_enabled is False
    assert cfg.derp.region_code == "headscale"
    assert cfg.derp.ipv4 == "198.51.100.1" and cfg.derp.ipv6 == "2001:db8::1"
    assert cfg.derp.urls == ("https://controlplane.tailscale.com/derpmap/default",)
    assert cfg.node.expiry is None
    assert cfg.database.sqlite_path == Path("/var/lib/headscale/db.sqlite")
    assert cfg.dns.base_domain == "example.com"
    assert cfg.dns.nameservers_split == {"foo.bar.com": ("1.1.1.1",), "darp.headscale.net": ("1.1.1.1", "8.8.8.8")}
    assert cfg.dns.extra_records[1] == {"name": "prometheus.myvpn.example.com", "type": "A", "value": "100.64.0.3"}
    assert cfg.unix_socket == Path("/var/run/headscale/headscale.sock")
    assert cfg.tls.letsencrypt_cache_dir == Path("/var/lib/headscale/cache")
    assert cfg.extras["grpc_listen_addr"] == "127.0.0.1:50443"
    assert cfg.extras["oidc.issuer"] == "https://id.example.org/realm"
    assert cfg.extras["oidc.extra_params"] == {"domain_hint": "example.com"}
    assert cfg.extras["oidc.allowed_groups"] == ("/headscale",)
    assert cfg.database.type == "sqlite"
    assert (cfg.database.postgres.host, cfg.database.postgres.port, cfg.database.postgres.name) == (
        "localhost", 5432, "headscale")
    assert cfg.database.postgres.ssl == "disable" and cfg.database.postgres.password == "secret"
    assert cfg.extras["tuning.node_store_batch_timeout"] == timedelta(milliseconds=500)


def test_headscale_defaults_for_the_sections_its_example_comments_out():
    cfg = build({})
    assert cfg.extras["oidc.scope"] == ("openid", "profile", "email")
    assert cfg.extras["oidc.pkce.method"] == "S256"
    assert cfg.extras["tuning.node_store_batch_size"] == 100


# --- unknown, old and removed keys -------------------------------------------


def test_unknown_keys_one_warning_naming_all(caplog):
    doc = {
        "frobnicate": 1,
        "dns": {"magic_dsn": True, "nameservers": {"globl": []}},
        "derp": {"server": {"enabeld": True}},
        "listen_addr": "0.0.0.0:1",
    }
    cfg = build(doc)
    assert cfg.listen_addr == "0.0.0.0:1"
    warnings = config_warnings(caplog)
    assert len(warnings) == 1
    for key in ("frobnicate", "dns.magic_dsn", "dns.nameservers.globl", "derp.server.enabeld"):
        assert key in warnings[0]


def test_free_form_mappings_are_not_unknown_keys(caplog):
    build({"dns": {"nameservers": {"split": {"corp.example.com": ["10.0.0.53"]}}},
           "oidc": {"extra_params": {"anything": "goes"}}})
    assert config_warnings(caplog) == []


def test_empty_sections_are_fine(caplog):
    cfg = build(yaml.safe_load("oidc:\nnoise:\ntuning:\n"))
    assert cfg.noise_private_key_path.name == "noise_private.key"
    assert config_warnings(caplog) == []


def test_old_aliases(caplog):
    doc = {
        "ephemeral_node_inactivity_timeout": "10m",
        "acl_policy_path": "/etc/headscale/acl.hujson",
        "dns_config": {
            "magic_dns": False,
            "base_domain": "old.example",
            "override_local_dns": False,
            "nameservers": ["9.9.9.9"],
            "restricted_nameservers": {"corp.example": ["10.0.0.1"]},
            "domains": ["search.example"],
            "extra_records": [{"name": "x.old.example", "type": "A", "value": "100.64.0.9"}],
        },
    }
    cfg = build(doc)
    assert cfg.node.ephemeral_inactivity_timeout == timedelta(minutes=10)
    assert cfg.policy.path == Path("/etc/headscale/acl.hujson")
    assert cfg.dns.magic_dns is False
    assert cfg.dns.base_domain == "old.example"
    assert cfg.dns.override_local_dns is False
    assert cfg.dns.nameservers_global == ("9.9.9.9",)
    assert cfg.dns.nameservers_split == {"corp.example": ("10.0.0.1",)}
    assert cfg.dns.search_domains == ("search.example",)
    assert cfg.dns.extra_records[0]["name"] == "x.old.example"
    warnings = config_warnings(caplog)
    assert len(warnings) == 1
    assert "ephemeral_node_inactivity_timeout (use node.ephemeral.inactivity_timeout)" in warnings[0]
    assert "dns_config.domains (use dns.search_domains)" in warnings[0]


def test_new_key_wins_over_alias(caplog):
    cfg = build({"ephemeral_node_inactivity_timeout": "10m", "node": {"ephemeral": {"inactivity_timeout": "20m"}}})
    assert cfg.node.ephemeral_inactivity_timeout == timedelta(minutes=20)
    assert "ignored" in config_warnings(caplog)[0]


def test_errors_name_the_alias_as_written():
    with pytest.raises(ConfigError, match=r"^ephemeral_node_inactivity_timeout: "):
        build({"ephemeral_node_inactivity_timeout": "soon"})
    with pytest.raises(ConfigError, match=r"^dns_config\.magic_dns: "):
        build({"dns_config": {"magic_dns": "yes"}})


@pytest.mark.parametrize("key", sorted(schema.REMOVED_KEYS))
def test_removed_keys_are_refused(key):
    with pytest.raises(ConfigError, match=rf"^{key}: .*removed") as info:
        build(nest(key, True))
    assert info.value.key == key


def test_randomize_client_port_is_accepted_with_a_warning(caplog):
    cfg = build({"randomize_client_port": True})
    assert cfg.extras["randomize_client_port"] is True
    assert "randomizeClientPort" in config_warnings(caplog)[0]


# --- type errors name the key ------------------------------------------------


@pytest.mark.parametrize("key", sorted(schema.MAIN_KEYS | schema.EXTRA_KEYS.keys()))
def test_wrong_type_names_the_key(key):
    bad = 42 if key in schema.MAPPING_LEAVES else {"not": "this"}
    with pytest.raises(ConfigError) as info:
        build(nest(key, bad))
    assert str(info.value).startswith(key), str(info.value)
    assert "expected" in str(info.value)


@pytest.mark.parametrize(
    "key",
    sorted(
        k
        for k, (parse, _) in schema.EXTRA_KEYS.items()
        if parse is schema.v.parse_bool
    )
    + [
        "database.sqlite.write_ahead_log",
        "dns.magic_dns",
        "dns.override_local_dns",
        "derp.server.enabled",
        "derp.server.verify_clients",
        "derp.server.automatically_add_embedded_derp_region",
        "derp.auto_update_enabled",
    ],
)
@pytest.mark.parametrize("text", ["yes", '"yes"', "on", "1", '"true"'])
def test_booleans_must_be_yaml_booleans(key, text):
    doc = config_mod.yamlfile.parse_yaml(yaml.safe_dump(nest(key, "PLACEHOLDER")).replace("PLACEHOLDER", text))
    with pytest.raises(ConfigError, match=rf"^{key}: expected true or false"):
        build(doc)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("server_url", "hs.example.com", "http:// or https:// URL"),
        ("server_url", "ftp://hs.example.com", "http:// or https:// URL"),
        ("server_url", "https://hs.example.com/headscale", "no path"),
        ("listen_addr", "8080", "host:port"),
        ("listen_addr", "::1:443", "host:port"),
        ("listen_addr", "0.0.0.0:99999", "host:port"),
        ("metrics_listen_addr", "localhost", "host:port"),
        ("prefixes.v4", "banana", "an IPv4 prefix such as 100.64.0.0/10"),
        ("prefixes.v4", "fd7a:115c:a1e0::/48", "an IPv4 prefix"),
        ("prefixes.v4", "10.0.0.0/8", "inside Tailscale's 100.64.0.0/10"),
        ("prefixes.v6", "100.64.0.0/10", "an IPv6 prefix"),
        ("prefixes.v6", "fd00::/8", "inside Tailscale's fd7a:115c:a1e0::/48"),
        ("prefixes.allocation", "roundrobin", "'sequential', 'random'"),
        ("database.type", "mysql", "'sqlite'"),
        ("database.sqlite.wal_autocheckpoint", -1, "at least 0"),
        ("unix_socket_permission", "rwx", "octal file mode"),
        ("unix_socket_permission", "0999", "octal file mode"),
        ("node.expiry", "forever", "a duration"),
        ("node.expiry", "-1h", "non-negative"),
        ("node.expiry", 30, "needs a unit"),
        ("node.ephemeral.inactivity_timeout", "65s", "longer than 65s"),
        ("node.ephemeral.inactivity_timeout", "0", "longer than 65s"),
        ("node.routes.ha.probe_interval", "1s", "at least 2s"),
        ("node.routes.ha.probe_timeout", "500ms", "at least 1s"),
        ("node.routes.ha.probe_timeout", "10s", "less than node.routes.ha.probe_interval"),
        ("dns.base_domain", "example.com.", "without a trailing dot"),
        ("dns.base_domain", "bad_domain!", "domain name"),
        ("dns.nameservers.global", ["dns.google"], "nameserver"),
        ("dns.nameservers.split", {"corp.example": ["nope"]}, "nameserver"),
        ("dns.search_domains", ["a..b"], "domain name"),
        ("dns.extra_records", [{"name": "a.example", "type": "A", "value": "2001:db8::1"}], "IPv4 address"),
        ("dns.extra_records", [{"name": "a.example", "type": "MX", "value": "x"}], "'A', 'AAAA'"),
        ("dns.extra_records", [{"name": "a.example", "type": "A", "vaule": "100.64.0.1"}], "unknown field"),
        ("dns.extra_records", {"name": "a"}, "list of records"),
        ("derp.server.region_id", 0, "at least 1"),
        ("derp.server.stun_listen_addr", "3478", "host:port"),
        ("derp.server.ipv4", "2001:db8::1", "IPv4 address"),
        ("derp.server.ipv6", "198.51.100.1", "IPv6 address"),
        ("derp.urls", ["controlplane.tailscale.com"], "http:// or https:// URL"),
        ("derp.update_frequency", "0", "at least 1s"),
        ("policy.mode", "db", "'file', 'database'"),
        ("log.level", "loud", "one of trace, debug"),
        ("log.format", "xml", "'text', 'json'"),
        ("tls_letsencrypt_challenge_type", "DNS-01", "'HTTP-01', 'TLS-ALPN-01'"),
        ("tls_letsencrypt_listen", "http", "host:port"),
        ("tls_letsencrypt_hostname", "https://hs.example.com", "domain name"),
        ("acme_url", "letsencrypt", "http:// or https:// URL"),
        ("trusted_proxies", ["10.0.0.1"], "IP prefix"),
        ("trusted_proxies", ["0.0.0.0/0"], "not all of 0.0.0.0/0"),
        ("oidc.pkce.method", "sha1", "'plain', 'S256'"),
        ("tuning.node_store_batch_size", 0, "at least 1"),
        ("tuning.node_store_batch_timeout", "0s", "greater than zero"),
        ("cli.timeout", "5", "needs a unit"),
    ],
)
def test_bad_values_name_the_key(key, value, expected):
    with pytest.raises(ConfigError) as info:
        build(nest(key, value))
    message = str(info.value)
    assert message.startswith(key), message
    assert expected in message, message


def test_error_message_shape():
    with pytest.raises(ConfigError) as info:
        build({"prefixes": {"v4": "banana"}})
    assert str(info.value) == "prefixes.v4: expected an IPv4 prefix such as 100.64.0.0/10, got 'banana'"
    assert info.value.key == "prefixes.v4"


def test_error_in_file_carries_the_file(tmp_path):
    path = write(tmp_path, "prefixes:\n  v4: banana\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV)
    assert info.value.source == path


def test_section_that_is_not_a_mapping():
    with pytest.raises(ConfigError, match=r"^dns: expected a mapping"):
        build({"dns": ["magic_dns"]})


def test_list_items_are_named_by_index():
    with pytest.raises(ConfigError, match=r"^dns\.nameservers\.global\[1\]: "):
        build({"dns": {"nameservers": {"global": ["1.1.1.1", 5]}}})


@pytest.mark.parametrize("text", ["[1, 2]\n", "just a string\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, text), env=ENV)


def test_yaml_syntax_error(tmp_path):
    path = write(tmp_path, "dns:\n  magic_dns: [true\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, env=ENV)


def test_duplicate_keys_are_refused(tmp_path):
    path = write(tmp_path, "dns:\n  base_domain: a.example\n  base_domain: b.example\n")
    with pytest.raises(ConfigError, match=r"line 3: key 'base_domain' appears twice"):
        load_config(path, env=ENV)


# --- cross-key rules (Headscale's validation) --------------------------------


@pytest.mark.parametrize(
    "server_url, base_domain",
    [
        ("https://hs.example.com", "hs.example.com"),
        ("https://hs.example.com", "example.com"),
        ("https://HS.Example.com:8443", "example.com"),
        ("https://a.b.example.com", "b.example.com"),
    ],
)
def test_base_domain_must_not_cover_server_url(server_url, base_domain):
    with pytest.raises(ConfigError, match=r"^dns\.base_domain: must not be server_url's host"):
        build({"server_url": server_url, "dns": {"base_domain": base_domain}})


@pytest.mark.parametrize(
    "server_url, base_domain",
    [
        ("https://hs.example.com", "ts.example.com"),
        ("https://hs.example.com", "ample.com"),
        ("https://example.com", "tail.example.com"),
        ("http://127.0.0.1:8080", "example.com"),
    ],
)
def test_base_domain_next_to_server_url_is_fine(server_url, base_domain):
    assert build({"server_url": server_url, "dns": {"base_domain": base_domain}}).dns.base_domain == base_domain


def test_magic_dns_needs_base_domain():
    with pytest.raises(ConfigError, match=r"^dns\.base_domain: must be set"):
        build({"dns": {"base_domain": ""}})
    cfg = build({"dns": {"base_domain": "", "magic_dns": False}})
    assert cfg.dns.base_domain == ""


def test_override_local_dns_needs_global_nameservers():
    with pytest.raises(ConfigError, match=r"^dns\.nameservers\.global: at least one"):
        build({"dns": {"nameservers": {"global": []}}})
    cfg = build({"dns": {"override_local_dns": False, "nameservers": {"global": []}}})
    assert cfg.dns.nameservers_global == ()


def test_extra_records_and_path_are_exclusive():
    rec = [{"name": "a.example", "type": "A", "value": "100.64.0.1"}]
    with pytest.raises(ConfigError, match=r"^dns\.extra_records_path: .*not both"):
        build({"dns": {"extra_records": rec, "extra_records_path": "/x.json"}})
    # an empty list next to a path is what Headscale's own example leads to
    assert build({"dns": {"extra_records": [], "extra_records_path": "/x.json"}}).dns.extra_records_path == Path("/x.json")


def test_tls_files_and_letsencrypt_are_exclusive():
    with pytest.raises(ConfigError, match=r"^tls_letsencrypt_hostname: .*not both"):
        build({"tls_letsencrypt_hostname": "hs.example.com", "tls_cert_path": "/c.pem", "tls_key_path": "/k.pem"})


def test_tls_cert_and_key_go_together():
    with pytest.raises(ConfigError, match=r"^tls_key_path: "):
        build({"tls_cert_path": "/c.pem"})
    with pytest.raises(ConfigError, match=r"^tls_cert_path: "):
        build({"tls_key_path": "/k.pem"})
    cfg = build({"tls_cert_path": "/c.pem", "tls_key_path": "/k.pem"})
    assert cfg.tls.uses_files and cfg.tls.enabled and not cfg.tls.uses_letsencrypt


def test_tls_alpn_off_443_only_warns(caplog):
    cfg = build({"tls_letsencrypt_hostname": "hs.example.com", "tls_letsencrypt_challenge_type": "TLS-ALPN-01"})
    assert cfg.tls.uses_letsencrypt
    assert any("TLS-ALPN-01" in w for w in config_warnings(caplog))
    caplog.clear()
    build({"listen_addr": "[::]:443", "tls_letsencrypt_hostname": "hs.example.com",
           "tls_letsencrypt_challenge_type": "TLS-ALPN-01"})
    assert config_warnings(caplog) == []


def test_prefixes():
    assert build({"prefixes": {"v4": ""}}).prefixes.v4 is None
    assert build({"prefixes": {"v6": None}}).prefixes.v6 is None
    sub = build({"prefixes": {"v4": "100.64.0.1/24", "v6": "fd7a:115c:a1e0:ab::/64"}}).prefixes
    assert sub.v4 == ipaddress.IPv4Network("100.64.0.0/24")
    assert sub.v6 == ipaddress.IPv6Network("fd7a:115c:a1e0:ab::/64")
    with pytest.raises(ConfigError, match=r"^prefixes: at least one"):
        build({"prefixes": {"v4": "", "v6": ""}})


def test_postgres_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"^database\.postgres\.name: needed with database\.type postgres"):
        build({"database": {"type": "postgres"}})
    assert build({"database": {"type": "sqlite3"}}).database.type == "sqlite"
    pg = build({"database": {"type": "postgres", "postgres": {"name": "ts"}}}).database.postgres
    assert (pg.host, pg.port, pg.user, pg.password, pg.ssl) == ("", 5432, "", "", "")
    assert (pg.max_open_conns, pg.max_idle_conns, pg.conn_max_idle_time, pg.lease_timeout) == (10, 10, 3600, 5)
    # Headscale's advice for a socket: its path in host, which libpq wants as a directory and port.
    pg = build({"database": {"type": "postgres", "postgres": {"name": "ts", "host": "/run/pg/.s.PGSQL.5433"}}})
    assert (pg.database.postgres.host, pg.database.postgres.port) == ("/run/pg", 5433)
    for ssl, mode in ((True, "require"), (False, "disable"), ("verify-full", "verify-full"), ("false", "disable")):
        assert build({"database": {"postgres": {"name": "x", "ssl": ssl}}}).database.postgres.ssl == mode
    with pytest.raises(ConfigError, match=r"^database\.postgres\.ssl: "):
        build({"database": {"postgres": {"name": "x", "ssl": "sometimes"}}})
    secret = tmp_path / "pg.pass"
    secret.write_text("from-a-file\n")
    pg = build({"database": {"type": "postgres", "postgres": {"name": "ts", "pass_path": str(secret)}}}).database.postgres
    assert pg.password == "from-a-file" and pg.password_path == secret
    with pytest.raises(ConfigError, match=r"^database\.postgres\.pass_path: set either"):
        build({"database": {"postgres": {"name": "ts", "pass": "a", "pass_path": str(secret)}}})
    with pytest.raises(ConfigError, match=r"^database\.postgres\.pass_path: cannot read"):
        build({"database": {"type": "postgres", "postgres": {"name": "ts", "pass_path": str(tmp_path / "nope")}}})
    with pytest.raises(ConfigError, match=r"^database\.postgres\.lease_timeout: "):
        build({"database": {"postgres": {"name": "ts", "lease_timeout": "1s"}}})
    with pytest.raises(ConfigError, match=r"^database\.postgres\.max_open_conns: "):
        build({"database": {"postgres": {"name": "ts", "max_open_conns": 1}}})
    # The password never shows in a redacted dump, and a dump loads back to the same settings.
    cfg = build({"database": {"type": "postgres", "postgres": {"name": "ts", "pass": "pw", "host": "db"}}})
    assert config_to_dict(cfg, redact=True)["database"]["postgres"]["pass"] == "<redacted>"
    from appliance.config import config_from_dict

    assert config_from_dict(config_to_dict(cfg)).database == cfg.database


def test_ephemeral_timeout_floor():
    assert build(nest("node.ephemeral.inactivity_timeout", "66s")).node.ephemeral_inactivity_timeout == timedelta(seconds=66)


def test_ha_probing_can_be_turned_off():
    cfg = build({"node": {"routes": {"ha": {"probe_interval": "0", "probe_timeout": "0"}}}})
    assert cfg.node.routes_ha_probe_interval == timedelta(0)


def test_embedded_derp_needs_stun():
    with pytest.raises(ConfigError, match=r"^derp\.server\.stun_listen_addr: must be set"):
        build({"derp": {"server": {"stun_listen_addr": ""}}})
    assert build({"derp": {"server": {"enabled": False, "stun_listen_addr": ""}}}).derp.stun_listen_addr is None


def test_embedded_derp_without_auto_region_needs_paths():
    with pytest.raises(ConfigError, match=r"^derp\.paths: "):
        build({"derp": {"server": {"automatically_add_embedded_derp_region": False}}})
    cfg = build({"derp": {"server": {"automatically_add_embedded_derp_region": False}, "paths": ["/etc/derp.yaml"]}})
    assert cfg.derp.paths == (Path("/etc/derp.yaml"),)


def test_relay_workers_default_to_one_per_core_and_are_bounded():
    assert build(None).derp.workers == 0  # resolved by appliance.relay.relay_workers
    assert build({"derp": {"server": {"workers": 3}}}).derp.workers == 3
    for bad in (-1, 65, "two", True):
        with pytest.raises(ConfigError, match=r"^derp\.server\.workers: "):
            build({"derp": {"server": {"workers": bad}}})


def test_no_derp_at_all_warns(caplog):
    build({"derp": {"server": {"enabled": False}}})
    assert any("no DERP servers" in w for w in config_warnings(caplog))


def test_oidc_secret_and_secret_path_are_exclusive():
    with pytest.raises(ConfigError, match=r"^oidc\.client_secret_path: .*not both"):
        build({"oidc": {"client_secret": "s", "client_secret_path": "/run/secret"}})


# --- value forms -------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0", timedelta(0)),
        (0, timedelta(0)),
        ("0s", timedelta(0)),
        ("65s", timedelta(seconds=65)),
        ("30m", timedelta(minutes=30)),
        ("1h30m", timedelta(minutes=90)),
        ("1.5h", timedelta(minutes=90)),
        ("90d", timedelta(days=90)),
        ("2w", timedelta(weeks=2)),
        ("1y", timedelta(days=365)),
        ("800ms", timedelta(milliseconds=800)),
        ("1m0.5s", timedelta(seconds=60.5)),
        ("250us", timedelta(microseconds=250)),
        ("250µs", timedelta(microseconds=250)),
    ],
)
def test_durations(text, expected):
    assert parse_duration(text, "k") == expected
    assert parse_duration(format_duration(expected), "k") == expected


@pytest.mark.parametrize("text", ["", "h", "1", "1x", "1h 30m", "30 m", "m30", "1h-30m", "-5s", True, 1.5])
def test_bad_durations(text):
    with pytest.raises(ConfigError, match="^k: expected"):
        parse_duration(text, "k")


def test_format_duration():
    assert format_duration(timedelta(0)) == "0s"
    assert format_duration(timedelta(days=180)) == "180d"
    assert format_duration(timedelta(hours=1, minutes=30)) == "1h30m"
    assert format_duration(timedelta(seconds=1, milliseconds=500)) == "1s500ms"


def test_node_expiry():
    assert build(nest("node.expiry", "180d")).node.expiry == timedelta(days=180)
    assert build(nest("node.expiry", 0)).node.expiry is None
    assert build(nest("node.expiry", "0s")).node.expiry is None


@pytest.mark.parametrize(
    "text, mode",
    [('"0770"', 0o770), ("0770", 0o770), ("770", 0o770), ('"0o750"', 0o750), ("0o700", 0o700), ('"0660"', 0o660)],
)
def test_socket_permission_forms(tmp_path, text, mode):
    path = write(tmp_path, f"unix_socket_permission: {text}\n")
    assert load_config(path, env=ENV).unix_socket_permission == mode


def test_yaml_12_reading(tmp_path):
    # "no" is a region code here, not false; a date-like string stays a string.
    path = write(tmp_path, "derp:\n  server:\n    region_code: no\n    region_name: 2024-01-01\n")
    cfg = load_config(path, env=ENV)
    assert cfg.derp.region_code == "no"
    assert cfg.derp.region_name == "2024-01-01"


def test_relative_paths_are_relative_to_the_file(tmp_path):
    sub = tmp_path / "etc"
    sub.mkdir()
    path = write(sub, "data_dir: state\npolicy:\n  path: acl.hujson\ntls_cert_path: ../certs/c.pem\n"
                      "tls_key_path: /abs/k.pem\nderp:\n  paths: [derp.yaml]\n")
    cfg = load_config(path, env=ENV)
    assert cfg.data_dir == sub / "state"
    assert cfg.noise_private_key_path == sub / "state" / "noise_private.key"
    assert cfg.database.sqlite_path == sub / "state" / "db.sqlite"
    assert cfg.policy.path == sub / "acl.hujson"
    assert cfg.tls.cert_path == sub / "../certs/c.pem"
    assert cfg.tls.key_path == Path("/abs/k.pem")
    assert cfg.derp.paths == (sub / "derp.yaml",)


def test_relative_config_path_gives_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "data_dir: state\n")
    cfg = load_config("config.yaml", env=ENV)
    assert cfg.data_dir == tmp_path / "state"
    assert cfg.data_dir.is_absolute()


def test_home_expands():
    cfg = build({"data_dir": "~/ts", "unix_socket": "~"})
    assert cfg.data_dir == Path("/home/tester/ts")
    assert cfg.unix_socket == Path("/home/tester")


def test_data_dir_moves_the_derived_paths():
    cfg = build({"data_dir": "/srv/ts"})
    assert cfg.noise_private_key_path == Path("/srv/ts/noise_private.key")
    assert cfg.derp.private_key_path == Path("/srv/ts/derp_server_private.key")
    assert cfg.database.sqlite_path == Path("/srv/ts/db.sqlite")
    assert cfg.unix_socket == Path("/srv/ts/trioscale.sock")
    assert cfg.tls.letsencrypt_cache_dir == Path("/srv/ts/cache")


def test_server_url_trailing_slash_is_dropped():
    assert build({"server_url": "https://hs.example.com/"}).server_url == "https://hs.example.com"


def test_metrics_listen_addr_empty_is_off():
    assert build({"metrics_listen_addr": ""}).metrics_listen_addr is None
    assert build({"metrics_listen_addr": "[::1]:9090"}).metrics_listen_addr == "[::1]:9090"


def test_log_levels():
    assert build({"log": {"level": "WARNING"}}).log.level == "warn"
    assert build({"log": {"level": "trace"}}).log.level_no < logging.DEBUG
    assert build({"log": {"level": "error", "format": "json"}}).log == config_mod.LogSettings("error", "json")


def test_nameserver_forms():
    cfg = build({"dns": {"nameservers": {"global": ["9.9.9.9", "2620:fe::fe", "https://dns.nextdns.io/abc", "10.0.0.1:5353"],
                                         "split": {"corp.example": "10.0.0.53", "lan.example": []}}}})
    assert cfg.dns.nameservers_global[2] == "https://dns.nextdns.io/abc"
    assert cfg.dns.nameservers_split == {"corp.example": ("10.0.0.53",), "lan.example": ()}


def test_trusted_proxies():
    cfg = build({"trusted_proxies": ["127.0.0.1/32", "fd00::/8"]})
    assert cfg.trusted_proxies == (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("fd00::/8"))


@pytest.mark.parametrize(
    "addr, expected",
    [
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("[::]:443", ("::", 443)),
        (":http", ("", 80)),
        (":https", ("", 443)),
        ("localhost:9", ("localhost", 9)),
    ],
)
def test_split_host_port(addr, expected):
    assert split_host_port(addr) == expected


@pytest.mark.parametrize("addr", ["8080", "::1:80", "[::1]", "[::1]80", "host:", "host:99999", "[zz]:80"])
def test_split_host_port_refuses(addr):
    with pytest.raises(ValueError):
        split_host_port(addr)


# --- the dump ----------------------------------------------------------------


def roundtrip(cfg: Config, tmp_path: Path) -> Config:
    path = write(tmp_path, config_to_yaml(cfg), "dumped.yaml")
    return load_config(path, env=ENV)


def test_roundtrip_defaults(tmp_path, caplog):
    cfg = load_config(None, env=ENV)
    assert without_path(roundtrip(cfg, tmp_path)) == cfg
    assert config_warnings(caplog) == []


def test_roundtrip_headscale_fixture(tmp_path, caplog):
    cfg = load_config(HEADSCALE_FIXTURE, env=ENV)
    caplog.clear()
    assert without_path(roundtrip(cfg, tmp_path)) == without_path(cfg)
    assert config_warnings(caplog) == []


def test_roundtrip_everything_changed(tmp_path):
    doc = {
        "server_url": "https://vpn.example.org",
        "listen_addr": "[::]:443",
        "metrics_listen_addr": "127.0.0.1:9091",
        "data_dir": "/srv/ts",
        "trusted_proxies": ["10.1.0.0/16"],
        "prefixes": {"v4": "", "v6": "fd7a:115c:a1e0:1::/64", "allocation": "random"},
        "node": {"expiry": "90d", "ephemeral": {"inactivity_timeout": "1h30m"},
                 "routes": {"ha": {"probe_interval": "0", "probe_timeout": "0"}}},
        "database": {"sqlite": {"write_ahead_log": False, "wal_autocheckpoint": 0}},
        "dns": {"magic_dns": False, "base_domain": "", "override_local_dns": False,
                "nameservers": {"global": [], "split": {"corp.example": ["10.0.0.53"]}},
                "search_domains": ["corp.example"], "extra_records_path": "/srv/ts/records.json"},
        "derp": {"server": {"enabled": False, "stun_listen_addr": "", "ipv4": "198.51.100.7"},
                 "urls": ["https://controlplane.tailscale.com/derpmap/default"], "update_frequency": "24h"},
        "policy": {"mode": "database"},
        "log": {"level": "debug", "format": "json"},
        "tls_letsencrypt_hostname": "vpn.example.org",
        "tls_letsencrypt_challenge_type": "TLS-ALPN-01",
        "acme_email": "ops@example.org",
        "unix_socket_permission": "0700",
        "oidc": {"issuer": "https://id.example.org", "client_secret": "hunter2", "scope": ["openid"]},
        "taildrop": {"enabled": False},
    }
    cfg = build(doc)
    again = roundtrip(cfg, tmp_path)
    assert without_path(again) == cfg
    assert again.extras["oidc.client_secret"] == "hunter2"


def test_dump_uses_headscale_layout():
    out = config_to_dict(build({}))
    assert out["dns"]["nameservers"]["global"][0] == "1.1.1.1"
    assert out["derp"]["server"]["region_id"] == 999
    assert out["node"]["ephemeral"]["inactivity_timeout"] == "30m"
    assert out["node"]["expiry"] == "0"
    assert out["unix_socket_permission"] == "0770"
    assert out["noise"]["private_key_path"].endswith("noise_private.key")
    assert out["taildrop"] == {"enabled": True}


def test_dump_can_redact_secrets():
    cfg = build({"oidc": {"client_secret": "hunter2"}, "database": {"postgres": {"pass": "pw"}}})
    text = config_to_yaml(cfg, redact=True)
    assert "hunter2" not in text and "pw\n" not in text
    assert config_to_dict(cfg, redact=True)["oidc"]["client_secret"] == "<redacted>"
    assert config_to_dict(cfg)["oidc"]["client_secret"] == "hunter2"


def test_permission_from_python_is_a_mode():
    assert build({"unix_socket_permission": 0o750}).unix_socket_permission == 0o750


def test_unknown_key_warning_names_the_file(tmp_path, caplog):
    path = write(tmp_path, "bogus: 1\n")
    load_config(path, env=ENV)
    assert config_warnings(caplog) == [f"{path}: unknown configuration keys, ignored: bogus"]


def test_dump_of_integers_from_yaml_is_plain_yaml(tmp_path):
    path = write(tmp_path, "database:\n  postgres:\n    name: x\n    max_open_conns: 7\n    port: 5432\n")
    text = config_to_yaml(load_config(path, env=ENV))
    assert "max_open_conns: 7" in text and "port: 5432" in text


def test_pre_023_database_keys_are_read_as_aliases(tmp_path):
    from appliance.config import config_from_dict

    cfg = config_from_dict({"db_type": "sqlite3", "db_path": str(tmp_path / "old.sqlite")})
    assert cfg.database.type == "sqlite" and cfg.database.sqlite_path == tmp_path / "old.sqlite"
