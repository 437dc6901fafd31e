"""Interactive registration over the real protocol (our client, the real server in-process):
the AuthURL, the follow-up answered the moment an admin decides, rejection, expiry, and the
Hostinfo of a waiting login trimmed (issue 11 item 1; issue 10's pending-login bound)."""

from __future__ import annotations

import gc
import time
import tracemalloc

import pytest
import trio

from appliance.control.authrequests import AUTH_ID_PREFIX
from appliance.http.limits import UNKEYED_REGISTER_RATE
from bench.controlclient import ControlClientError
from .test_control_loopback import WAIT, server  # noqa: F401  (the fixture)


async def start_login(server, nursery, name: str, **kw):
    c = server.client(name)
    with trio.fail_after(WAIT):
        await c.connect(nursery)
        doc = await c.login(**kw)
    url = doc["AuthURL"]
    base = server.running.config.server_url
    assert url.startswith(f"{base}/register/{AUTH_ID_PREFIX}") and not doc.get("MachineAuthorized")
    return c, url, url.rsplit("/", 1)[-1]


async def test_the_follow_up_is_answered_when_the_admin_decides(server, nursery):
    control = server.running.control
    c, url, auth_id = await start_login(server, nursery, "laptop")
    assert [r.auth_id for r in control.auth.waiting(control.tailnet.clock())] == [auth_id]
    answers = []

    async def follow():
        answers.append((await c.login(followup=url), trio.current_time()))

    nursery.start_soon(follow)
    await trio.sleep(0.5)
    assert answers == []  # it waits
    decided = trio.current_time()
    node = await control.register_pending(auth_id, "alice")
    with trio.fail_after(WAIT):
        while not answers:
            await trio.sleep(0.01)
    doc, at = answers[0]
    assert doc["MachineAuthorized"] and doc["User"]["ID"] == node.user_id
    assert at - decided < 0.5
    assert node.hostname == "laptop" and node.register_method == "cli"
    assert control.auth.waiting(control.tailnet.clock()) == []


async def test_a_rejected_login_gets_an_error_and_leaves_no_node(server, nursery):
    control = server.running.control
    c, url, auth_id = await start_login(server, nursery, "intruder")
    answers = []

    async def follow():
        answers.append(await c.login(followup=url))

    nursery.start_soon(follow)
    await trio.sleep(0.2)
    await control.reject(auth_id)
    with trio.fail_after(WAIT):
        while not answers:
            await trio.sleep(0.01)
    assert "rejected" in answers[0]["Error"]
    assert not any(n.hostname == "intruder" for n in control.tailnet.nodes.values())


async def test_a_follow_up_for_an_unknown_link_is_told_to_start_again(server, nursery):
    c = server.client("stranger")
    with trio.fail_after(WAIT):
        await c.connect(nursery)
        doc = await c.login(followup=f"http://x/register/{AUTH_ID_PREFIX}{'0' * 24}")
    assert "expired" in doc["Error"]


async def test_a_waiting_login_keeps_a_trimmed_hostinfo_only(server, nursery):
    """A login with a huge Hostinfo keeps a few hundred bytes, not the megabytes it sent."""
    big = {"Hostname": "big", "OS": "linux", "Services": [{"Proto": "tcp", "Port": i, "Description": "x" * 200}
                                                         for i in range(1000)]}
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(20):
            await start_login(server, nursery, f"big{i}", hostinfo={**big, "Hostname": f"big{i}"})
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    control = server.running.control
    assert len(control.auth.waiting(control.tailnet.clock())) == 20
    # 20 requests of ~250 KB of Hostinfo each: ~5 MB sent; what stays is connections and
    # the trimmed requests (well under 1 MB with the clients' own state).
    assert kept < 3 * 1024 * 1024, kept


async def test_auth_approve_lets_a_known_machine_back_and_asks_a_user_for_a_new_one(server, nursery):
    import pytest

    from appliance.errors import Invalid

    control, tailnet = server.running.control, server.running.tailnet
    c = server.client("returning")
    with trio.fail_after(WAIT):
        await c.connect(nursery)
        await c.register(server.auth_key)
    first = tailnet.node_by_key(c.node_key)
    c.node_key = "nodekey:" + "ab" * 32  # logged out; `tailscale up` again with a new node key
    with trio.fail_after(WAIT):
        doc = await c.login()
    again = await control.approve(doc["AuthURL"].rsplit("/", 1)[-1])
    node = tailnet.nodes[again.verdict.node_id]
    assert (node.id, node.user_id, node.node_key) == (first.id, first.user_id, c.node_key)

    _, _, new_id = await start_login(server, nursery, "stranger")
    with pytest.raises(Invalid, match="auth register"):
        await control.approve(new_id)
    await control.register_pending(new_id, "alice")  # still undecided, so it can be


async def test_a_started_login_completes_while_its_address_is_rate_limited(server, nursery):
    """The registration gate (2/s, burst 60 per source, for registrations without a valid key)
    counts a login when it starts; its follow-up is not counted, so a person whose address is
    flooded with new logins still gets in once an admin decides."""
    control = server.running.control
    c, url, auth_id = await start_login(server, nursery, "person")
    flood = server.client("flood")
    with trio.fail_after(WAIT):
        await flood.connect(nursery)
        assert await logins_until_refused(flood, 200) is not None, "the gate never refused"
    drained = time.monotonic()
    answers = []

    async def follow():
        answers.append(await c.login(followup=url))

    nursery.start_soon(follow)
    await trio.sleep(0.2)
    await control.register_pending(auth_id, "alice")
    with trio.fail_after(WAIT):
        while not answers:
            await trio.sleep(0.01)
    assert answers[0]["MachineAuthorized"]
    # And new logins from there are still refused meanwhile: at most what the bucket refilled
    # (2/s) since it was drained gets through, however slow the machine was.
    refill = int(UNKEYED_REGISTER_RATE[0] * (time.monotonic() - drained)) + 1
    with trio.fail_after(WAIT):
        assert await logins_until_refused(flood, refill + 1) is not None


async def logins_until_refused(client, attempts: int) -> int | None:
    """How many logins got through before the gate answered 429; None if none was refused."""
    for n in range(attempts):
        try:
            await client.login()
        except ControlClientError as e:
            assert "HTTP 429" in str(e)
            return n
    return None
