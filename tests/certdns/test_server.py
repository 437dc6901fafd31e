"""The Trio driver of the authoritative DNS server on real loopback sockets: UDP and TCP, the
fallback to TCP after truncation, pipelined TCP queries and per-network rate limiting."""

from __future__ import annotations

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import pytest
import trio

from appliance.certdns.authority import Authority
from appliance.certdns.framing import FrameReader, frame
from appliance.certdns.records import ChallengeRecords
from appliance.certdns.responselimit import ResponseLimiter
from appliance.certdns.server import DNSServer

HOST = "127.0.0.1"
NAME = "_acme-challenge.alpha.ts.test"
WAIT = 5


async def start(nursery, limiter=None) -> tuple[DNSServer, ChallengeRecords, int]:
    records = ChallengeRecords(600)
    server = DNSServer(Authority("ts.test", "vpn.example.com", records), f"{HOST}:0", limiter=limiter)
    port = await nursery.start(server.serve)
    return server, records, port


def txt(msg: dns.message.Message) -> set[str]:
    return {b"".join(r.strings).decode() for rrset in msg.answer for r in rrset}


async def test_udp_and_tcp_answer_the_same(nursery):
    _, records, port = await start(nursery)
    records.add(NAME, "token-1", trio.current_time())
    query = dns.message.make_query(NAME, "TXT")
    with trio.fail_after(WAIT):
        udp = await dns.asyncquery.udp(query, HOST, port=port)
        tcp = await dns.asyncquery.tcp(query, HOST, port=port)
    assert txt(udp) == txt(tcp) == {"token-1"}
    assert udp.flags & dns.flags.AA and tcp.flags & dns.flags.AA
    with trio.fail_after(WAIT):
        for ask in (dns.asyncquery.udp, dns.asyncquery.tcp):
            refused = await ask(dns.message.make_query("example.com", "A"), HOST, port=port)
            assert refused.rcode() == dns.rcode.REFUSED and not refused.answer


async def test_truncated_udp_answer_is_fetched_again_over_tcp(nursery):
    _, records, port = await start(nursery)
    for i in range(4):
        records.add(NAME, f"{i}" + "x" * 250, trio.current_time())
    query = dns.message.make_query(NAME, "TXT")
    with trio.fail_after(WAIT):
        short = await dns.asyncquery.udp(query, HOST, port=port, ignore_trailing=True)
        full, used_tcp = await dns.asyncquery.udp_with_fallback(query, HOST, port=port)
    assert short.flags & dns.flags.TC and not short.answer
    assert used_tcp and len(txt(full)) == 4


async def test_pipelined_tcp_queries(nursery):
    _, _, port = await start(nursery)
    queries = [dns.message.make_query("ts.test", t) for t in ("SOA", "NS", "TXT")]
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream(HOST, port)
        async with stream:
            await stream.send_all(b"".join(frame(q.to_wire()) for q in queries))  # one segment
            reader, answers = FrameReader(), []
            while len(answers) < len(queries):
                data = await stream.receive_some(65536)
                assert data, "server closed early"
                reader.receive_data(data)
                while (m := reader.next_message()) is not None:
                    answers.append(dns.message.from_wire(m))
    assert [a.id for a in answers] == [q.id for q in queries]
    assert [a.answer[0].rdtype if a.answer else None for a in answers][:2] == [6, 2]


async def test_garbage_on_tcp_closes_only_that_connection(nursery):
    _, _, port = await start(nursery)
    with trio.fail_after(WAIT):
        bad = await trio.open_tcp_stream(HOST, port)
        await bad.send_all(b"\x00\x00garbage")  # a zero-length frame
        assert await bad.receive_some(100) == b""  # closed
        await bad.aclose()
        good = await dns.asyncquery.tcp(dns.message.make_query("ts.test", "SOA"), HOST, port=port)
    assert good.answer


async def test_udp_flood_from_one_network_is_limited(nursery):
    limiter = ResponseLimiter(rate=0.001, burst=3, slip=2)
    server, _, port = await start(nursery, limiter)
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind((HOST, 0))
    query = dns.message.make_query("ts.test", "SOA")
    with sock:
        for _ in range(9):
            await sock.sendto(query.to_wire(), (HOST, port))
        replies = []
        with trio.move_on_after(1):
            while len(replies) < 9:
                replies.append(dns.message.from_wire((await sock.recvfrom(4096))[0]))
    full = [r for r in replies if not r.flags & dns.flags.TC]
    slipped = [r for r in replies if r.flags & dns.flags.TC]
    assert len(full) == 3 and all(r.answer for r in full)
    assert len(slipped) == 3 and not any(r.answer for r in slipped)  # every 2nd of the 6 over
    assert limiter.dropped == 3
    # TCP is not limited: the source is proven by the handshake.
    with trio.fail_after(WAIT):
        assert (await dns.asyncquery.tcp(query, HOST, port=port)).answer


async def test_listen_address_taken_is_a_clear_error(nursery):
    _, _, port = await start(nursery)
    other = DNSServer(Authority("ts.test", "vpn.example.com", ChallengeRecords(600)), f"{HOST}:{port}")
    with pytest.raises(OSError, match=r"dns.certificates.listen_addr 127.0.0.1:\d+: cannot listen"):
        await nursery.start(other.serve)


async def test_a_bug_in_answering_ends_only_that_query(nursery, monkeypatch, caplog):
    server, _, port = await start(nursery)
    real = server.authority.respond
    broken = {"left": 2}

    def respond(wire, now, *, tcp=False):
        if broken["left"]:
            broken["left"] -= 1
            raise RuntimeError("simulated bug")
        return real(wire, now, tcp=tcp)

    monkeypatch.setattr(server.authority, "respond", respond)
    query = dns.message.make_query("ts.test", "SOA")
    with trio.fail_after(WAIT):
        with pytest.raises(EOFError):
            await dns.asyncquery.tcp(query, HOST, port=port)  # the connection ends
        with trio.move_on_after(0.5):
            await dns.asyncquery.udp(query, HOST, port=port)  # no answer to this one
        assert (await dns.asyncquery.udp(query, HOST, port=port)).answer  # the server goes on
        assert (await dns.asyncquery.tcp(query, HOST, port=port)).answer
    assert any("simulated bug" in r.getMessage() for r in caplog.records)
