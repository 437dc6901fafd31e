"""What an audit entry changed, read from its before and after (the API's shapes): one answer
for every place that shows entries (the CLI's `audit list`, the console's audit page)."""

from __future__ import annotations

from typing import Any


def changed_fields(before: Any, after: Any) -> str | list[str]:
    """"" (nothing recorded), "created", "deleted", "changed" (values that are not objects), or
    the names of the fields whose values differ, sorted; a field only one side has counts."""
    if before is None and after is None:
        return ""
    if before is None:
        return "created"
    if after is None:
        return "deleted"
    if not isinstance(before, dict) or not isinstance(after, dict):
        return "changed"
    return [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
