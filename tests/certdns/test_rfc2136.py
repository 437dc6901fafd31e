"""``provider: rfc2136`` against Debian's BIND 9, started here with a TSIG key and an
update-policy that lets that key change TXT records in its zone: records are added, seen by
queries, withdrawn; a wrong secret, an unknown key and an unreachable server are clear errors.
The whole chain with the real client is in tests/realclient/test_certs.py."""

from __future__ import annotations

import base64

import dns.update
import pytest
import trio

from appliance.certdns.errors import ProviderError
from appliance.certdns.rfc2136 import RFC2136Provider
from appliance.certdns.zone import CertZone
from appliance.config.model import CertificateSettings, RFC2136Settings
from tests.autocert.pebble import free_port

from .bind9 import run_named, txt_at

ZONE = "ts-rfc.test"
NAME = f"_acme-challenge.alpha.{ZONE}"


@pytest.fixture(scope="module")
def named(tmp_path_factory):
    with run_named(tmp_path_factory.mktemp("named"), ZONE, free_port()) as n:
        yield n


def settings(named, **over) -> RFC2136Settings:
    base = dict(server=named.server, zone=ZONE, tsig_key_name=named.key_name, tsig_algorithm=named.algorithm,
                tsig_secret=named.secret)
    base.update(over)
    return RFC2136Settings(**base)


async def test_publish_and_withdraw(named):
    provider = RFC2136Provider(settings(named))
    await provider.publish(NAME, "value-one")
    await provider.publish(NAME, "value-two")
    assert await trio.to_thread.run_sync(txt_at, named.port, NAME) == {"value-one", "value-two"}
    await provider.withdraw(NAME, "value-one")
    assert await trio.to_thread.run_sync(txt_at, named.port, NAME) == {"value-two"}
    await provider.withdraw(NAME, "value-two")
    assert await trio.to_thread.run_sync(txt_at, named.port, NAME) == set()


async def test_zone_sweeper_withdraws_after_the_lifetime(named):
    now = [0.0]
    zone = CertZone(CertificateSettings(enabled=True, provider="rfc2136", rfc2136=settings(named)), ZONE,
                    clock=lambda: now[0])
    name = f"_acme-challenge.beta.{ZONE}"
    await zone.publish(name, "swept")
    assert await trio.to_thread.run_sync(txt_at, named.port, name) == {"swept"}
    now[0] = 10_000.0
    await zone._withdraw(zone.records.expire(now[0]))
    assert await trio.to_thread.run_sync(txt_at, named.port, name) == set()
    assert zone.status()["provider"] == "rfc2136" and zone.status()["server"] == named.server


async def test_wrong_secret_is_refused_with_a_reason(named):
    wrong = base64.b64encode(b"w" * 32).decode()
    with pytest.raises(ProviderError, match="did not verify \\(BADSIG\\)"):
        await RFC2136Provider(settings(named, tsig_secret=wrong)).publish(NAME, "nope")
    with pytest.raises(ProviderError, match="does not know the TSIG key someone-else.*BADKEY"):
        await RFC2136Provider(settings(named, tsig_key_name="someone-else")).publish(NAME, "nope")
    assert await trio.to_thread.run_sync(txt_at, named.port, NAME) == set()


async def test_outside_the_policy_is_refused(named):
    provider = RFC2136Provider(settings(named))
    with pytest.raises(ProviderError, match="answered NOTZONE"):
        await provider.publish("_acme-challenge.elsewhere.example", "nope")
    # The policy grants TXT only: an A record would be refused, so build one by hand.
    update = dns.update.UpdateMessage(ZONE, keyring=provider.keyring, keyname=provider.keyname)
    update.add(f"alpha.{ZONE}", 30, "A", "192.0.2.1")
    with pytest.raises(ProviderError, match="answered REFUSED: .*update-policy"):
        await provider.exchange(update)


async def test_unreachable_server(named):
    provider = RFC2136Provider(settings(named, server=f"127.0.0.1:{free_port()}"))
    with pytest.raises(ProviderError, match="cannot reach"):
        await provider.publish(NAME, "nope")
