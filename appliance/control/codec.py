"""JSON bodies from clients checked once, at the boundary, into typed values with limits.

A wire dataclass names each field's JSON key and its *kind* once:
``hostname: str = wire("Hostname", Str(MAX_TEXT))``. ``from_json`` checks every known field
against its kind (type, size, count, range, syntax) and raises WireError naming the field, so
the rest of the server only ever sees typed, valid values; unknown keys are ignored, as Go's
decoder does. ``to_json`` writes a dataclass back, omitting zero values as Go's ``omitzero``
does for client structures (and ``None`` for messages of our own).

The limits are those of Tailscale's Go types where a peer decodes what we echo (a uint16 port,
an int64, a finite float64, valid UTF-8): a value a Go client cannot decode would break the
netmap of every peer it is sent to, not only of the node that sent it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import json
import math
import re
from dataclasses import field
from datetime import datetime, timedelta, timezone
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")

ZERO_TIME = "0001-01-01T00:00:00Z"
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1
# Go's json decoder goes 10,000 levels deep; Python's raises RecursionError near 1,000. No
# message of the protocol nests more than 4 levels; this only keeps the error readable.
MAX_DEPTH = 64
# C0, DEL and C1 controls: echoed in Hostinfo they reach other users' terminals through
# `tailscale status` (escape sequences), and nothing a real client sends contains them.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class WireError(ValueError):
    """A message from the client does not have the shape the protocol gives it. The text
    names the field (``MapRequest.Hostinfo.RoutableIPs[0]``) and is safe to send back."""


def json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _show(v: str, n: int = 40) -> str:
    """A client value quoted for a message: bounded, control characters escaped by repr."""
    return repr(v[:n] + ("…" if len(v) > n else ""))


def _no_constant(name: str) -> Any:
    # json.loads accepts NaN and Infinity; they are not JSON and Go refuses them.
    raise WireError(f"{name} is not a JSON value")


def _depth(v: Any, limit: int) -> int:
    """Nesting depth of a decoded value, giving up beyond ``limit``."""
    stack = [(v, 1)]
    deepest = 0
    while stack:
        cur, d = stack.pop()
        if d > limit:
            return d
        deepest = max(deepest, d)
        if isinstance(cur, dict):
            stack.extend((x, d + 1) for x in cur.values())
        elif isinstance(cur, list):
            stack.extend((x, d + 1) for x in cur)
    return deepest


def decode_body(body: bytes | bytearray, what: str) -> dict:
    """A request body → a JSON object. Raises WireError for anything a Go client never sends:
    an empty body, invalid UTF-8, NaN/Infinity, integers beyond Python's digit limit, nesting
    beyond MAX_DEPTH, or a top level that is not an object."""
    if not body:
        raise WireError(f"{what}: empty body (expected a JSON object)")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as e:
        raise WireError(f"{what}: body is not valid UTF-8 (byte {e.start})") from None
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except WireError as e:
        raise WireError(f"{what}: {e}") from None
    except json.JSONDecodeError as e:
        raise WireError(f"{what}: body is not JSON ({e.msg} at character {e.pos})") from None
    except RecursionError:
        raise WireError(f"{what}: body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:  # an integer with more digits than int() accepts
        raise WireError(f"{what}: body is not usable JSON ({str(e)[:80]})") from None
    if not isinstance(doc, dict):
        raise WireError(f"{what}: expected a JSON object, got {json_type(doc)}")
    if _depth(doc, MAX_DEPTH) > MAX_DEPTH:
        raise WireError(f"{what}: body nests deeper than {MAX_DEPTH} levels")
    return doc


# --- kinds: one per JSON shape; parse() checks, is_zero() decides what to omit ------------


class Kind:
    zero: Any = None

    def parse(self, v: Any, where: str) -> Any:
        raise NotImplementedError

    def parse_lenient(self, v: Any, where: str, notes: list[str]) -> Any:
        """For data we stored ourselves: drop what fails instead of refusing everything."""
        return self.parse(v, where)

    def is_zero(self, v: Any) -> bool:
        return v is None or v == self.zero


@dataclasses.dataclass(frozen=True)
class Str(Kind):
    max_len: int
    pattern: str | None = None  # a full-match regular expression, when the syntax is fixed
    what: str = ""  # what the pattern describes, for the message
    zero: Any = ""

    def parse(self, v: Any, where: str) -> str:
        if not isinstance(v, str):
            raise WireError(f"{where}: expected a string, got {json_type(v)}")
        if len(v) > self.max_len:
            raise WireError(f"{where}: longer than {self.max_len} characters")
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise WireError(f"{where}: not valid Unicode (an unpaired surrogate)") from None
        v = _CONTROL.sub("", v)
        if self.pattern is not None and v and not re.fullmatch(self.pattern, v):
            raise WireError(f"{where}: {_show(v)} is not {self.what or 'in the expected form'}")
        return v


@dataclasses.dataclass(frozen=True)
class Bool(Kind):
    zero: Any = False

    def parse(self, v: Any, where: str) -> bool:
        if not isinstance(v, bool):
            raise WireError(f"{where}: expected true or false, got {json_type(v)}")
        return v


@dataclasses.dataclass(frozen=True)
class OptBool(Kind):
    """Go's opt.Bool: true, false or null (unset); a string breaks a Go peer's decoder."""

    def parse(self, v: Any, where: str) -> bool:
        return Bool().parse(v, where)

    def is_zero(self, v: Any) -> bool:
        return v is None


@dataclasses.dataclass(frozen=True)
class Int(Kind):
    lo: int = INT64_MIN
    hi: int = INT64_MAX
    zero: Any = 0

    def parse(self, v: Any, where: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise WireError(f"{where}: expected an integer, got {json_type(v)}")
        if not self.lo <= v <= self.hi:
            raise WireError(f"{where}: {str(v)[:24]} is outside {self.lo}..{self.hi}")
        return v


@dataclasses.dataclass(frozen=True)
class Float(Kind):
    lo: float = -math.inf
    hi: float = math.inf
    zero: Any = 0

    def parse(self, v: Any, where: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise WireError(f"{where}: expected a number, got {json_type(v)}")
        try:
            f = float(v)
        except OverflowError:
            raise WireError(f"{where}: number out of range") from None
        if not math.isfinite(f) or not self.lo <= f <= self.hi:
            raise WireError(f"{where}: number out of range {self.lo:g}..{self.hi:g}")
        return f


@dataclasses.dataclass(frozen=True)
class Scalar(Kind):
    """A string, a finite number, a boolean or null (Go's ``any`` limited to those)."""

    max_len: int

    def parse(self, v: Any, where: str) -> str | float | bool | None:
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, str):
            return Str(self.max_len).parse(v, where)
        if isinstance(v, (int, float)):
            return Float().parse(v, where)
        raise WireError(f"{where}: expected a string, number, boolean or null, got {json_type(v)}")


@dataclasses.dataclass(frozen=True)
class ListOf(Kind):
    item: Kind
    max_items: int
    zero: Any = ()

    def _check(self, v: Any, where: str) -> None:
        if not isinstance(v, list):
            raise WireError(f"{where}: expected an array, got {json_type(v)}")
        if len(v) > self.max_items:
            raise WireError(f"{where}: more than {self.max_items} entries")

    def parse(self, v: Any, where: str) -> tuple:
        self._check(v, where)
        return tuple(self.item.parse(x, f"{where}[{i}]") for i, x in enumerate(v))

    def parse_lenient(self, v: Any, where: str, notes: list[str]) -> tuple:
        self._check(v, where)
        out = []
        for i, x in enumerate(v):
            try:
                out.append(self.item.parse_lenient(x, f"{where}[{i}]", notes))
            except WireError as e:
                notes.append(f"dropped {e}")
        return tuple(out)


@dataclasses.dataclass(frozen=True)
class MapOf(Kind):
    key: Str
    value: Kind
    max_items: int

    def parse(self, v: Any, where: str) -> dict:
        if not isinstance(v, dict):
            raise WireError(f"{where}: expected an object, got {json_type(v)}")
        if len(v) > self.max_items:
            raise WireError(f"{where}: more than {self.max_items} entries")
        out = {}
        for k, x in v.items():
            k2 = self.key.parse(k, f"{where} key {_show(k, 20)}")
            out[k2] = self.value.parse(x, f"{where}[{_show(k2, 20)}]")
        return out

    def is_zero(self, v: Any) -> bool:
        return not v


@dataclasses.dataclass(frozen=True)
class Obj(Kind):
    cls: type

    def parse(self, v: Any, where: str) -> Any:
        return from_json(self.cls, v, where)

    def parse_lenient(self, v: Any, where: str, notes: list[str]) -> Any:
        return from_json(self.cls, v, where, notes=notes)


@dataclasses.dataclass(frozen=True)
class KeyText(Kind):
    """A Curve25519 (or other) public key as Go writes it: ``prefix:<hex>``. Returns the
    lower-case text; with ``zero_is_absent``, the all-zero key (the client's "none") is ""."""

    prefix: str
    nbytes: int = 32
    zero_is_absent: bool = False
    nonzero: bool = False  # the all-zero key is refused (a node key being registered)
    also: tuple[str, ...] = ()  # prefixes Go also accepts on input (nlpub: or tlpub:)
    zero: Any = ""

    def parse(self, v: Any, where: str) -> str:
        if not isinstance(v, str):
            raise WireError(f"{where}: expected a {self.prefix}: key string, got {json_type(v)}")
        head, sep, hexpart = v.partition(":")
        if (sep != ":" or (head != self.prefix and head not in self.also)
                or len(hexpart) != 2 * self.nbytes):
            raise WireError(f"{where}: {_show(v)} is not a key ({self.prefix}:<{2 * self.nbytes} hex digits>)")
        try:
            raw = bytes.fromhex(hexpart)
        except ValueError:
            raise WireError(f"{where}: {_show(v)} is not a key ({self.prefix}:<{2 * self.nbytes} hex digits>)") from None
        if not any(raw):
            if self.nonzero:
                raise WireError(f"{where}: the zero key is not a key")
            if self.zero_is_absent:
                return ""
        return f"{self.prefix}:{raw.hex()}"


@dataclasses.dataclass(frozen=True)
class Prefix(Kind):
    """An IP prefix as Go's netip.ParsePrefix reads it ("10.0.0.0/24", "fd7a::/48"): an
    address without zone, a slash and decimal bits. Returned masked, in canonical form."""

    zero: Any = ""

    def parse(self, v: Any, where: str) -> str:
        if not isinstance(v, str):
            raise WireError(f"{where}: expected an IP prefix string, got {json_type(v)}")
        bad = WireError(f"{where}: {_show(v)} is not an IP prefix (like 10.0.0.0/24 or fd7a::/48)")
        addr, sep, bits = v.partition("/")
        if not sep or len(v) > 64 or "%" in addr or not bits.isascii() or not bits.isdigit():
            raise bad
        if len(bits) > 1 and bits[0] == "0":
            raise bad
        try:
            ip = ipaddress.ip_address(addr)
            return str(ipaddress.ip_network(f"{ip}/{int(bits)}", strict=False))
        except ValueError:
            raise bad from None


def parse_addr_port(v: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """"1.2.3.4:41641" or "[fd7a::1]:41641" (zone allowed) as Go's netip.ParseAddrPort;
    raises ValueError."""
    if v.startswith("["):
        addr, sep, port = v[1:].partition("]:")
        if not sep:
            raise ValueError(v)
        ip = ipaddress.ip_address(addr)
        if ip.version != 6:
            raise ValueError(v)
    else:
        addr, sep, port = v.rpartition(":")
        if not sep:
            raise ValueError(v)
        ip = ipaddress.IPv4Address(addr)
    if not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ValueError(v)
    return ip, int(port)


@dataclasses.dataclass(frozen=True)
class AddrPort(Kind):
    zero: Any = ""

    def parse(self, v: Any, where: str) -> str:
        if not isinstance(v, str):
            raise WireError(f"{where}: expected an address:port string, got {json_type(v)}")
        if len(v) > 80:
            raise WireError(f"{where}: longer than 80 characters")
        try:
            ip, port = parse_addr_port(v)
        except ValueError:
            raise WireError(f"{where}: {_show(v)} is not an address:port (like 192.0.2.1:41641 or [2001:db8::1]:41641)") from None
        return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def parse_time(text: str, where: str = "time") -> datetime | None:
    """RFC 3339, as Go's time.Time marshals → aware UTC datetime; Go's zero time → None.
    Raises WireError (a date without a time, or a time Python cannot hold, is refused: a
    naive or overflowing datetime would fail later, in a comparison)."""
    m = _RFC3339.fullmatch(text) if isinstance(text, str) and len(text) <= 40 else None
    if m is None:
        raise WireError(f"{where}: {_show(str(text))} is not an RFC 3339 time")
    if text.startswith("0001-01-01T00:00:00"):
        return None
    y, mo, d, h, mi, s, frac, z, sign, oh, om = m.groups()
    try:
        tz = timezone.utc if z else timezone((1 if sign == "+" else -1) * timedelta(hours=int(oh), minutes=int(om)))
        t = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), int((frac or "0")[:6].ljust(6, "0")), tz)
        return t.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        raise WireError(f"{where}: {_show(text)} is not a time this server can hold") from None


def format_time(t: datetime) -> str:
    # Not strftime: glibc's %Y writes year 1 as "1", which is not RFC 3339.
    t = t.astimezone(timezone.utc)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z"


@dataclasses.dataclass(frozen=True)
class Time(Kind):
    def parse(self, v: Any, where: str) -> datetime | None:
        if not isinstance(v, str):
            raise WireError(f"{where}: expected an RFC 3339 time string, got {json_type(v)}")
        return parse_time(v, where)


@dataclasses.dataclass(frozen=True)
class Bytes(Kind):
    """Go's []byte: standard base64 (or null)."""

    max_bytes: int
    zero: Any = b""

    def parse(self, v: Any, where: str) -> bytes:
        if not isinstance(v, str):
            raise WireError(f"{where}: expected a base64 string, got {json_type(v)}")
        if len(v) > 4 * (self.max_bytes // 3 + 1):
            raise WireError(f"{where}: more than {self.max_bytes} bytes")
        try:
            return base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise WireError(f"{where}: not base64") from None


# --- dataclasses <-> JSON ------------------------------------------------------------------


def wire(name: str, kind: Kind, default: Any = None) -> Any:
    """A field of a message the client sends: its Go JSON name and its kind."""
    if default is None:
        default = kind.zero
    return field(default=default, metadata={"json": name, "kind": kind})


def j(name: str, default: Any = None, **kw: Any) -> Any:
    """A field of a message we send: its Go JSON name (``None`` is omitted)."""
    if "default_factory" in kw:
        return field(metadata={"json": name}, **kw)
    return field(default=default, metadata={"json": name}, **kw)


@cache
def _wire_fields(cls: type) -> tuple[tuple[str, str, Kind | None], ...]:
    """(attribute, JSON name, kind) of the fields that are on the wire; a field without a
    JSON name (notes the server keeps about a message) is not."""
    return tuple(
        (f.name, f.metadata["json"], f.metadata.get("kind"))
        for f in dataclasses.fields(cls) if "json" in f.metadata
    )


def from_json(cls: type[T], data: Any, where: str | None = None, *, notes: list[str] | None = None) -> T:
    """A JSON object from the client → ``cls``, every known field checked by its kind.

    Raises WireError naming the first bad field. With ``notes`` (for data read back from the
    database), a bad field is dropped and described in ``notes`` instead.
    """
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise WireError(f"{where}: expected an object, got {json_type(data)}")
    kwargs = {}
    for attr, name, kind in _wire_fields(cls):
        v = data.get(name)
        if v is None or kind is None:
            continue
        at = f"{where}.{name}"
        if notes is None:
            kwargs[attr] = kind.parse(v, at)
            continue
        try:
            kwargs[attr] = kind.parse_lenient(v, at, notes)
        except WireError as e:
            notes.append(f"dropped {e}")
    return cls(**kwargs)


def to_json(obj: Any) -> Any:
    """Dataclass trees → JSON-ready values. A field with a kind is omitted when zero (Go's
    omitzero); any other field when None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for attr, name, kind in _wire_fields(type(obj)):
            v = getattr(obj, attr)
            if (kind.is_zero(v) if kind is not None else v is None):
                continue
            out[name] = to_json(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, datetime):
        return format_time(obj)
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode()
    return obj
