"""The one error the configuration loader raises."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration file that cannot be used as written.

    ``str(err)`` names the key the way the user wrote it and what was
    expected, e.g. ``prefixes.v4: expected an IPv4 prefix such as
    100.64.0.0/10, got 'banana'``. ``key`` is that dotted key (``None`` for
    problems with the file as a whole) and ``source`` the file, if any.
    """

    def __init__(self, message: str, *, key: str | None = None, source: object = None):
        super().__init__(message)
        self.key = key
        self.source = source


def key_error(key: str, expected: str, got: object) -> ConfigError:
    """``<key>: expected <expected>, got <got>`` with ``got`` shown as the user wrote it."""
    return ConfigError(f"{key}: expected {expected}, got {describe(got)}", key=key)


def describe(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value) if isinstance(value, str) else str(value)
