"""Errors of the importers and of the export document."""

from __future__ import annotations


class MigrateError(Exception):
    """Base class: an import or export that cannot go on; the message says why and what to do."""


class ImportRefused(MigrateError):
    """The input cannot be imported as it is (unknown schema, unreadable file, bad document);
    nothing was written."""
