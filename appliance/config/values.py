"""Parsers for the value kinds a config file holds: each takes the value as
YAML produced it and the dotted key (for the error), and returns the Python
value or raises ConfigError naming the key."""

from __future__ import annotations

import ipaddress
import re
import socket
from datetime import timedelta
from urllib.parse import urlsplit

from .errors import ConfigError, key_error
from .yamlfile import SourceInt

# --- durations -------------------------------------------------------------

# Go's time.ParseDuration units, plus d/w/y as Prometheus' model.ParseDuration
# (which Headscale uses for node.expiry) accepts them.
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
    "y": 365 * 86400,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d|w|y)")
_DURATION_EXAMPLE = "a duration such as '30m', '1h30m', '65s' or '90d'"


def parse_duration(value: object, key: str) -> timedelta:
    """Go-style duration (``"1h30m"``, ``"65s"``, ``"0"``) or days (``"90d"``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value == 0:
            return timedelta(0)
        # Viper reads a bare number as nanoseconds, which nobody means.
        raise key_error(key, f"{_DURATION_EXAMPLE} (a number needs a unit)", value)
    if not isinstance(value, str):
        raise key_error(key, _DURATION_EXAMPLE, value)
    text = value.strip()
    if text in ("0", "+0", "-0"):
        return timedelta(0)
    if text.startswith("-"):
        raise key_error(key, f"a non-negative duration, {_DURATION_EXAMPLE}", value)
    body = text[1:] if text.startswith("+") else text
    if re.fullmatch(r"\d+(?:\.\d*)?", body):
        raise key_error(key, f"{_DURATION_EXAMPLE} (a number needs a unit)", value)
    pos = 0
    seconds = 0.0
    micros = 0
    for match in _DURATION_PART.finditer(body):
        if match.start() != pos:
            break
        pos = match.end()
        number, unit = match.groups()
        if unit in ("d", "w", "y", "h", "m", "s"):
            # keep whole units exact; only fractions go through floats
            whole, _, frac = number.partition(".")
            seconds += int(whole or 0) * _UNIT_SECONDS[unit]
            if frac:
                micros += round(float("0." + frac) * _UNIT_SECONDS[unit] * 1e6)
        else:
            micros += round(float(number) * _UNIT_SECONDS[unit] * 1e6)
    if pos != len(body) or not body:
        raise key_error(key, _DURATION_EXAMPLE, value)
    return timedelta(seconds=seconds, microseconds=micros)


def format_duration(delta: timedelta) -> str:
    """The shortest string parse_duration reads back as ``delta``."""
    total_us = delta // timedelta(microseconds=1)
    if total_us == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400_000_000), ("h", 3600_000_000), ("m", 60_000_000),
                       ("s", 1_000_000), ("ms", 1000), ("us", 1)):
        count, total_us = divmod(total_us, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


# --- scalars ---------------------------------------------------------------


def parse_bool(value: object, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise key_error(key, "true or false", value)


def parse_int(value: object, key: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise key_error(key, "a whole number", value)
    if minimum is not None and value < minimum:
        raise key_error(key, f"a whole number of at least {minimum}", value)
    return int(value)


def parse_str(value: object, key: str) -> str:
    if isinstance(value, str):
        return value
    raise key_error(key, "a string", value)


def parse_choice(value: object, key: str, choices: tuple[str, ...], *, fold: bool = True) -> str:
    if isinstance(value, str):
        for choice in choices:
            if value == choice or (fold and value.lower() == choice.lower()):
                return choice
    raise key_error(key, "one of " + ", ".join(repr(c) for c in choices), value)


def parse_str_list(value: object, key: str) -> tuple[str, ...]:
    """A list of strings. A single string is split on whitespace, as Viper does."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    if not isinstance(value, list):
        raise key_error(key, "a list of strings", value)
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise key_error(f"{key}[{index}]", "a string", item)
    return tuple(value)


def parse_permission(value: object, key: str) -> int:
    """A file mode written in octal: ``"0770"``, ``"770"``, ``"0o770"`` or unquoted ``0770``."""
    if isinstance(value, SourceInt):
        text = value.source
    elif isinstance(value, int) and not isinstance(value, bool):
        # a mode handed over from Python (config_from_dict), not from YAML
        if not 0 <= value <= 0o7777:
            raise key_error(key, "a file mode between 0 and 0o7777", value)
        return value
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise key_error(key, "an octal file mode such as \"0770\"", value)
    digits = text[2:] if text.lower().startswith("0o") else text
    if not digits or any(ch not in "01234567" for ch in digits) or int(digits, 8) > 0o7777:
        raise key_error(key, "an octal file mode such as \"0770\"", value)
    return int(digits, 8)


# --- network values --------------------------------------------------------

_SERVICE_PORTS = {"http": 80, "https": 443}


def split_host_port(addr: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port``, ``:port``, ``:http``) like Go's net.SplitHostPort.

    Returns the host ("" means every address) and the port number. Raises
    ValueError if ``addr`` is not of that form.
    """
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0 or addr[end + 1 : end + 2] != ":":
            raise ValueError(addr)
        host, port = addr[1:end], addr[end + 2 :]
        ipaddress.IPv6Address(host.split("%")[0])
    else:
        host, sep, port = addr.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(addr)
    if port.isdigit():
        number = int(port)
    elif port in _SERVICE_PORTS:
        number = _SERVICE_PORTS[port]
    elif re.fullmatch(r"[a-z][a-z0-9-]*", port):
        try:
            number = socket.getservbyname(port)
        except OSError:
            raise ValueError(addr) from None
    else:
        raise ValueError(addr)
    if not 0 <= number <= 65535:
        raise ValueError(addr)
    return host, number


def parse_host_port(value: object, key: str, example: str = "0.0.0.0:8080") -> str:
    expected = f"an address such as {example!r} (host:port, IPv6 as '[::]:443')"
    if not isinstance(value, str):
        raise key_error(key, expected, value)
    try:
        split_host_port(value)
    except ValueError:
        raise key_error(key, expected, value) from None
    return value


def parse_ip(value: object, key: str, version: int) -> str:
    kind = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    example = "198.51.100.1" if version == 4 else "2001:db8::1"
    if isinstance(value, str):
        try:
            return str(kind(value.strip()))
        except ValueError:
            pass
    raise key_error(key, f"an IPv{version} address such as {example}", value)


def parse_prefix(value: object, key: str, version: int):
    kind = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    example = "100.64.0.0/10" if version == 4 else "fd7a:115c:a1e0::/48"
    if isinstance(value, str) and "/" in value:
        try:
            # netip.ParsePrefix accepts host bits set; so do we, masking them off.
            return kind(value.strip(), strict=False)
        except ValueError:
            pass
    raise key_error(key, f"an IPv{version} prefix such as {example}", value)


def parse_any_prefix(value: object, key: str):
    if isinstance(value, str) and "/" in value:
        try:
            return ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            pass
    raise key_error(key, "an IP prefix such as 10.0.0.0/8 or fd00::/8", value)


def parse_http_url(value: object, key: str, *, bare: bool = False) -> str:
    """An http(s) URL. With ``bare``, only scheme://host[:port] (a trailing '/' is dropped)."""
    what = "an http:// or https:// URL" + (" with no path, such as https://hs.example.com" if bare else "")
    if not isinstance(value, str):
        raise key_error(key, what, value)
    text = value.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise key_error(key, what, value) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise key_error(key, what, value)
    if bare:
        if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
            raise key_error(key, what, value)
        return f"{parts.scheme}://{parts.netloc}"
    return text


def parse_nameserver(value: object, key: str) -> str:
    """What Tailscale's dnstype.Resolver.Addr holds: an IP, IP:port, or a DoH URL."""
    expected = "a nameserver: an IP address (optionally with :port) or an https:// DoH URL"
    if isinstance(value, str):
        text = value.strip()
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            pass
        try:
            host, _ = split_host_port(text)
            ipaddress.ip_address(host)
            return text
        except ValueError:
            pass
        parts = urlsplit(text)
        if parts.scheme in ("https", "http") and parts.hostname:
            return text
    raise key_error(key, expected, value)


_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def parse_domain(value: object, key: str) -> str:
    expected = "a domain name without a trailing dot, such as tailnet.example.org"
    if not isinstance(value, str):
        raise key_error(key, expected, value)
    text = value.strip().lower()
    if text.endswith(".") or len(text) > 253 or not all(_LABEL.fullmatch(p) for p in text.split(".")):
        raise key_error(key, expected, value)
    return text


def require_mapping(value: object, key: str) -> dict:
    if not isinstance(value, dict):
        raise key_error(key, "a mapping of keys to values", value)
    for sub in value:
        if not isinstance(sub, str):
            raise ConfigError(f"{key}: keys must be strings, got {sub!r}", key=key)
    return value
