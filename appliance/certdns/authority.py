"""The embedded authoritative DNS server's core: a query's bytes in, the answer's bytes out.

It answers for one zone (the tailnet's base domain) and holds only what ACME DNS-01 needs: the
zone's SOA and NS records and the ``_acme-challenge`` TXT records that machines asked for
through set-dns. It never recurses or forwards, so it cannot be used as an open resolver; names
outside the zone are REFUSED. Messages are parsed and built with dnspython's message module.

Pure: no sockets, no clock (``now`` is passed in). The Trio driver is ``server``.
"""

from __future__ import annotations

import struct
from collections import Counter

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.HINFO import HINFO
from dns.rdtypes.ANY.NS import NS
from dns.rdtypes.ANY.SOA import SOA
from dns.rdtypes.ANY.TXT import TXT

from .records import ChallengeRecords

# Answer sizes. Without EDNS0 a UDP answer holds at most 512 bytes (RFC 1035 4.2.1). With it we
# go up to what the client offers but never past 1232 (DNS flag day 2020): larger datagrams get
# fragmented, and fragments are lost or spoofed. Over TCP the two-byte length is the limit.
PLAIN_UDP_SIZE = 512
MAX_UDP_PAYLOAD = 1232
MAX_TCP_SIZE = 65535
HEADER_LEN = 12

# TTLs, in seconds. Challenge values change with every order, so they are cached briefly; the
# negative TTL (SOA minimum, RFC 2308) is short so that a resolver that asked before set-dns
# sees the record soon after.
TXT_TTL = 30
NEGATIVE_TTL = 30
SOA_TTL = 300
NS_TTL = 3600
SOA_TIMERS = (3600, 600, 86400)  # refresh, retry, expire: for secondaries, which we have none of

IN = dns.rdataclass.IN


def _header(wire: bytes) -> tuple[int, int] | None:
    """The ID and flags of what looks like a DNS header, or None."""
    if len(wire) < HEADER_LEN:
        return None
    qid, flags = struct.unpack("!HH", wire[:4])
    return qid, flags


class Authority:
    """Answers for ``zone`` with ``records``' challenge values; ``ns_name`` is this server's
    name in the zone's NS and SOA records."""

    def __init__(self, zone: str, ns_name: str, records: ChallengeRecords) -> None:
        self.origin = dns.name.from_text(zone)
        self.ns_name = dns.name.from_text(ns_name)
        self.rname = dns.name.from_text("hostmaster", self.origin)
        self.records = records
        self.counts: Counter[str] = Counter()  # by outcome, for `trioscale certs`

    def respond(self, wire: bytes, now: float, *, tcp: bool = False) -> bytes | None:
        """The answer to the query ``wire``, or None when nothing should be sent back (not a
        DNS header, or a response rather than a query: answering those would loop)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.message.ShortHeader:
            self.counts["dropped"] += 1
            return None
        except dns.message.UnknownTSIGKey:
            return self._bare_error(wire, dns.rcode.REFUSED, "refused")  # we hold no TSIG keys
        except (dns.exception.DNSException, ValueError):
            return self._bare_error(wire, dns.rcode.FORMERR, "formerr")
        if query.flags & dns.flags.QR:
            self.counts["dropped"] += 1
            return None
        if query.opcode() != dns.opcode.QUERY:
            # Dynamic updates, NOTIFY, IQUERY: not here (RFC 2136 3.1: NOTIMP).
            return self._bare_error(wire, dns.rcode.NOTIMP, "notimp")
        if len(query.question) != 1:
            return self._bare_error(wire, dns.rcode.FORMERR, "formerr")
        response = dns.message.make_response(query, recursion_available=False, our_payload=MAX_UDP_PAYLOAD)
        if query.edns > 0:
            response.set_rcode(dns.rcode.BADVERS)  # RFC 6891 6.1.3: we speak EDNS version 0
            self.counts["badvers"] += 1
            return response.to_wire()
        self._answer(query.question[0], response, now)
        limit = MAX_TCP_SIZE if tcp else (
            PLAIN_UDP_SIZE if query.edns < 0 else max(PLAIN_UDP_SIZE, min(query.payload, MAX_UDP_PAYLOAD))
        )
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            # RFC 2181 9: set TC and send what fits; we send no partial RRsets, so the client
            # retries over TCP for the whole answer.
            response.answer.clear()
            response.authority.clear()
            response.additional.clear()
            response.flags |= dns.flags.TC
            self.counts["truncated"] += 1
            return response.to_wire(max_size=limit)

    def truncated(self, wire: bytes) -> bytes | None:
        """An empty answer with TC set (the rate limiter's "slip"): no bigger than the query,
        and it sends a real client to TCP."""
        try:
            query = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError):
            return None
        if query.flags & dns.flags.QR or query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            return None
        response = dns.message.make_response(query, recursion_available=False, our_payload=MAX_UDP_PAYLOAD)
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=PLAIN_UDP_SIZE)

    # --- answering one question ---------------------------------------------------------

    def _answer(self, question: dns.rrset.RRset, response: dns.message.Message, now: float) -> None:
        name, qtype = question.name, question.rdtype
        if question.rdclass not in (IN, dns.rdataclass.ANY) or not name.is_subdomain(self.origin):
            # Not our zone (or CHAOS "version.bind" and the like): an authoritative-only
            # server refuses rather than recursing or pointing elsewhere.
            response.set_rcode(dns.rcode.REFUSED)
            self.counts["refused"] += 1
            return
        if dns.rdatatype.is_metatype(qtype) and qtype != dns.rdatatype.ANY:
            response.set_rcode(dns.rcode.REFUSED)  # AXFR, IXFR, MAILA...: no zone transfers
            self.counts["refused"] += 1
            return
        response.flags |= dns.flags.AA
        values = self.records.values(name.to_text(), now)
        if name == self.origin or values:
            if qtype == dns.rdatatype.ANY:
                # RFC 8482: one small synthesized record instead of everything, so that ANY
                # cannot be used to amplify.
                response.answer.append(dns.rrset.from_rdata(name, SOA_TTL, HINFO(IN, dns.rdatatype.HINFO, b"RFC8482", b"")))
            elif name == self.origin and qtype == dns.rdatatype.SOA:
                response.answer.append(self._soa(name, SOA_TTL))
            elif name == self.origin and qtype == dns.rdatatype.NS:
                response.answer.append(dns.rrset.from_rdata(name, NS_TTL, NS(IN, dns.rdatatype.NS, self.ns_name)))
            elif values and qtype == dns.rdatatype.TXT:
                rdatas = [TXT(IN, dns.rdatatype.TXT, [v.encode()]) for v in values]
                response.answer.append(dns.rrset.from_rdata_list(name, TXT_TTL, rdatas))
            else:
                self._negative(response)  # the name exists, the type does not: NODATA
            self.counts["answered"] += 1
            return
        if self.records.exists(name.to_text(), now):
            self._negative(response)  # above a challenge record: an empty non-terminal
            self.counts["answered"] += 1
            return
        response.set_rcode(dns.rcode.NXDOMAIN)
        self._negative(response)
        self.counts["nxdomain"] += 1

    def _soa(self, owner: dns.name.Name, ttl: int) -> dns.rrset.RRset:
        soa = SOA(IN, dns.rdatatype.SOA, self.ns_name, self.rname, self.records.serial, *SOA_TIMERS, NEGATIVE_TTL)
        return dns.rrset.from_rdata(owner, ttl, soa)

    def _negative(self, response: dns.message.Message) -> None:
        # RFC 2308 3: the SOA in the authority section, with the negative TTL, lets resolvers
        # cache the "no" for that long.
        response.authority.append(self._soa(self.origin, NEGATIVE_TTL))

    def _bare_error(self, wire: bytes, rcode: dns.rcode.Rcode, outcome: str) -> bytes | None:
        """An error answer for a query we could not (or would not) read: only the header,
        with the query's ID, opcode and RD bit."""
        header = _header(wire)
        if header is None or header[1] & dns.flags.QR:
            self.counts["dropped"] += 1
            return None
        qid, flags = header
        msg = dns.message.Message(id=qid)
        msg.flags = dns.flags.QR | (flags & (dns.flags.RD | 0x7800))  # 0x7800: the opcode bits
        msg.set_rcode(rcode)
        self.counts[outcome] += 1
        return msg.to_wire()
