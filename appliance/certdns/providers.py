"""Where challenge records are published. A provider is told to publish a TXT value at a name
and, once the challenge is over, to withdraw it; ``zone.CertZone`` decides when."""

from __future__ import annotations

from typing import Any, Protocol

from ..config.model import CertificateSettings


class Provider(Protocol):
    name: str

    async def publish(self, name: str, value: str) -> None:
        """Make ``value`` visible at ``name`` (TXT). Raises ProviderError."""

    async def withdraw(self, name: str, value: str) -> None:
        """Remove it again. Raises ProviderError."""

    def describe(self) -> dict[str, Any]:
        """What ``trioscale certs`` shows about the provider."""


class EmbeddedProvider:
    """The embedded DNS server answers from the zone's records themselves: nothing to send."""

    name = "embedded"

    def __init__(self, listen_addr: str, ns_name: str) -> None:
        self.listen_addr = listen_addr
        self.ns_name = ns_name

    async def publish(self, name: str, value: str) -> None:
        return None

    async def withdraw(self, name: str, value: str) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"listen_addr": self.listen_addr, "ns_name": self.ns_name}


def make_provider(settings: CertificateSettings, base_domain: str) -> Provider:
    if settings.provider == "rfc2136":
        from .rfc2136 import RFC2136Provider

        assert settings.rfc2136 is not None
        return RFC2136Provider(settings.rfc2136)
    if settings.provider == "cloudflare":
        from .cloudflare import CloudflareProvider

        assert settings.cloudflare is not None
        return CloudflareProvider(settings.cloudflare, base_domain)
    return EmbeddedProvider(settings.listen_addr, settings.ns_name)
