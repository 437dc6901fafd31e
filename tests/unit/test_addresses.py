import ipaddress
import random

import pytest

from appliance.tailnet.addresses import AddressPool, PoolExhausted
from appliance.tailnet.names import InvalidName, check_given_name, dns_label, unique_name

V4 = ipaddress.ip_network("100.64.0.0/10")
V6 = ipaddress.ip_network("fd7a:115c:a1e0::/48")


def test_sequential_starts_at_one_and_never_repeats():
    pool = AddressPool(V4)
    got = [str(pool.allocate()) for _ in range(3)]
    assert got == ["100.64.0.1", "100.64.0.2", "100.64.0.3"]
    pool.release("100.64.0.2")
    # a freed address is not handed out again straight away
    assert str(pool.allocate()) == "100.64.0.4"


def test_sequential_continues_after_loaded_addresses():
    pool = AddressPool(V6)
    pool.mark_used(["fd7a:115c:a1e0::7", None, "100.64.0.9"])
    assert str(pool.allocate()) == "fd7a:115c:a1e0::8"


def test_reserved_addresses_are_skipped():
    pool = AddressPool(ipaddress.ip_network("100.100.100.96/29"))
    got = {str(pool.allocate()) for _ in range(5)}
    assert "100.100.100.100" not in got and "100.100.100.96" not in got and "100.100.100.103" not in got
    with pytest.raises(PoolExhausted):
        pool.allocate()


def test_v6_dns_address_is_skipped():
    pool = AddressPool(V6)
    pool.mark_used([f"fd7a:115c:a1e0::{i:x}" for i in range(1, 0x53)])
    assert str(pool.allocate()) == "fd7a:115c:a1e0::54"


def test_random_allocation_is_unique_and_in_range():
    pool = AddressPool(V4, "random", rng=random.Random(7))
    seen = {pool.allocate() for _ in range(500)}
    assert len(seen) == 500 and all(a in V4 for a in seen)


def test_wraps_around_to_free_space():
    net = ipaddress.ip_network("100.64.0.0/29")
    pool = AddressPool(net)
    addrs = [pool.allocate() for _ in range(6)]
    pool.release(addrs[0])
    assert pool.allocate() == addrs[0]


@pytest.mark.parametrize(
    "hostname,label",
    [("MyLaptop", "mylaptop"), ("Bob's iPhone", "bob-s-iphone"), ("host.example.com", "host"),
     ("---", "node"), ("a" * 80, "a" * 63), ("über_box", "ber-box")],
)
def test_dns_labels(hostname, label):
    assert dns_label(hostname) == label


def test_unique_names_get_suffixes():
    assert unique_name("web", set()) == "web"
    assert unique_name("web", {"web"}) == "web-1"
    assert unique_name("web", {"web", "web-1"}) == "web-2"
    assert len(unique_name("a" * 63, {"a" * 63})) == 63


def test_given_name_check():
    assert check_given_name("db-1") == "db-1"
    for bad in ("", "Has Caps", "-x", "x-", "a" * 64, "dots.here"):
        with pytest.raises(InvalidName):
            check_given_name(bad)
