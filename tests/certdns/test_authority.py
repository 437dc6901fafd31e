"""The embedded authoritative DNS server's core, byte level: query bytes in, answer bytes out.

Queries are built with dnspython (as a resolver would send them) or by hand where a resolver
would never send them; answers are parsed back and checked field by field."""

from __future__ import annotations

import os
import random
import struct

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsigkeyring
import dns.update
import pytest

from appliance.certdns.authority import MAX_UDP_PAYLOAD, NEGATIVE_TTL, PLAIN_UDP_SIZE, Authority
from appliance.certdns.records import ChallengeRecords

ZONE = "ts.test"
NS = "vpn.example.com"
CHALLENGE = "_acme-challenge.alpha.ts.test"
TOKEN = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
LIFETIME = 600.0


@pytest.fixture
def records() -> ChallengeRecords:
    return ChallengeRecords(LIFETIME, serial=2024)


@pytest.fixture
def auth(records) -> Authority:
    return Authority(ZONE, NS, records)


def ask(auth: Authority, name: str, rdtype: str = "A", *, now: float = 1.0, tcp: bool = False,
        **kw) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kw)
    wire = auth.respond(query.to_wire(), now, tcp=tcp)
    assert wire is not None
    answer = dns.message.from_wire(wire)
    assert answer.id == query.id and answer.flags & dns.flags.QR
    assert not answer.flags & dns.flags.RA, "never offers recursion"
    return answer


def txt_values(msg: dns.message.Message) -> set[str]:
    return {b"".join(r.strings).decode() for rrset in msg.answer for r in rrset}


# --- what it answers ------------------------------------------------------------------------


def test_soa_and_ns_at_the_apex(auth):
    soa = ask(auth, ZONE, "SOA")
    assert soa.rcode() == dns.rcode.NOERROR and soa.flags & dns.flags.AA
    rr = soa.answer[0]
    assert rr.rdtype == dns.rdatatype.SOA and rr[0].mname.to_text() == NS + "." and rr[0].minimum == NEGATIVE_TTL
    ns = ask(auth, ZONE, "NS")
    assert [r.target.to_text() for r in ns.answer[0]] == [NS + "."]


def test_challenge_txt_is_served_while_it_lives(auth, records):
    records.add(CHALLENGE, TOKEN, now=0.0)
    answer = ask(auth, CHALLENGE, "TXT", now=5.0)
    assert answer.rcode() == dns.rcode.NOERROR and answer.flags & dns.flags.AA
    assert txt_values(answer) == {TOKEN}
    # After its lifetime the name is gone: NXDOMAIN with the SOA for negative caching.
    gone = ask(auth, CHALLENGE, "TXT", now=LIFETIME + 1)
    assert gone.rcode() == dns.rcode.NXDOMAIN and not gone.answer
    assert gone.authority[0].rdtype == dns.rdatatype.SOA and gone.authority[0].ttl == NEGATIVE_TTL


def test_serial_changes_with_the_records(auth, records):
    before = ask(auth, ZONE, "SOA").answer[0][0].serial
    records.add(CHALLENGE, TOKEN, now=0.0)
    after = ask(auth, ZONE, "SOA").answer[0][0].serial
    assert after != before


def test_two_values_at_one_name(auth, records):
    # A wildcard and a plain certificate share _acme-challenge.<name>.
    records.add(CHALLENGE, TOKEN, now=0.0)
    records.add(CHALLENGE, "second-value", now=0.0)
    assert txt_values(ask(auth, CHALLENGE, "TXT")) == {TOKEN, "second-value"}


def test_case_of_the_question_is_kept(auth, records):
    # Resolvers randomize letter case (0x20) and check that the answer repeats it.
    records.add(CHALLENGE, TOKEN, now=0.0)
    mixed = "_AcMe-ChAlLeNgE.AlPhA.Ts.TeSt"
    answer = ask(auth, mixed, "TXT")
    assert answer.question[0].name.to_text() == mixed + "."
    assert answer.answer[0].name.to_text() == mixed + "."
    assert txt_values(answer) == {TOKEN}


def test_other_types_and_empty_names_get_nodata(auth, records):
    records.add(CHALLENGE, TOKEN, now=0.0)
    for name, rdtype in ((CHALLENGE, "A"), (ZONE, "A"), (ZONE, "TXT"), ("alpha.ts.test", "A")):
        answer = ask(auth, name, rdtype)
        assert answer.rcode() == dns.rcode.NOERROR and not answer.answer, (name, rdtype)
        assert answer.authority[0].rdtype == dns.rdatatype.SOA
    # No A records for nodes: MagicDNS answers those inside the tailnet, not the public zone.
    assert ask(auth, "beta.ts.test", "A").rcode() == dns.rcode.NXDOMAIN


def test_any_gets_the_rfc8482_answer(auth, records):
    records.add(CHALLENGE, TOKEN, now=0.0)
    for name in (ZONE, CHALLENGE):
        answer = ask(auth, name, "ANY")
        assert [r.rdtype for r in answer.answer] == [dns.rdatatype.HINFO]
        assert answer.answer[0][0].cpu == b"RFC8482"


# --- what it refuses ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["example.com", "ts.test.evil.com", "test", ".", "nots.test"])
def test_names_outside_the_zone_are_refused(auth, name):
    answer = ask(auth, name, "A")
    assert answer.rcode() == dns.rcode.REFUSED
    assert not answer.answer and not answer.authority and not answer.flags & dns.flags.AA


def test_recursion_is_refused_not_performed(auth):
    # RD set, a name elsewhere: an open resolver would go and look; we refuse.
    query = dns.message.make_query("www.example.com", "A")
    assert query.flags & dns.flags.RD
    answer = dns.message.from_wire(auth.respond(query.to_wire(), 1.0))
    assert answer.rcode() == dns.rcode.REFUSED and not answer.flags & dns.flags.RA
    assert answer.flags & dns.flags.RD  # copied from the query, as RFC 1035 says


def test_rd_on_a_name_in_the_zone_is_still_answered(auth, records):
    # Go's resolver (pebble's, Let's Encrypt's too) always sets RD.
    records.add(CHALLENGE, TOKEN, now=0.0)
    answer = ask(auth, CHALLENGE, "TXT")
    assert txt_values(answer) == {TOKEN} and not answer.flags & dns.flags.RA


@pytest.mark.parametrize("rdtype", ["AXFR", "IXFR", "MAILB"])
def test_zone_transfers_are_refused(auth, rdtype):
    assert ask(auth, ZONE, rdtype).rcode() == dns.rcode.REFUSED


def test_chaos_class_is_refused(auth):
    answer = ask(auth, "version.bind", "TXT", rdclass=dns.rdataclass.CH)
    assert answer.rcode() == dns.rcode.REFUSED


def test_dynamic_update_is_not_implemented(auth):
    update = dns.update.UpdateMessage(ZONE)
    update.add(CHALLENGE, 30, "TXT", '"forged"')
    answer = dns.message.from_wire(auth.respond(update.to_wire(), 1.0))
    assert answer.rcode() == dns.rcode.NOTIMP and answer.opcode() == dns.opcode.UPDATE and answer.id == update.id


def test_signed_query_is_refused(auth):
    query = dns.message.make_query(ZONE, "SOA")
    query.use_tsig(dns.tsigkeyring.from_text({"k.": "c2VjcmV0c2VjcmV0"}), "k.")
    answer = dns.message.from_wire(auth.respond(query.to_wire(), 1.0))
    assert answer.rcode() == dns.rcode.REFUSED and answer.id == query.id


# --- malformed input ------------------------------------------------------------------------


def test_responses_and_runts_get_no_answer(auth):
    query = dns.message.make_query(ZONE, "SOA")
    response = dns.message.make_response(query)
    assert auth.respond(response.to_wire(), 1.0) is None  # answering answers would loop
    assert auth.respond(b"", 1.0) is None
    assert auth.respond(b"\x12\x34\x00", 1.0) is None


def test_garbage_after_a_header_gets_formerr(auth):
    header = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0)
    answer = dns.message.from_wire(auth.respond(header + b"\xff\xff\xff", 1.0))
    assert answer.id == 0xBEEF and answer.rcode() == dns.rcode.FORMERR
    assert answer.flags & dns.flags.RD and not answer.flags & dns.flags.AA
    # Trailing junk after a good question, and two questions: also FORMERR.
    good = dns.message.make_query(ZONE, "SOA").to_wire()
    assert dns.message.from_wire(auth.respond(good + b"junk", 1.0)).rcode() == dns.rcode.FORMERR
    two = dns.message.make_query(ZONE, "SOA")
    two.question.append(dns.message.make_query("x.ts.test", "A").question[0])
    assert dns.message.from_wire(auth.respond(two.to_wire(), 1.0)).rcode() == dns.rcode.FORMERR


def test_random_bytes_never_raise(auth):
    rng = random.Random(15)
    base = dns.message.make_query(CHALLENGE, "TXT", use_edns=0).to_wire()
    for _ in range(3000):
        if rng.random() < 0.5:
            wire = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 80)))
        else:  # a real query with a few bytes flipped or cut: reaches deeper into the parser
            b = bytearray(base)
            for _ in range(rng.randrange(1, 4)):
                b[rng.randrange(len(b))] = rng.getrandbits(8)
            wire = bytes(b[: rng.randrange(1, len(b) + 1)])
        out = auth.respond(wire, 1.0)
        if out is not None:
            msg = dns.message.from_wire(out)
            assert msg.flags & dns.flags.QR and len(out) <= MAX_UDP_PAYLOAD
    big = auth.respond(os.urandom(4000), 1.0)  # a datagram cut at the read limit
    assert big is None or dns.message.from_wire(big).rcode() != dns.rcode.NOERROR


# --- EDNS0 and truncation -------------------------------------------------------------------


def test_edns_is_answered_with_edns(auth):
    answer = ask(auth, ZONE, "SOA", use_edns=0, payload=4096)
    assert answer.edns == 0 and answer.payload == MAX_UDP_PAYLOAD
    plain = ask(auth, ZONE, "SOA")
    assert plain.edns == -1  # no OPT to a client that sent none


def test_unknown_edns_version_gets_badvers(auth):
    answer = ask(auth, ZONE, "SOA", use_edns=1)
    assert answer.rcode() == dns.rcode.BADVERS and answer.edns == 0 and not answer.answer


def many_values(records: ChallengeRecords) -> None:
    # Four long values (the per-name maximum): about 1 KiB of answer.
    for i in range(4):
        records.add(CHALLENGE, f"{i}" + "v" * 250, now=0.0)


def test_too_large_for_plain_udp_is_truncated(auth, records):
    many_values(records)
    query = dns.message.make_query(CHALLENGE, "TXT")
    wire = auth.respond(query.to_wire(), 1.0)
    assert len(wire) <= PLAIN_UDP_SIZE
    answer = dns.message.from_wire(wire)
    assert answer.flags & dns.flags.TC and not answer.answer and answer.rcode() == dns.rcode.NOERROR


def test_edns_payload_lets_the_answer_through(auth, records):
    many_values(records)
    answer = ask(auth, CHALLENGE, "TXT", use_edns=0, payload=1232)
    assert not answer.flags & dns.flags.TC and len(txt_values(answer)) == 4


def test_small_edns_payload_counts_as_512(auth, records):
    many_values(records)
    answer = ask(auth, CHALLENGE, "TXT", use_edns=0, payload=100)
    assert answer.flags & dns.flags.TC and answer.edns == 0  # the OPT stays in a truncated answer


def test_tcp_carries_what_udp_cannot(auth, records):
    many_values(records)
    answer = ask(auth, CHALLENGE, "TXT", tcp=True)
    assert not answer.flags & dns.flags.TC and len(txt_values(answer)) == 4


def test_slip_answer_is_empty_and_truncated(auth, records):
    records.add(CHALLENGE, TOKEN, now=0.0)
    query = dns.message.make_query(CHALLENGE, "TXT")
    wire = auth.truncated(query.to_wire())
    answer = dns.message.from_wire(wire)
    assert answer.flags & dns.flags.TC and not answer.answer and len(wire) <= len(query.to_wire())
