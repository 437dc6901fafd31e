"""The config keys of issue 12: audit.retention_days and webhooks (url, secret or secret_path,
events), each refused with the key named when wrong."""

from __future__ import annotations

import pytest
import yaml

from appliance.config import ConfigError, load_config
from appliance.config.dump import config_to_dict

ENV = {"HOME": "/nonexistent-home"}


def load(tmp_path, doc):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_config(path, env=ENV)


def test_webhooks_and_retention(tmp_path):
    secret = tmp_path / "hook.secret"
    secret.write_text("from-a-file-0123456789\n")
    cfg = load(tmp_path, {"audit": {"retention_days": 30}, "webhooks": [
        {"url": "https://hooks.example.com/a", "secret": "0123456789abcdef", "events": ["node.created", "route.approved"]},
        {"url": "http://127.0.0.1:9000/b", "secret_path": str(secret)},
    ]})
    assert cfg.audit_retention_days == 30
    a, b = cfg.webhooks
    assert (a.url, a.events, b.secret, b.events) == (
        "https://hooks.example.com/a", ("node.created", "route.approved"), "from-a-file-0123456789", ("*",))
    dumped = config_to_dict(cfg, redact=True)
    assert dumped["webhooks"][0]["secret"] == "<redacted>" and dumped["webhooks"][1]["secret_path"] == str(secret)
    assert load(tmp_path, {}).webhooks == () and load(tmp_path, {}).audit_retention_days == 90


@pytest.mark.parametrize("hooks, says", [
    ({"url": "ftp://x", "secret": "0123456789abcdef"}, "webhooks[0].url"),
    ({"url": "https://x.example", "secret": "short"}, "at least 16"),
    ({"url": "https://x.example"}, "exactly one of secret and secret_path"),
    ({"url": "https://x.example", "secret": "0123456789abcdef", "events": ["node.exploded"]}, "'node.exploded' is not an event"),
    ({"url": "https://x.example", "secret": "0123456789abcdef", "colour": "red"}, "unknown field 'colour'"),
    ({"url": "https://x.example", "secret_path": "/nonexistent/secret"}, "cannot read"),
])
def test_bad_webhooks_are_refused_with_the_key(tmp_path, hooks, says):
    with pytest.raises(ConfigError, match="webhooks") as e:
        load(tmp_path, {"webhooks": [hooks]})
    assert says in str(e.value)


def test_bad_retention_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="audit.retention_days"):
        load(tmp_path, {"audit": {"retention_days": 0}})
    with pytest.raises(ConfigError, match="webhooks"):
        load(tmp_path, {"webhooks": {"url": "https://x"}})
