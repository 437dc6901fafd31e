"""Hypothesis strategies for client bodies, generated from the wire dataclasses' own kinds
(appliance.control.codec), then mutated the ways a hostile or broken client would.

``valid(cls)`` draws JSON objects every field of which passes its kind; ``mutated`` then
replaces, removes or adds values anywhere in the tree (wrong types, huge sizes, deep nesting,
NaN-ish numbers, control characters, lone surrogates); ``body_bytes`` serialises it and may
damage the bytes (truncation, invalid UTF-8, a flipped byte).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import math
from datetime import timezone
from functools import cache

from hypothesis import strategies as st

from appliance.control import codec
from appliance.control.hostinfo import HostinfoKind, Hostinfo


def _rfc3339(dt) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + "Z"


@cache  # strategies are immutable; building them per draw costs more than drawing
def kind_strategy(kind: codec.Kind) -> st.SearchStrategy:
    """Values that ``kind.parse`` accepts."""
    if isinstance(kind, HostinfoKind):
        return valid(Hostinfo)
    if isinstance(kind, codec.Str):
        if kind.pattern:
            return st.from_regex(kind.pattern, fullmatch=True).filter(lambda s: len(s) <= kind.max_len)
        return st.text(max_size=min(kind.max_len, 40))
    if isinstance(kind, codec.OptBool):
        return st.booleans()
    if isinstance(kind, codec.Bool):
        return st.booleans()
    if isinstance(kind, codec.Int):
        return st.one_of(st.integers(max(kind.lo, -5), min(kind.hi, 1000)), st.integers(kind.lo, kind.hi))
    if isinstance(kind, codec.Float):
        lo = kind.lo if math.isfinite(kind.lo) else -1e9
        hi = kind.hi if math.isfinite(kind.hi) else 1e9
        return st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    if isinstance(kind, codec.ListOf):
        return st.lists(kind_strategy(kind.item), max_size=min(kind.max_items, 4))
    if isinstance(kind, codec.MapOf):
        return st.dictionaries(kind_strategy(kind.key), kind_strategy(kind.value), max_size=min(kind.max_items, 3))
    if isinstance(kind, codec.Obj):
        return valid(kind.cls)
    if isinstance(kind, codec.KeyText):
        zero = st.just(f"{kind.prefix}:" + "00" * kind.nbytes)
        return st.one_of(st.binary(min_size=kind.nbytes, max_size=kind.nbytes).map(lambda b: f"{kind.prefix}:{b.hex()}"), zero)
    if isinstance(kind, codec.Prefix):
        v4 = st.tuples(st.ip_addresses(v=4), st.integers(0, 32)).map(lambda t: f"{t[0]}/{t[1]}")
        v6 = st.tuples(st.ip_addresses(v=6), st.integers(0, 128)).map(lambda t: f"{t[0]}/{t[1]}")
        return st.one_of(v4, v6, st.sampled_from(["0.0.0.0/0", "::/0", "10.50.0.0/24", "10.50.7.0/24"]))
    if isinstance(kind, codec.AddrPort):
        v4 = st.tuples(st.ip_addresses(v=4), st.integers(0, 65535)).map(lambda t: f"{t[0]}:{t[1]}")
        v6 = st.tuples(st.ip_addresses(v=6), st.integers(0, 65535)).map(lambda t: f"[{t[0]}]:{t[1]}")
        return st.one_of(v4, v6)
    if isinstance(kind, codec.Time):
        return st.one_of(st.just(codec.ZERO_TIME), st.datetimes(timezones=st.just(timezone.utc)).map(_rfc3339))
    if isinstance(kind, codec.Bytes):
        return st.binary(max_size=16).map(lambda b: base64.b64encode(b).decode())
    if isinstance(kind, codec.Scalar):
        return st.one_of(st.none(), st.booleans(), st.text(max_size=20), st.floats(allow_nan=False, allow_infinity=False))
    raise TypeError(f"no strategy for {kind!r}")


@cache
def valid(cls: type) -> st.SearchStrategy[dict]:
    """JSON objects for ``cls`` (any subset of its fields), each value valid for its kind."""
    fields = [(f.metadata["json"], f.metadata["kind"]) for f in dataclasses.fields(cls)
              if "kind" in f.metadata]
    return st.fixed_dictionaries({}, optional={name: kind_strategy(kind) for name, kind in fields})


# Values no field of the protocol accepts in most places: wrong JSON types, extremes, sizes.
HOSTILE = st.one_of(
    st.sampled_from([
        None, True, False, 0, -1, 1.5, -0.0, 2**31, 2**63, 2**64, -(2**63) - 1, 10**30, 1e308,
        "", "x", "garbage", "nodekey:", "0.0.0.0/0", "10.0.0.0/33", "1.2.3.4:99999", "ZZZ",
        "0001-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59", [], {}, [1], {"a": 1}, [None], [[[]]],
        "\x1b[2J\x07", "\ud800", "\u202e", "é" * 300, "tag:" + "a" * 300,
    ]),
    st.integers(),
    st.floats(),  # NaN and infinities are serialised as NaN/Infinity, which is not JSON
    st.text(max_size=30),
    st.text(min_size=300, max_size=2000),
    st.builds(lambda n, v: [v] * n, st.integers(1000, 5000), st.sampled_from([0, "10.0.0.0/8", "a"])),
    st.integers(60, 200).map(lambda d: json.loads("[" * d + "]" * d)),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=4),
)


def _paths(doc, prefix=()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:8]):
            out += _paths(v, prefix + (i,))
    return out


def _set(doc, path, value):
    if not path:
        return value
    cur = doc
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return doc


@st.composite
def mutated(draw, cls: type) -> object:
    """A valid body for ``cls`` with up to four hostile changes anywhere in its tree."""
    doc = draw(valid(cls))
    for _ in range(draw(st.integers(0, 4))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        target = doc
        for k in path:
            target = target[k]
        # Copies: sampled_from hands out the same list and dict objects every time, and a
        # later "add" must not change them for the examples after this one.
        if op == "replace":
            doc = _set(doc, path, copy.deepcopy(draw(HOSTILE)))
        elif op == "delete" and path:
            parent = doc
            for k in path[:-1]:
                parent = parent[k]
            del parent[path[-1]]
        elif op == "add" and isinstance(target, dict):
            target[draw(st.text(max_size=12))] = copy.deepcopy(draw(HOSTILE))
        elif op == "add" and isinstance(target, list):
            target.append(copy.deepcopy(draw(HOSTILE)))
    return doc


@st.composite
def body_bytes(draw, doc) -> bytes:
    """``doc`` as JSON (NaN and Infinity as Python writes them), sometimes damaged."""
    data = json.dumps(doc).encode()
    damage = draw(st.sampled_from(["none", "none", "none", "truncate", "utf8", "flip"]))
    if damage == "truncate" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "utf8":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"])) + data[at:]
    elif damage == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1:]
    return data
