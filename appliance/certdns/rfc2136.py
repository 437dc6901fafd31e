"""``provider: rfc2136``: challenge records as dynamic updates (RFC 2136) signed with a TSIG
key (RFC 8945), sent to the zone's primary server (BIND, Knot, PowerDNS...).

The update and its signed reply are built and checked by dnspython (``update_message``,
``check_reply``: pure); ``exchange`` sends one over TCP with Trio. TCP, because an update's
reply must not be lost to a dropped datagram and retried blindly.
"""

from __future__ import annotations

from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update
import trio
from dns.rdtypes.ANY.TXT import TXT

from ..config import split_host_port
from ..config.model import RFC2136Settings
from .authority import TXT_TTL
from .errors import ProviderError
from .framing import FrameReader, frame

UPDATE_TIMEOUT = 10.0  # seconds for connecting, sending and the reply

# The config's names (BIND's) → the algorithm names on the wire.
ALGORITHMS = {
    "hmac-md5": dns.tsig.HMAC_MD5,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}

# What each refusal means for the person reading the log.
RCODE_HINTS = {
    dns.rcode.NOTAUTH: "the server did not accept the TSIG key (check tsig_key_name, tsig_algorithm and "
                       "tsig_secret) or is not authoritative for the zone",
    dns.rcode.REFUSED: "the server refused the update: its update-policy must let this key change TXT "
                       "records under the zone",
    dns.rcode.NOTZONE: "the name is not inside the zone named by dns.certificates.rfc2136.zone",
    dns.rcode.SERVFAIL: "the server failed to apply the update",
}


class RFC2136Provider:
    name = "rfc2136"

    def __init__(self, settings: RFC2136Settings) -> None:
        self.server = settings.server
        self.host, self.port = split_host_port(settings.server)
        self.zone = dns.name.from_text(settings.zone)
        self.keyname = dns.name.from_text(settings.tsig_key_name)
        self.algorithm = settings.tsig_algorithm
        self.keyring = {self.keyname: dns.tsig.Key(self.keyname, settings.tsig_secret, ALGORITHMS[settings.tsig_algorithm])}

    def describe(self) -> dict[str, Any]:
        return {"server": self.server, "zone": self.zone.to_text(omit_final_dot=True),
                "tsig_key_name": self.keyname.to_text(omit_final_dot=True), "tsig_algorithm": self.algorithm}

    async def publish(self, name: str, value: str) -> None:
        await self.exchange(self.update_message(name, value, add=True))

    async def withdraw(self, name: str, value: str) -> None:
        await self.exchange(self.update_message(name, value, add=False))

    # --- pure ---------------------------------------------------------------------------

    def update_message(self, name: str, value: str, *, add: bool) -> dns.update.UpdateMessage:
        """The signed update that adds (or deletes) the TXT ``value`` at ``name``; other
        values at the name stay, so two challenges for one name can be pending at once."""
        owner = dns.name.from_text(name)
        rdata = TXT(dns.rdataclass.IN, dns.rdatatype.TXT, [value.encode()])
        update = dns.update.UpdateMessage(self.zone, keyring=self.keyring, keyname=self.keyname)
        if add:
            update.add(owner, TXT_TTL, rdata)
        else:
            update.delete(owner, rdata)
        return update

    def check_reply(self, request: dns.message.Message, wire: bytes) -> None:
        """Check the server's signed reply to ``request``; raises ProviderError unless it says
        the update was applied."""
        try:
            reply = dns.message.from_wire(wire, keyring=self.keyring, request_mac=request.mac)
        except dns.tsig.PeerBadKey:
            raise ProviderError(f"{self.server} does not know the TSIG key {self.keyname} (BADKEY)") from None
        except (dns.tsig.PeerBadSignature, dns.tsig.BadSignature):
            raise ProviderError(f"{self.server}: the TSIG signature did not verify (BADSIG): check tsig_secret "
                                "and tsig_algorithm") from None
        except (dns.tsig.PeerBadTime, dns.tsig.BadTime):
            raise ProviderError(f"{self.server}: TSIG time check failed (BADTIME): are both clocks right?") from None
        except dns.message.UnknownTSIGKey:
            raise ProviderError(f"{self.server} signed its reply with a key we do not know") from None
        except (dns.exception.DNSException, ValueError) as e:
            raise ProviderError(f"{self.server} sent a reply we cannot read: {e}") from None
        if reply.id != request.id:
            raise ProviderError(f"{self.server} answered another request (ID {reply.id} for {request.id})")
        if request.keyring and not reply.had_tsig:
            raise ProviderError(f"{self.server} sent an unsigned reply to a signed update")
        rcode = reply.rcode()
        if rcode != dns.rcode.NOERROR:
            hint = RCODE_HINTS.get(rcode, "the update was not applied")
            raise ProviderError(f"{self.server} answered {dns.rcode.to_text(rcode)}: {hint}")

    # --- I/O ----------------------------------------------------------------------------

    async def exchange(self, update: dns.update.UpdateMessage) -> None:
        """Send ``update`` and check the reply. Raises ProviderError."""
        wire = update.to_wire()  # signs it, which sets update.mac for checking the reply
        try:
            with trio.fail_after(UPDATE_TIMEOUT):
                stream = await trio.open_tcp_stream(self.host, self.port)
                async with stream:
                    await stream.send_all(frame(wire))
                    reader = FrameReader()
                    while (reply := reader.next_message()) is None:
                        data = await stream.receive_some(65536)
                        if not data:
                            raise ProviderError(f"{self.server} closed the connection without answering the update")
                        reader.receive_data(data)
        except trio.TooSlowError:
            raise ProviderError(f"{self.server} did not answer the update within {UPDATE_TIMEOUT:.0f}s") from None
        except (OSError, trio.BrokenResourceError) as e:
            raise ProviderError(f"cannot reach {self.server} for the update: {e}") from None
        except ValueError as e:  # FrameError: not a DNS server
            raise ProviderError(f"{self.server}: {e}") from None
        self.check_reply(update, reply)
