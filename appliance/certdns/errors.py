"""Errors of the certificate zone. Each carries the HTTP status that set-dns answers with and a
message that is safe to show to the client."""

from __future__ import annotations


class CertDNSError(Exception):
    http_status = 500


class Refused(CertDNSError):
    """The request is not allowed (not the caller's name, not a challenge record)."""

    http_status = 403


class TooMany(CertDNSError):
    """Over a count or rate limit; the client may try again later."""

    http_status = 429


class ProviderError(CertDNSError):
    """The DNS provider (the zone's primary server, an API) failed or refused the change."""

    http_status = 502
