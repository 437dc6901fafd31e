"""Reading YAML the way Headscale's Go YAML library reads it.

PyYAML implements YAML 1.1, where ``yes``, ``no``, ``on`` and ``off`` are
booleans, ``0770`` is an octal number and ``2024-01-01`` a date. Headscale
(Go, YAML 1.2 core schema) reads all of those as strings or decimal numbers,
so a config file that works there must mean the same here: only
``true``/``false`` are booleans, and a bare ``region_code: no`` stays the
string ``"no"``.
"""

from __future__ import annotations

import re

import yaml

from .errors import ConfigError


class SourceInt(int):
    """An int that remembers how it was written (``0770`` vs ``504``)."""

    source: str

    def __new__(cls, value: int, source: str):
        obj = super().__new__(cls, value)
        obj.source = source
        return obj


_DROPPED_TAGS = {
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:timestamp",
}


class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> SourceInt:
    text = loader.construct_scalar(node)
    body = text.lstrip("+-")
    sign = -1 if text.startswith("-") else 1
    if body.startswith("0o"):
        value = int(body[2:], 8)
    elif body.startswith("0x"):
        value = int(body[2:], 16)
    else:
        value = int(body, 10)  # YAML 1.2: a leading zero does not mean octal
    return SourceInt(sign * value, text)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict:
    # Go's YAML library refuses a key written twice; PyYAML would silently keep
    # the last one, hiding a typo'd copy-paste.
    loader.flatten_mapping(node)
    seen: dict[object, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # unhashable keys are reported by the constructor below
        if duplicate:
            line = key_node.start_mark.line + 1
            raise ConfigError(f"line {line}: key {key!r} appears twice in the same mapping")
        seen[key] = key_node
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def parse_yaml(text: str, source: object = None) -> object:
    """Parse one YAML (or JSON) document; raise ConfigError on bad syntax."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except ConfigError as exc:
        exc.source = source
        raise
    except yaml.YAMLError as exc:
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}not valid YAML: {exc}", source=source) from exc
