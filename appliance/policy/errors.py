"""Errors raised by the policy engine.

Every refusal carries the message Tailscale's control plane would give for the
same policy (where known), so an admin moving a policy file over sees the same
words. Position and field are optional extras for parse errors.
"""

from __future__ import annotations


class PolicyError(Exception):
    """A policy was refused. ``message`` is safe to show to the user."""

    def __init__(self, message: str, *, line: int | None = None,
                 column: int | None = None, field: str | None = None) -> None:
        self.message = message
        self.line = line
        self.column = column
        self.field = field
        super().__init__(self.describe())

    def describe(self) -> str:
        where = ""
        if self.line is not None:
            where = f"line {self.line}, column {self.column}: "
        return where + self.message


class ParseError(PolicyError):
    """The file is not valid HuJSON, or a field has the wrong shape."""


class ValidationError(PolicyError):
    """The file parses but names something that does not exist or is not allowed."""


class PolicyTestFailure(PolicyError):
    """A ``tests`` or ``sshTests`` entry of the policy did not hold."""

    def __init__(self, message: str, failures: list[str]) -> None:
        self.failures = failures
        super().__init__(message)
