"""Errors of the derp package.

Every error this package raises on purpose derives from :class:`DerpError`, so an embedding
application can catch one class at the edge of a DERP connection.
"""

from __future__ import annotations


class DerpError(Exception):
    """Base class of every error raised by the derp package."""


class ProtocolError(DerpError):
    """The peer broke the DERP (or WebSocket, or HTTP upgrade) protocol.

    Ends that one connection, never the server. ``http_status`` is what the edge should answer
    if the error happens before the upgrade (h11's ``error_status_hint`` idea).
    """

    def __init__(self, msg: str, *, http_status: int = 400) -> None:
        super().__init__(msg)
        self.http_status = http_status


class FrameTooLarge(ProtocolError):
    """A frame header announced more bytes than the limit for its type."""


class HandshakeError(ProtocolError):
    """The ServerKey/ClientInfo/ServerInfo exchange failed (bad box, bad JSON, wrong magic)."""


class ClientRefused(DerpError):
    """Admission refused the client key (``verify_client`` said no, or a wrong mesh key)."""


class ConnectionClosed(DerpError):
    """The transport under a DERP session went away (EOF, reset, write timeout)."""


class StunError(DerpError):
    """A datagram is not a STUN binding request we answer; the responder drops it."""
