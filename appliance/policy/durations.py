"""Go time.Duration text, as Tailscale writes and reads checkPeriod."""

from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0,
          "m": 60.0, "h": 3600.0}
_NUMBER = re.compile(r"(\d*)(?:\.(\d*))?")
_UNIT = re.compile(r"[^\d.]*")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string such as "12h", "1h30m", "-1m", read exactly as Go's
    time.ParseDuration reads it (no days). Raises ValueError with Go's message, which is
    what Tailscale's control plane answers for a malformed checkPeriod."""
    s = text
    neg = s[:1] == "-"
    if s[:1] in ("-", "+"):
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f'time: invalid duration "{text}"')
    total = 0.0
    while s:
        m = _NUMBER.match(s)
        whole, frac = m.group(1), m.group(2) or ""
        if not whole and not frac:
            raise ValueError(f'time: invalid duration "{text}"')
        s = s[m.end():]
        unit = _UNIT.match(s).group(0)
        if not unit:
            raise ValueError(f'time: missing unit in duration "{text}"')
        if unit not in _UNITS:
            raise ValueError(f'time: unknown unit "{unit}" in duration "{text}"')
        s = s[len(unit):]
        total += float(f"{whole or 0}.{frac or 0}") * _UNITS[unit]
    return -total if neg else total


def format_go_duration(seconds: float) -> str:
    """Go's Duration.String for whole seconds: "168h0m1s", "-1m0s", "0s"."""
    neg = seconds < 0
    s = int(round(abs(seconds)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        out = f"{h}h{m}m{sec}s"
    elif m:
        out = f"{m}m{sec}s"
    else:
        out = f"{sec}s"
    return ("-" if neg else "") + out
