"""Go time.Duration text, as Tailscale writes and reads checkPeriod."""

from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string such as "12h", "1h30m", "-1m"."""
    s = text.strip()
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(text)
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m:
            raise ValueError(text)
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total


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
