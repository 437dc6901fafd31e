"""The pure pieces around the DNS core: challenge records with expiry and limits, the
per-network response limiter, and DNS-over-TCP framing."""

from __future__ import annotations

import pytest

from appliance.certdns.errors import TooMany
from appliance.certdns.framing import FrameError, FrameReader, frame
from appliance.certdns.records import ChallengeRecords
from appliance.certdns.responselimit import ResponseLimiter, Verdict, source_network

NAME = "_acme-challenge.alpha.ts.test"


def test_records_expire_and_are_returned_for_withdrawal():
    rec = ChallengeRecords(60, serial=7)
    assert rec.add(NAME + ".", "one", now=0) == []  # trailing dot and case do not matter
    rec.add(NAME.upper(), "two", now=30)
    assert rec.values(NAME, now=59) == ("one", "two")
    assert rec.values(NAME, now=61) == ("two",)  # the first lived its 60 s
    gone = rec.expire(now=61)
    assert [(r.name, r.value) for r in gone] == [(NAME, "one")]
    assert rec.expire(now=91)[0].value == "two" and len(rec) == 0
    assert not rec.exists("alpha.ts.test", now=91)


def test_adding_again_refreshes_instead_of_duplicating():
    rec = ChallengeRecords(60)
    rec.add(NAME, "v", now=0)
    rec.add(NAME, "v", now=50)
    assert len(rec) == 1 and rec.values(NAME, now=100) == ("v",)


def test_oldest_value_of_a_name_goes_beyond_the_limit():
    rec = ChallengeRecords(600, max_per_name=2)
    rec.add(NAME, "a", now=0)
    rec.add(NAME, "b", now=1)
    pushed = rec.add(NAME, "c", now=2)
    assert [r.value for r in pushed] == ["a"] and rec.values(NAME, now=3) == ("b", "c")


def test_zone_wide_limit_refuses():
    rec = ChallengeRecords(600, max_records=2)
    rec.add("_acme-challenge.a.ts.test", "1", now=0)
    rec.add("_acme-challenge.b.ts.test", "1", now=0)
    with pytest.raises(TooMany):
        rec.add("_acme-challenge.c.ts.test", "1", now=0)
    rec.add("_acme-challenge.c.ts.test", "1", now=601)  # once the others expired, there is room


def test_names_above_a_record_exist_while_it_lives():
    rec = ChallengeRecords(60)
    rec.add(NAME, "v", now=0)
    assert rec.exists("alpha.ts.test", now=1) and rec.exists("ts.test", now=1)
    assert not rec.exists("beta.ts.test", now=1)
    assert not rec.exists("alpha.ts.test", now=61)  # expired but not yet swept
    rec.remove(NAME, "v")
    assert not rec.exists("alpha.ts.test", now=1)


def test_serial_moves_on_every_change_and_never_becomes_zero():
    rec = ChallengeRecords(60, serial=2**32 - 1)
    rec.add(NAME, "v", now=0)
    assert rec.serial == 1


def test_limiter_groups_sources_by_network():
    assert source_network("192.0.2.77") == "192.0.2.0/24"
    assert source_network("::ffff:192.0.2.77") == "192.0.2.0/24"
    assert source_network("2001:db8:1:2:3::1") == "2001:db8:1::/56"


def test_limiter_sends_then_slips_and_drops():
    now = [0.0]
    lim = ResponseLimiter(rate=1.0, burst=3, slip=2, clock=lambda: now[0])
    verdicts = [lim.check("198.51.100.1") for _ in range(7)]
    assert verdicts[:3] == [Verdict.SEND] * 3
    assert verdicts[3:] == [Verdict.DROP, Verdict.SLIP, Verdict.DROP, Verdict.SLIP]
    assert lim.check("203.0.113.9") is Verdict.SEND  # another network has its own budget
    assert lim.check("198.51.100.200") is Verdict.DROP  # same /24, same budget
    now[0] += 1.0
    assert lim.check("198.51.100.1") is Verdict.SEND  # the bucket refills
    assert lim.dropped == 3 and lim.slipped == 2


def test_frames_whole_split_and_coalesced():
    msgs = [b"\x01" * 12, b"\x02" * 300, b"\x03" * 40]
    stream = b"".join(frame(m) for m in msgs)
    for chunks in ([stream], [stream[i:i + 1] for i in range(len(stream))]):
        reader, out = FrameReader(), []
        for c in chunks:
            reader.receive_data(c)
            while (m := reader.next_message()) is not None:
                out.append(m)
        assert out == msgs and reader.pending == 0


def test_bad_frames():
    with pytest.raises(FrameError):
        frame(b"x" * 65536)
    reader = FrameReader()
    reader.receive_data(b"\x00\x00")
    with pytest.raises(FrameError):
        reader.next_message()
    small = FrameReader(max_message=100)
    small.receive_data(b"\x01\x00")
    with pytest.raises(FrameError):
        small.next_message()


def test_limiter_caps_all_networks_together():
    now = [0.0]
    lim = ResponseLimiter(rate=100, burst=100, total_rate=1.0, total_burst=5, clock=lambda: now[0])
    verdicts = [lim.check(f"198.51.{i}.1") for i in range(8)]  # eight networks, one query each
    assert verdicts == [Verdict.SEND] * 5 + [Verdict.DROP] * 3
    now[0] += 1.0
    assert lim.check("203.0.113.1") is Verdict.SEND


def test_one_noisy_network_does_not_spend_the_shared_budget():
    now = [0.0]
    lim = ResponseLimiter(rate=1.0, burst=2, slip=0, total_rate=1.0, total_burst=3, clock=lambda: now[0])
    noisy = [lim.check("198.51.100.1") for _ in range(10)]
    assert noisy.count(Verdict.SEND) == 2
    assert lim.check("203.0.113.1") is Verdict.SEND  # the third shared token is still there
