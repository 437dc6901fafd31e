"""Errors of the admin API as RFC 9457 problem details (application/problem+json), through one
table from exception to status. The client gets a short safe message; unexpected faults are
logged with their traceback and answered 500."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from ..errors import AuthFailed, Conflict, Forbidden, Invalid, NotFound
from ..logthrottle import LogThrottle
from ..http.server import Answer
from ..policy import PolicyError
from ..storage import LeaseLost
from ..storage.store import Conflict as StoreConflict
from .schema import FieldError

log = logging.getLogger(__name__)
_throttled = LogThrottle(log)

PROBLEM = "application/problem+json"


class APIError(Exception):
    """An answer decided at the API's edge (not a domain error)."""

    status = 400

    def __init__(self, detail: str, *, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(detail)
        self.headers = headers


class Malformed(APIError):
    """The request cannot be read at all: not JSON, not UTF-8, too deep, bad %-encoding."""

    status = 400


class Unauthorized(APIError):
    status = 401


class UnknownPath(APIError):
    status = 404


class MethodNotAllowed(APIError):
    status = 405


class RateLimited(APIError):
    status = 429


class Unavailable(APIError):
    status = 503


# Domain errors → status. FieldError: the input broke its definition (422, as Headscale's
# Huma-based API answers validation failures); 400 is kept for requests that cannot be read.
_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (FieldError, 422),
    (NotFound, 404),
    (Conflict, 409),
    (StoreConflict, 409),
    (Forbidden, 403),
    (Invalid, 422),
    (PolicyError, 422),
    (AuthFailed, 422),
    # This server lost the active role mid-request (PostgreSQL with standbys): nothing was
    # written; the active server takes the retry.
    (LeaseLost, 503),
)


def problem(status: int, detail: str, *, errors: list[dict[str, Any]] | None = None,
            instance: str | None = None, headers: tuple[tuple[str, str], ...] = ()) -> Answer:
    doc: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        # Headscale's gRPC-gateway answered {"code", "message"}; scripts written for it read
        # "message", so it stays as an extension member.
        "message": detail,
    }
    if instance:
        doc["instance"] = instance
    if errors:
        doc["errors"] = errors
    return status, [("content-type", PROBLEM), *headers], json.dumps(doc).encode()


def answer_for(exc: BaseException, instance: str) -> Answer:
    """The problem answer for an exception raised while serving ``instance`` (the path)."""
    if isinstance(exc, Malformed):
        # One line per request that cannot be read, rate-limited: a flood must not fill the disk.
        _throttled.warning("api-malformed", "admin API: %s: %s", instance, exc)
    if isinstance(exc, APIError):
        return problem(exc.status, str(exc), instance=instance, headers=exc.headers)
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            errors = None
            if isinstance(exc, FieldError):
                errors = [{"location": at, "message": msg} for at, msg in exc.problems]
            return problem(status, str(exc), errors=errors, instance=instance)
    log.error("admin API: %s failed", instance, exc_info=exc)
    return problem(500, "internal error: the server logged the cause", instance=instance)


def problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "RFC 9457 problem details",
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "message": {"type": "string", "description": "the same as detail (Headscale's gateway name)"},
            "instance": {"type": "string"},
            "errors": {"type": "array", "items": {
                "type": "object",
                "properties": {"location": {"type": "string"}, "message": {"type": "string"}},
                "required": ["location", "message"],
            }},
        },
        "required": ["type", "title", "status", "detail"],
    }
