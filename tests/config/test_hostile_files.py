"""Config and DERP map files built to take the process down (issue 10): nesting past the stack,
alias bombs, bytes that are not UTF-8, fields of the wrong type. Each is one ConfigError naming
the file and the line, never another exception."""

from __future__ import annotations

import pytest

from appliance.config import ConfigError, load_config
from appliance.config.yamlfile import MAX_DEPTH, parse_yaml
from appliance.relay import MAX_DERP_MAP_BYTES, load_derp_file, parse_derp_map

BOMB = "a: &a [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
HOSTILE_YAML = {
    "deep": "server_url: " + "[" * 50_000 + "]" * 50_000,
    "alias-bomb": BOMB,
    "recursive-alias": "a: &a [*a]\n",
    "recursive-mapping": "a: &a {b: *a}\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_YAML))
def test_hostile_yaml_is_one_config_error(name, tmp_path):
    with pytest.raises(ConfigError):
        parse_yaml(HOSTILE_YAML[name])
    path = tmp_path / "config.yaml"
    path.write_text(HOSTILE_YAML[name])
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    assert ei.value.source == path


def test_not_utf8_config_is_one_config_error(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"server_url: http://\xff\xfe/\n")
    with pytest.raises(ConfigError):
        load_config(path)


def test_ordinary_nesting_and_aliases_still_work():
    doc = parse_yaml("base: &b {x: 1}\nuse: *b\ndeep: " + "[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2))
    assert doc["use"] == {"x": 1}


GOOD_MAP = b"Regions:\n  1:\n    RegionID: 1\n    RegionCode: r\n    Nodes: [{Name: 1a, RegionID: 1, HostName: d.example, DERPPort: 443}]\n"


@pytest.mark.parametrize("data,words", [
    (b"Regions: " + b"[" * 50_000, "nested"),
    (BOMB.encode(), "expanded"),
    (b"Regions:\n  1: \xff\xfe\xfd\n", "not JSON or YAML"),
    (b"Regions: {null: {}}", "not a number"),
    (b"Regions: {1: {Nodes: [{DERPPort: '443'}]}}", "DERPPort is str"),
    (b"Regions: {1: {Nodes: [7]}}", "not a mapping"),
    (b"Regions: {1: {RegionID: true}}", "RegionID is bool"),
    (b'{"Regions": {"1": {"Latitude": "north"}}}', "Latitude is str"),
])
def test_hostile_derp_maps_are_refused(tmp_path, data, words):
    with pytest.raises(ConfigError) as ei:
        parse_derp_map(data, "derp.paths: x")
    assert words in str(ei.value)


def test_derp_map_file_size_is_bounded(tmp_path):
    path = tmp_path / "derp.yaml"
    path.write_bytes(GOOD_MAP + b"#" * MAX_DERP_MAP_BYTES)
    with pytest.raises(ConfigError) as ei:
        load_derp_file(path)
    assert "bytes" in str(ei.value)
    path.write_bytes(GOOD_MAP)
    assert load_derp_file(path)["1"]["Nodes"][0]["HostName"] == "d.example"
