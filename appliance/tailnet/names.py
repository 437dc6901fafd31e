"""DNS-safe node names, unique in the tailnet."""

from __future__ import annotations

import re

MAX_LABEL = 63
_INVALID = re.compile(r"[^a-z0-9-]+")


class InvalidName(ValueError):
    pass


def dns_label(hostname: str) -> str:
    """Lower-case, runs of other characters become one '-', trimmed to a DNS label.

    Only the first label of a dotted hostname counts ("laptop.local" → "laptop"), as the
    client's own MagicDNS name does.
    """
    first = hostname.strip().split(".")[0].lower()
    label = _INVALID.sub("-", first).strip("-")[:MAX_LABEL].strip("-")
    return label or "node"


def check_given_name(name: str) -> str:
    """A name an admin chose: it must already be a DNS label; raises InvalidName."""
    if not name or len(name) > MAX_LABEL or _INVALID.search(name) or name[0] == "-" or name[-1] == "-":
        raise InvalidName(
            f"{name!r} is not a valid node name: use 1 to 63 lower-case letters, digits and "
            "inner hyphens"
        )
    return name


def unique_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base-1``, ``base-2``… the first one not taken."""
    if base not in taken:
        return base
    n = 1
    while True:
        suffix = f"-{n}"
        cand = base[: MAX_LABEL - len(suffix)] + suffix
        if cand not in taken:
            return cand
        n += 1
