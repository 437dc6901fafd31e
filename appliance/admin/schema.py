"""Typed definitions of the admin API's requests and responses.

One declaration gives three things: the check of what comes in (a JSON value or the text of a
path segment or query parameter, into a typed Python value, with limits), the JSON of what goes
out, and the JSON Schema of both for the OpenAPI document. Nothing else validates API input.

A body or response is a frozen dataclass whose fields carry a ``Spec``::

    @dataclass(frozen=True, slots=True)
    class RenameBody:
        new_name: str = fld(Str(max_len=63), doc="the new name")   # JSON "newName"

The JSON name is the field name in camelCase unless ``json=`` says otherwise. A field with a
default is optional in requests; responses always carry every field (Headscale's v1 API emits
unpopulated fields too).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from ..errors import Invalid

MAX_ID = (1 << 63) - 1

# The default of a request field whose absence means "leave as it is" (null then means
# something else: "back to the default"). Left out when dumped.
UNSET: Any = type("Unset", (), {"__repr__": lambda self: "UNSET", "__bool__": lambda self: False})()  # SQLite's INTEGER; Headscale's uint64 IDs beyond this do not exist here


class FieldError(Exception):
    """One or more input values break their definitions: ``problems`` is [(location, message)]."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{at}: {msg}" if at else msg for at, msg in problems))
        self.problems = problems


def _fail(at: str, message: str) -> FieldError:
    return FieldError([(at, message)])


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


class Spec:
    """How one value is read, written and described."""

    doc: str = ""

    def parse(self, value: Any, at: str) -> Any:
        raise NotImplementedError

    def parse_text(self, text: str, at: str) -> Any:
        """The value as written in a path segment or query parameter."""
        return self.parse(text, at)

    def dump(self, value: Any) -> Any:
        return value

    def schema(self, components: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


class Str(Spec):
    """A string of ``min_len``..``max_len`` characters, optionally matching ``pattern`` and
    passing ``check`` (a names.py rule: it raises Invalid with the message to show)."""

    def __init__(self, *, min_len: int = 0, max_len: int, pattern: str | None = None,
                 check: Callable[[str], Any] | None = None, fmt: str | None = None,
                 doc: str = "", example: str | None = None) -> None:
        self.min_len, self.max_len, self.check, self.fmt = min_len, max_len, check, fmt
        self.pattern = pattern
        # The pattern is ECMA-262 for the OpenAPI document; Python's "$" also matches before a
        # final newline, so it is read as "\Z" here (patterns use no literal "$").
        self._re = re.compile(pattern.replace("$", r"\Z")) if pattern else None
        self.doc, self.example = doc, example

    def parse(self, value: Any, at: str) -> str:
        if not isinstance(value, str):
            raise _fail(at, f"expected a string, got {_kind(value)}")
        if len(value) < self.min_len and self.check is None:  # a check says its own rule
            raise _fail(at, "must not be empty" if self.min_len == 1 else f"at least {self.min_len} characters")
        if len(value) > self.max_len:
            raise _fail(at, f"at most {self.max_len} characters")
        if "\x00" in value:
            raise _fail(at, "must not contain NUL characters")
        if self.check is not None:
            try:
                self.check(value)
            except Invalid as e:
                raise _fail(at, str(e)) from None
        elif self._re is not None and not self._re.search(value):
            raise _fail(at, f"does not match {self.pattern}")
        return value

    def schema(self, components: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string", "maxLength": self.max_len}
        if self.min_len:
            out["minLength"] = self.min_len
        if self.pattern:
            out["pattern"] = self.pattern
        if self.fmt:
            out["format"] = self.fmt
        if self.example is not None:
            out["examples"] = [self.example]
        return _described(out, self.doc)


class Int(Spec):
    def __init__(self, *, minimum: int, maximum: int, doc: str = "") -> None:
        self.minimum, self.maximum, self.doc = minimum, maximum, doc

    def parse(self, value: Any, at: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(at, f"expected an integer, got {_kind(value)}")
        if not self.minimum <= value <= self.maximum:
            raise _fail(at, f"must be between {self.minimum} and {self.maximum}")
        return value

    def parse_text(self, text: str, at: str) -> int:
        if not re.fullmatch(r"-?[0-9]{1,19}", text):
            raise _fail(at, "expected an integer")
        return self.parse(int(text), at)

    def schema(self, components: dict[str, Any]) -> dict[str, Any]:
        return _described({"type": "integer", "minimum": self.minimum, "maximum": self.maximum}, self.doc)


class ID(Spec):
    """A record ID: a decimal string, as Headscale writes its uint64 IDs (a JSON number is
    accepted in requests too, as protojson does)."""

    def __init__(self, doc: str = "") -> None:
        self.doc = doc

    def parse(self, value: Any, at: str) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise _fail(at, f"expected an ID (a string of digits), got {_kind(value)}")
        return self.parse_text(value, at)

    def parse_text(self, text: str, at: str) -> int:
        if not re.fullmatch(r"[0-9]{1,19}", text) or int(text) > MAX_ID:
            raise _fail(at, f"expected an ID (digits), got {_short(text)}")
        return int(text)

    def dump(self, value: int) -> str:
        return str(value)

    def schema(self, components: dict[str, Any]) -> dict[str, Any]:
        return _described({"type": "string", "pattern": "^[0-9]{1,19}$", "examples": ["1"]}, self.doc)


class Bool(Spec):
    def __init__(self, doc: str = "") -> None:
        self.doc = doc

    def parse(self, value: Any, at: str) -> bool:
        if not isinstance(value, bool):
            raise _fail(at, f"expected true or false, got {_kind(value)}")
        return value

    def parse_text(self, text: str, at: str) -> bool:
        if text in ("true", "1"):
            return True
        if text in ("false", "0"):
            return False
        raise _fail(at, "expected true or false")

    def schema(self, components: dict[str, Any]) -> dict[str, Any]:
        return _described({"type": "boolean"}, self.doc)


_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]{1,9})?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


class Time(Spec):
    """An RFC 3339 time, such as 2030-01-02T03:04:05Z; kept as an aware UTC datetime."""

    def __init__(self, doc: str = "") -> None:
        self.doc = doc

    def parse(self, value: Any, at: str) -> datetime:
        if not isinstance(value, str):
            raise _fail(at, f"expected an RFC 3339 time such as 2030-01-02T03:04:05Z, got {_kind(value)}")
        m = _RFC3339.fullmatch(value)
        if m is None:
            raise _fail(at, f"expected an RFC 3339 time such as 2030-01-02T03:04:05Z, got {_short(value)}")
        y, mo, d, h, mi, s, frac, zone = m.groups()
        try:
            micro = int((frac or ".0")[1:7].ljust(6, "0"))
            t = datetime(int(y), int(mo), int(d), int(h), int(mi), min(int(s), 59), micro, tzinfo=timezone.utc)
            if zone not in ("Z", "z"):
                sign = 1 if zone[0] == "+" else -1
                zh, zm = int(zone[1:3]), int(zone[4:6])
                if zh > 23 or zm > 59:
                    raise ValueError("bad offset")
                t = t - sign * timedelta(hours=zh, minutes=zm)
            if not 1970 <= t.year <= 9999:
                raise ValueError("out of range")
        except (ValueError, OverflowError):
            raise _fail(at, f"{_short(value)} is not a time between 1970 and 9999") from None
        return t

    def dump(self, value: datetime | None) -> str | None:
        if value is None:
            return None
        value = value.astimezone(timezone.utc)
        text = value.strftime("%Y-%m-%dT%H:%M:%S")
        if value.microsecond:
            text += f".{value.microsecond:06d}".rstrip("0")
        return text + "Z"

    def schema(self, components: dict[str, Any]) -> dict[str, Any]:
        return _described({"type": "string", "format": "date-time"}, self.doc)


class Prefix(Spec):
    """An IP prefix written with its length (10.0.0.0/24, 0.0.0.0/0, fd00::/64); kept in
    canonical form (host bits cleared)."""

    def __init__(self, doc: str = "") -> None:
        self.doc = doc

    def parse(self, value: Any, at: str) -> str:
        # A number is never a prefix: ip_network(1) would be 0.0.0.1/32.
        if not isinstance(value, str):
            raise _fail(at, f"expected a prefix such as 10.0.0.0/24, got {_kind(value)}")
        if len(value) > 64 or "/" not in value or "%" in value:
            raise _fail(at, f"expected a prefix such as 10.0.0.0/24, got {_short(value)}")
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise _fail(at, f"{_short(value)} is not an IP prefix (such as 10.0.0.0/24)") from None

    def schema(self, components: dict[str, Any]) -> dict[str, Any]:
        return _described({"type": "string", "maxLength": 64, "pattern": "^[0-9a-fA-F:.]+/[0-9]{1,3}$",
                           "examples": ["10.0.0.0/24"]}, self.doc)


class Address(Spec):
    """An IP address, or with ``endpoint`` also ``ip:port`` / ``[ip]:port`` or an https URL
    (DNS-over-HTTPS): what a nameserver entry may be."""

    def __init__(self, *, nameserver: bool = False, doc: str = "") -> None:
        self.nameserver, self.doc = nameserver, doc

    def parse(self, value: Any, at: str) -> str:
        if not isinstance(value, str):
            raise _fail(at, f"expected an IP address, got {_kind(value)}")
        if len(value) > 256:
            raise _fail(at, "at most 256 characters")
        if self.nameserver and re.fullmatch(r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[\x21-\x7e]*)?", value):
            return value
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise _fail(at, f"{_short(value)} is not an IP address"
                        + (" or an https:// DoH URL" if self.nameserver else "")) from None

    def schema(self, components: dict[str, Any]) -> dict[str, Any]:
        return _described({"type": "string", "maxLength": 256}, self.doc)


class Enum(Spec):
    def __init__(self, *values: str, doc: str = "") -> None:
        self.values, self.doc = values, doc

    def parse(self, value: Any, at: str) -> str:
        if value not in self.values or not isinstance(value, str):
            raise _fail(at, "expected one of " + ", ".join(self.values))
        return value

    def schema(self, components: dict[str, Any]) -> dict[str, Any]:
        return _described({"type": "string", "enum": list(self.values)}, self.doc)


class List(Spec):
    def __init__(self, item: Spec, *, max_items: int, doc: str = "") -> None:
        self.item, self.max_items, self.doc = item, max_items, doc

    def parse(self, value: Any, at: str) -> tuple:
        if not isinstance(value, list):
            raise _fail(at, f"expected a list, got {_kind(value)}")
        if len(value) > self.max_items:
            raise _fail(at, f"at most {self.max_items} items")
        out, problems = [], []
        for i, v in enumerate(value):
            try:
                out.append(self.item.parse(v, f"{at}[{i}]"))
            except FieldError as e:
                problems += e.problems
        if problems:
            raise FieldError(problems)
        return tuple(out)

    def parse_text(self, text: str, at: str) -> tuple:
        """Comma-separated in a query parameter."""
        return self.parse([p for p in text.split(",") if p], at)

    def dump(self, value: Any) -> list:
        return [self.item.dump(v) for v in value]

    def schema(self, components: dict[str, Any]) -> dict[str, Any]:
        return _described({"type": "array", "items": self.item.schema(components), "maxItems": self.max_items},
                          self.doc)


class Map(Spec):
    """An object with free keys (checked by ``key``) and values of one kind."""

    def __init__(self, key: Str, value: Spec, *, max_items: int, doc: str = "") -> None:
        self.key, self.value, self.max_items, self.doc = key, value, max_items, doc

    def parse(self, value: Any, at: str) -> dict:
        if not isinstance(value, dict):
            raise _fail(at, f"expected an object, got {_kind(value)}")
        if len(value) > self.max_items:
            raise _fail(at, f"at most {self.max_items} entries")
        out, problems = {}, []
        for k, v in value.items():
            try:
                out[self.key.parse(k, f"{at}.{k}")] = self.value.parse(v, f"{at}.{k}")
            except FieldError as e:
                problems += e.problems
        if problems:
            raise FieldError(problems)
        return out

    def dump(self, value: Any) -> dict:
        return {k: self.value.dump(v) for k, v in value.items()}

    def schema(self, components: dict[str, Any]) -> dict[str, Any]:
        key = self.key.schema(components)
        return _described({"type": "object", "maxProperties": self.max_items, "propertyNames": key,
                           "additionalProperties": self.value.schema(components)}, self.doc)


class Nullable(Spec):
    def __init__(self, inner: Spec, doc: str = "") -> None:
        self.inner, self.doc = inner, doc or inner.doc

    def parse(self, value: Any, at: str) -> Any:
        return None if value is None else self.inner.parse(value, at)

    def dump(self, value: Any) -> Any:
        return None if value is None else self.inner.dump(value)

    def schema(self, components: dict[str, Any]) -> dict[str, Any]:
        inner = self.inner.schema(components)
        if "$ref" in inner:
            return _described({"anyOf": [inner, {"type": "null"}]}, self.doc)
        inner = dict(inner)
        inner["type"] = [inner["type"], "null"]
        inner.pop("description", None)
        return _described(inner, self.doc)


class Free(Spec):
    """Any JSON (for documents with their own format, such as the server settings), bounded in
    depth; passed through as is."""

    MAX_DEPTH = 16

    def __init__(self, doc: str = "") -> None:
        self.doc = doc

    def parse(self, value: Any, at: str) -> Any:
        if not isinstance(value, dict):
            raise _fail(at, f"expected an object, got {_kind(value)}")
        if _depth(value) > self.MAX_DEPTH:
            raise _fail(at, f"nested deeper than {self.MAX_DEPTH} levels")
        return value

    def schema(self, components: dict[str, Any]) -> dict[str, Any]:
        return _described({"type": "object"}, self.doc)


def _depth(value: Any) -> int:
    stack, deepest = [(value, 1)], 0
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > Free.MAX_DEPTH:
            break
        if isinstance(v, dict):
            stack += [(x, d + 1) for x in v.values()]
        elif isinstance(v, list):
            stack += [(x, d + 1) for x in v]
    return deepest


class Object(Spec):
    """A dataclass of fields declared with ``fld``; the schema is a named component."""

    def __init__(self, cls: type, doc: str = "") -> None:
        self.cls, self.doc = cls, doc or (cls.__doc__ or "").strip()
        self.fields = [(f.name, f.metadata["json"], f.metadata["spec"], f) for f in dataclasses.fields(cls)]

    def parse(self, value: Any, at: str) -> Any:
        if not isinstance(value, dict):
            raise _fail(at, f"expected an object, got {_kind(value)}")
        kwargs, problems = {}, []
        for name, key, spec, f in self.fields:
            where = f"{at}.{key}" if at else key
            if key in value:
                try:
                    kwargs[name] = spec.parse(value[key], where)
                except FieldError as e:
                    problems += e.problems
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append((where, "is required"))
        if problems:
            raise FieldError(problems)
        return self.cls(**kwargs)

    def dump(self, value: Any) -> dict:
        return {key: spec.dump(v) for name, key, spec, _ in self.fields
                if (v := getattr(value, name)) is not UNSET}

    def schema(self, components: dict[str, Any]) -> dict[str, Any]:
        name = self.cls.__name__
        if name not in components:
            components[name] = {}  # placeholder: a type may refer to itself
            props, required = {}, []
            for _, key, spec, f in self.fields:
                props[key] = spec.schema(components)
                if f.metadata.get("doc"):
                    props[key] = _described(dict(props[key]), f.metadata["doc"])
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    required.append(key)
            components[name] = _described({"type": "object", "properties": props, "required": required}, self.doc)
        return {"$ref": f"#/components/schemas/{name}"}


def fld(spec: Spec, *, json: str | None = None, doc: str = "", default: Any = dataclasses.MISSING,
        secret: bool = False) -> Any:
    """A dataclass field with its Spec; ``json`` overrides the camelCase JSON name; a ``secret``
    is masked wherever a request is recorded (the audit log)."""
    meta = {"spec": spec, "json_override": json, "doc": doc, "secret": secret}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple or None as a default")
    return dataclasses.field(default=default, metadata=meta)


def api_type(cls: type) -> type:
    """Class decorator: a frozen dataclass whose fields' JSON names are set (camelCase)."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        meta["json"] = meta.get("json_override") or camel(f.name)
        f.metadata = type(f.metadata)(meta)
    cls.spec = Object(cls)
    return cls


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _described(schema: dict[str, Any], doc: str) -> dict[str, Any]:
    if doc:
        schema["description"] = doc
    return schema


def _short(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")
