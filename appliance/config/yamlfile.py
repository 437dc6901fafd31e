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


# A config file is a few KiB. The bounds stop a file that would take the process down: one
# nested past the interpreter's stack, or a "billion laughs" of aliases whose expansion (by
# the constructor, or by any code that walks the result) never ends.
MAX_DEPTH = 100
MAX_NODES = 1_000_000  # nodes of the document with every alias expanded


class BoundedComposer:
    """Mixin for a PyYAML loader: refuses documents deeper than MAX_DEPTH, larger than
    MAX_NODES once aliases are expanded, or with an alias inside its own anchor (a cycle that
    every walk of the result would follow forever)."""

    def compose_document(self):
        self._depth = 0
        self._weights: dict[int, int] = {}
        try:
            return super().compose_document()
        finally:
            self._weights = {}

    def compose_node(self, parent, index):
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise ConfigError(f"line {self.peek_event().start_mark.line + 1}: nested more than "
                              f"{MAX_DEPTH} levels deep")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if id(node) not in self._weights:
            if isinstance(node, yaml.ScalarNode):
                weight = 1
            else:
                items = node.value if isinstance(node, yaml.SequenceNode) else [x for kv in node.value for x in kv]
                try:
                    weight = 1 + sum(self._weights[id(child)] for child in items)
                except KeyError:
                    raise ConfigError(f"line {node.start_mark.line + 1}: an alias refers to the "
                                      "anchor it is inside of") from None
            if weight > MAX_NODES:
                raise ConfigError(f"line {node.start_mark.line + 1}: more than {MAX_NODES} values "
                                  "once its aliases are expanded")
            self._weights[id(node)] = weight
        return node


class _Loader(BoundedComposer, yaml.SafeLoader):
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
    """Parse one YAML (or JSON) document; raise ConfigError on bad syntax and past the bounds
    (MAX_DEPTH, MAX_NODES)."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except ConfigError as exc:
        exc.source = source
        raise
    except yaml.YAMLError as exc:
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}not valid YAML: {exc}", source=source) from exc
