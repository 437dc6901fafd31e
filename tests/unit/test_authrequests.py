"""The table of pending auth requests: IDs, bounds, expiry, verdicts (issue 11 item 1, issue 10's
bound on pending logins)."""

from __future__ import annotations

import gc
import tracemalloc
from datetime import datetime, timedelta, timezone

import pytest
import trio

from appliance.control.authrequests import (
    AUTH_ID_PREFIX, MAX_HOSTINFO_TEXT, AuthRequests, TooManyRequests, Verdict, parse_auth_id, trim_hostinfo,
)
from appliance.control.hostinfo import Hostinfo, NetInfo, Service
from appliance.errors import Conflict, Invalid, NotFound
from appliance.http.limits import source_of_peer

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def start(table: AuthRequests, n: int, remote: str = "192.0.2.1:5000", now: datetime = T0,
          hostinfo: Hostinfo | None = None):
    return table.start_registration(machine_key=f"mkey:{n:064x}", node_key=f"nodekey:{n:064x}",
                                    hostinfo=hostinfo or Hostinfo(hostname=f"m{n}"), remote=remote, now=now)


def test_auth_ids_look_like_headscales_and_parse_back():
    ids = {start(AuthRequests(), i).auth_id for i in range(200)}
    assert len(ids) == 200
    for i in ids:
        assert i.startswith(AUTH_ID_PREFIX) and len(i) == 38 and parse_auth_id(i) == i
        assert parse_auth_id(i[len(AUTH_ID_PREFIX):]) == i  # the bare digits work too
    for bad in ("", "hskey-authreq-", "hskey-authreq-" + "g" * 24, "-rf", "x" * 1000, " " + i):
        with pytest.raises(Invalid):
            parse_auth_id(bad)


def test_hostinfo_is_trimmed_to_the_fields_and_sizes_kept():
    big = Hostinfo(hostname="h" * 10_000, os="linux", services=tuple(Service("tcp", i) for i in range(10_000)),
                   net_info=NetInfo(link_type="y" * 100_000), request_tags=("tag:a", "tag:b"), os_version="7",
                   ssh_host_keys=("ssh-ed25519 AAAA",), push_device_token="t" * 1000)
    assert trim_hostinfo(big) == Hostinfo(hostname="h" * MAX_HOSTINFO_TEXT, os="linux", os_version="7",
                                          request_tags=("tag:a", "tag:b"))
    assert trim_hostinfo(None) == Hostinfo()
    for tags in (("tag:a",) * 17, ("tag:" + "x" * 200,)):
        with pytest.raises(Invalid):
            trim_hostinfo(Hostinfo(request_tags=tags))


def test_sources_are_addresses_and_ipv6_64s():
    """Requests count per source as the registration rate gate counts them (peers are named
    ip:port, IPv6 without brackets)."""
    assert start(AuthRequests(), 1, remote="192.0.2.7:41641").source == "192.0.2.7"
    assert (source_of_peer("2001:db8:1:2::5:41641") == source_of_peer("2001:db8:1:2:ffff::9:1")
            == start(AuthRequests(), 1, remote="2001:db8:1:2::5:41641").source == "2001:db8:1:2::/64")
    assert source_of_peer("::ffff:192.0.2.7:1") == "192.0.2.7"
    assert source_of_peer("local") == "local"


def test_the_same_machine_asking_again_gets_the_same_request():
    table = AuthRequests()
    a = start(table, 1)
    assert start(table, 1) is a and len(table) == 1
    other_key = table.start_registration(machine_key=a.machine_key, node_key="nodekey:" + "f" * 64,
                                         hostinfo=None, remote="192.0.2.1:1", now=T0)
    assert other_key is not a and len(table) == 1 and a.done.is_set()  # replaced, its waiter woken


def test_a_flooding_source_replaces_only_its_own_oldest_requests():
    table = AuthRequests(max_total=100, max_per_source=5)
    person = start(table, 0, remote="198.51.100.9:1")
    flood = [start(table, i, remote="203.0.113.1:1") for i in range(1, 50)]
    assert table.get(person.auth_id, T0) is person
    assert len(table) == 6
    assert [r.auth_id for r in table.waiting(T0)][1:] == [r.auth_id for r in flood[-5:]]


def test_a_full_table_refuses_new_requests_and_keeps_the_old():
    table = AuthRequests(max_total=10, max_per_source=10)
    first = [start(table, i, remote=f"192.0.2.{i}:1") for i in range(10)]
    with pytest.raises(TooManyRequests):
        start(table, 99, remote="192.0.2.99:1")
    assert all(table.get(r.auth_id, T0) is r for r in first)


def test_requests_expire_and_their_waiters_learn_it():
    table = AuthRequests(lifetime=timedelta(minutes=15))
    r = start(table, 1)
    assert table.waiting(T0 + timedelta(minutes=14)) == [r]
    assert table.waiting(T0 + timedelta(minutes=15)) == []
    assert r.done.is_set() and r.verdict is None
    with pytest.raises(NotFound):
        table.pending(r.auth_id, T0 + timedelta(minutes=16))


async def test_a_verdict_wakes_the_waiter_at_once():
    table = AuthRequests()
    r = start(table, 1)
    got = []

    async def waiter():
        got.append(await r.wait(T0))

    async with trio.open_nursery() as n:
        n.start_soon(waiter)
        await trio.sleep(0.05)
        assert got == []
        table.decide(r, Verdict(True, 42))
        with trio.fail_after(1):
            while not got:
                await trio.sleep(0.001)
    assert got == [Verdict(True, 42)]
    with pytest.raises(Conflict):
        table.pending(r.auth_id, T0)  # decided once
    assert table.get(r.auth_id, T0) is r  # a late follow-up still finds the verdict


def test_ten_thousand_pending_logins_with_the_largest_kept_hostinfo_cost_under_50_mb():
    """Issue 10's bound, measured on the table itself; bench/pending_logins.py measures the RSS
    of a real server fed over Noise (bench/README.md). Every kept field at its largest."""
    texts = {k: "x" * 100_000 for k in ("hostname", "os", "os_version", "device_model", "ipn_version",
                                         "go_arch", "distro", "distro_version")}
    table = AuthRequests()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(10_000):
            # Each login's tags are its own objects, as the boundary parses them per request.
            tags = tuple(f"tag:{i}-{j}".ljust(100, "t") for j in range(16))
            start(table, i, remote=f"10.{i // 256 % 256}.{i % 256}.{i // 65536}:1",
                  hostinfo=Hostinfo(request_tags=tags, **texts))
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(table) == 10_000
    # Measured 47 MB here (13 MB with a usual Hostinfo): every kept tag and text is a string
    # object of its own in the typed Hostinfo; the bar is 50 MB.
    assert used < 50 * 1024 * 1024, used
