"""``POST /machine/set-dns``: a machine asks for the TXT record of its ACME DNS-01 challenge.

``tailscale cert`` (and ``tailscale serve --https``) send it for each name they order a
certificate for: ``{"Version", "NodeKey", "Name": "_acme-challenge.<its MagicDNS name>",
"Type": "TXT", "Value": "<43 base64url characters>"}``; the client needs 200 with a JSON
object (it decodes ``{}``) and shows any other answer's status and text to its user.

A machine may set only the challenge record of its own name, only TXT, one short value at a
time and at a bounded rate; everything else is refused with a status and a sentence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..certdns.errors import CertDNSError, Refused, TooMany
from ..logthrottle import LogThrottle
from ..ratelimit import TokenBuckets
from .codec import Int, KeyText, Str, WireError, decode_body, from_json, wire
from .wire import MAX_CAPABILITY_VERSION

if TYPE_CHECKING:
    from ..certdns.zone import CertZone
    from ..http.h2server import Request, Response
    from ..tailnet.model import Tailnet
    from .mapper import Mapper

log = logging.getLogger(__name__)

CHALLENGE_PREFIX = "_acme-challenge."
MAX_BODY = 2048  # the real request is about 200 bytes
MAX_NAME = 253  # a DNS name's text form (RFC 1035 2.3.4)
MAX_VALUE = 255  # one TXT character-string; an ACME DNS-01 value is 43 characters
MAX_TYPE = 16
# A certificate needs one record (a wildcard with its base name, two); the client renews when a
# third of the lifetime is left. Six at once and one a minute after that is plenty for it and
# keeps a misbehaving machine from churning the zone or the DNS provider.
RATE_BURST = 6
RATE_PER_SECOND = 1 / 60
_VALUE = r"[\x21-\x7e]+"  # printable ASCII without spaces: what ACME tokens use


@dataclass(frozen=True, slots=True)
class SetDNSRequest:
    version: int = wire("Version", Int(0, MAX_CAPABILITY_VERSION))
    node_key: str = wire("NodeKey", KeyText("nodekey"))
    name: str = wire("Name", Str(MAX_NAME))
    type: str = wire("Type", Str(MAX_TYPE))
    value: str = wire("Value", Str(MAX_VALUE, pattern=_VALUE, what="printable ASCII without spaces"))

    @classmethod
    def parse(cls, body: bytes) -> "SetDNSRequest":
        """The request from the client's body, with every field within its limits. Raises
        WireError (400)."""
        if len(body) > MAX_BODY:
            raise WireError(f"body of {len(body)} bytes; a set-dns request is at most {MAX_BODY}")
        req = from_json(cls, decode_body(body, "SetDNSRequest"))
        if not req.node_key:
            raise WireError("SetDNSRequest.NodeKey: missing")
        if not req.name:
            raise WireError(f"SetDNSRequest.Name: expected a DNS name of 1 to {MAX_NAME} characters")
        if not req.type:
            raise WireError("SetDNSRequest.Type: expected a record type such as TXT")
        if not req.value:
            raise WireError(f"SetDNSRequest.Value: expected 1 to {MAX_VALUE} printable ASCII characters")
        return req


class SetDNS:
    """The set-dns endpoint. ``zone`` is None when certificates are off (dns.certificates)."""

    def __init__(self, tailnet: "Tailnet", mapper: "Mapper", zone: "CertZone | None" = None) -> None:
        self.tailnet = tailnet
        self.mapper = mapper
        self.zone = zone
        self._rate = TokenBuckets(RATE_PER_SECOND, RATE_BURST, max_keys=100_000)
        self.throttled = LogThrottle(log)  # per server: one server's flood is not another's silence

    async def handle(self, req: "Request", resp: "Response", machine_key: str, conn: str) -> None:
        """Answer one request: 200 ``{}`` when the record is published, else a 4xx/5xx with
        the reason (and one rate-limited log line)."""
        try:
            sd = SetDNSRequest.parse(bytes(req.body))
            name = self.check(sd, machine_key)
            if not self._rate.allow(sd.node_key):
                raise TooMany("too many set-dns requests from this machine; try again in a minute")
            assert self.zone is not None
            await self.zone.publish(name, sd.value)
        except WireError as e:
            self.throttled.warning("set-dns-bad", "%s: bad set-dns request: %s", conn, e)
            await resp.simple(400, f"bad request: {e}\n".encode())
            return
        except CertDNSError as e:
            if self.zone is not None:
                self.zone.refused += 1
            self.throttled.warning("set-dns-refused", "%s: set-dns refused (%d): %s", conn, e.http_status, e)
            await resp.simple(e.http_status, f"{e}\n".encode())
            return
        log.info("%s: published the DNS-01 challenge record %s", conn, name)
        await resp.simple(200, b"{}", "application/json")

    def check(self, sd: SetDNSRequest, machine_key: str) -> str:
        """The record's name if the calling machine may set it; raises Refused."""
        if self.zone is None:
            raise Refused("HTTPS certificates are not enabled on this server (dns.certificates.enabled)")
        node = self.tailnet.node_by_key(sd.node_key)
        if node is None or node.machine_key != machine_key:
            raise Refused("unknown node key: log in first")
        if self.tailnet.is_expired(node):
            raise Refused("this machine's key has expired: log in again")
        if not node.authorized:
            raise Refused("this machine waits for an administrator's approval (trioscale nodes approve)")
        own = CHALLENGE_PREFIX + self.mapper.fqdn(node).rstrip(".")
        name = sd.name.rstrip(".").lower()
        if sd.type != "TXT":
            raise Refused(f"only TXT records may be set (for ACME DNS-01), not {sd.type[:MAX_TYPE]!r}")
        if not name.startswith(CHALLENGE_PREFIX):
            raise Refused(f"only the ACME challenge record {own} may be set, not {name[:MAX_NAME]}")
        if name != own:
            raise Refused(f"a machine may set only its own challenge record, {own}, not {name[:MAX_NAME]}")
        return own
