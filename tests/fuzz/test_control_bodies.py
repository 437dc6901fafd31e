"""Fuzzing the control plane's request handlers (issue 10, item 6), in-process.

The real server (appliance.serve: ControlService, Tailnet on a tmp SQLite file, the policy
with autoApprovers, its recompiler and auto-approver) runs in its own Trio thread; hypothesis
draws bodies for every endpoint from the wire schemas, mutates them, and each is handed to
ControlService.handle exactly as the HTTP/2 server hands a request over. The SSH check's
action URL (/machine/ssh/action/SRC/to/DST?local_user=...&auth_id=...) takes its outside
bytes in the path and query: those are drawn instead. For every example:
nothing escapes the handler but what the HTTP/2 server expects (StreamGone), the answer is
never a 500, a 400 says why, and no ERROR is logged. After the run the background tasks still
work (a new node is compiled and mapped) and the memory the server holds stays bounded.

Short and deterministic in CI; TRIOSCALE_FUZZ_EXAMPLES=20000 for a long run by hand (results
in bench/README.md).
"""

from __future__ import annotations

import gc
import json
from collections import Counter
import logging
import os
import tracemalloc

from dataclasses import dataclass

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.control.codec import to_json
from appliance.control.hostinfo import Hostinfo, parse_hostinfo
from appliance.control.mapframes import MapFrameReader
from appliance.control.service import NoisePeer
from appliance.control.wire import (
    AuditLogRequest, HealthChangeRequest, MapRequest, PingResponse, RegisterRequest,
    SetDeviceAttributesRequest,
)
from appliance.control.setdns import SetDNSRequest
from appliance.http.h2server import Request, StreamGone
from appliance.serve import serve
from bench.controlclient import key_text, new_private_key, public_of

from ..trio_thread import TrioThread
from ..unit.test_control_loopback import free_port, loopback_config
from .schemas import body_bytes, mutated

EXAMPLES = int(os.environ.get("TRIOSCALE_FUZZ_EXAMPLES", "200"))
HANDLER_DEADLINE = 10.0  # no body may make a handler wait (a real follow-up never comes here)
# Memory still held after replaying every example once more: the state the bodies leave (a
# few nodes, at most 32 pending logins from its one source) and nothing per request.
MEMORY_BOUND = 16 * 1024 * 1024
# Held after a third replay beyond the second: the same requests again must not grow it.
REPLAY_GROWTH_BOUND = 256 * 1024
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
RECORDED: list[tuple[str, str, bytes, int]] = []  # every example, for the memory check
ANSWERS: Counter = Counter()  # (path, status): printed with -s, to see what the run reached

POLICY = """{
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
  "tagOwners": {"tag:fuzz": ["alice@example.com"]},
  "autoApprovers": {"routes": {"10.50.0.0/16": ["alice@example.com"]}, "exitNode": ["alice@example.com"]},
  "ssh": [{"action": "check", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["root"],
           "checkPeriod": "1h"}],
}"""


class Machine:
    """A machine identity and its node key: the fuzz reuses a few nodes instead of creating
    one per example (a machine has one node; a second key would re-authenticate it)."""

    def __init__(self) -> None:
        self.peer = NoisePeer(key_text("mkey", public_of(new_private_key())), 133, "fuzz")
        self.node_keys = [key_text("nodekey", public_of(new_private_key()))]
        self.node_id = 0  # once registered


class Recorder:
    """Stands in for the HTTP/2 response. A streaming map ends after its first frame, as when
    the client goes away (the handler gets StreamGone, as from the real server)."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.body = bytearray()
        self.headers_sent = False
        self.frames = 0

    async def start(self, status: int, headers=(), end: bool = False) -> None:
        assert not self.headers_sent, "headers sent twice"
        self.status, self.headers_sent = status, True

    async def send(self, data: bytes, end: bool = False) -> None:
        assert self.headers_sent, "data before headers"
        self.body += data
        self.frames += 1
        if not end:
            raise StreamGone()

    async def simple(self, status: int, body: bytes, content_type: str = "") -> None:
        await self.start(status)
        if body:
            await self.send(body, end=True)


class Conn:
    def __init__(self, peer: NoisePeer) -> None:
        self.context = peer
        self.name = "fuzz"


def start_server(tmp) -> tuple[TrioThread, object]:
    """appliance.serve in a Trio loop of its own thread; returns the loop and the Running."""
    cfg = loopback_config(tmp, free_port(), policy={"mode": "database"})
    loop = TrioThread("fuzz-server")

    async def start():
        return await loop.nursery.start(serve, cfg)

    return loop, loop.call(start)


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Fuzzed:
    loop: TrioThread
    running: object  # appliance.serve.Running
    machines: list[Machine]
    auth_key: str
    errors: "ErrorLog"

    def call(self, afn, *args):
        return self.loop.call(afn, *args)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    loop, running = start_server(tmp_path_factory.mktemp("fuzz"))
    errors = ErrorLog()
    logging.getLogger("appliance").addHandler(errors)

    async def setup():
        t = running.tailnet
        await t.create_user("alice", email="alice@example.com")
        _, key = await t.create_preauth_key("alice", reusable=True)
        await running.policy.set(POLICY)
        return key

    f = Fuzzed(loop, running, [Machine() for _ in range(4)], loop.call(setup), errors)
    for i, m in enumerate(f.machines):  # the pool's nodes exist from the start
        for key in m.node_keys:
            body = json.dumps({"Version": 133, "NodeKey": key, "Auth": {"AuthKey": f.auth_key},
                               "Hostinfo": to_json_hostinfo(f"pool-{i}", [])}).encode()
            assert f.call(handle, running, "POST", "/machine/register", body, m.peer).status == 200
        m.node_id = running.tailnet.node_by_key(m.node_keys[0]).id
    try:
        yield f
    finally:
        logging.getLogger("appliance").removeHandler(errors)
        loop.close()
    assert loop.failure is None, f"the server's loop ended: {loop.failure!r}"


async def handle(running, method: str, path: str, body: bytes, peer: NoisePeer) -> Recorder:
    with trio.fail_after(HANDLER_DEADLINE):
        return await handle_nowait(running, method, path, body, peer)


async def handle_nowait(running, method: str, path: str, body: bytes, peer: NoisePeer) -> Recorder:
    """What the HTTP/2 server does with a complete request (h2server._run_handler)."""
    resp = Recorder()
    req = Request(1, method, path, [("ts-lb", "x")], bytearray(body))
    try:
        await running.control.handle(req, resp, Conn(peer))
    except StreamGone:
        pass
    return resp


ENDPOINTS = {
    "/machine/register": ("POST", RegisterRequest),
    "/machine/map": ("POST", MapRequest),
    "/machine/update-health": ("POST", HealthChangeRequest),
    "/machine/set-dns": ("POST", SetDNSRequest),
    "/machine/set-device-attr": ("PATCH", SetDeviceAttributesRequest),
    "/machine/audit-log": ("POST", AuditLogRequest),
    "/machine/ping-response?token=abc": ("POST", PingResponse),
}


# Register and map carry most of the schema (and all of Hostinfo): drawn more often.
WEIGHTED_PATHS = ["/machine/map", "/machine/register"] * 3 + sorted(ENDPOINTS)


@st.composite
def requests(draw, machines: list[Machine], auth_key: str):
    """(method, path, body bytes, machine): a mutated body for one endpoint, with the node
    key, auth key and flags steered so that most examples reach the handlers' real work."""
    path = draw(st.sampled_from(WEIGHTED_PATHS))
    method, cls = ENDPOINTS[path]
    machine = draw(st.sampled_from(machines))
    doc = draw(mutated(cls))
    # Hypothesis leans to small values (0, False): "often" is therefore "not the maximum".
    often = lambda: draw(st.integers(0, 99)) < 90  # noqa: E731
    if isinstance(doc, dict):
        if often():
            doc["NodeKey"] = draw(st.sampled_from(machine.node_keys))
        if cls is RegisterRequest:
            if doc.get("NodeKey") in machine.node_keys and often():
                doc["Auth"] = {"AuthKey": auth_key}
            elif isinstance(doc.get("Auth"), dict):
                doc["Auth"]["AuthKey"] = "hskey-auth-wrong"  # new random node keys stay unregistered
            if doc.get("Expiry") not in (None, "0001-01-01T00:00:00Z") and often():
                doc["Expiry"] = "0001-01-01T00:00:00Z"  # a logout only sometimes
            if often():
                doc.pop("Followup", None)
        if cls is MapRequest and draw(st.booleans()):
            doc["Stream"] = draw(st.booleans())
    if draw(st.integers(0, 19)) == 19:
        method = draw(st.sampled_from(["GET", "PUT", "DELETE", "HEAD"]))
    return method, path, draw(body_bytes(doc)), machine


def check_netmap(body: bytes) -> None:
    """What the fuzz left stored reaches peers only in the shape today's rules accept: every
    Hostinfo in a netmap parses back to itself (a Go peer decodes it)."""
    for msg in MapFrameReader(body[4:8] == ZSTD_MAGIC).receive_data(body):
        for node in [msg.get("Node") or {}, *(msg.get("Peers") or ())]:
            hi = node.get("Hostinfo")
            if hi is not None:
                assert to_json(parse_hostinfo(hi, "Hostinfo")) == hi, hi


def check_answer(resp: Recorder, body: bytes) -> None:
    assert resp.status is not None, "no answer"
    assert resp.status < 500, resp.status
    if resp.status == 400:
        assert resp.body.startswith(b"bad request: ") and len(resp.body) < 400, bytes(resp.body)


SSH_PREFIX = "/machine/ssh/action/"
# Values for the SSH action's path and query, as the client would %-encode them and worse.
SSH_USERS = ["root", "", "alice", "a%20b", "%ff%fe", "%00", "x" * 300, "%E2%80%AEtoor", "user%0Aname", "%",
             "a&b", "%25%25"]
SSH_AUTH_IDS = [None, "", "garbage", "hskey-authreq-" + "0" * 24, "0" * 24, "hskey-authreq-" + "G" * 24,
                "hskey-authreq-" + "0" * 23, "%ff", "hskey-authreq-" + "0" * 24 + "%00"]


@st.composite
def ssh_actions(draw, machines: list[Machine]):
    """(method, path, b"", machine): the call a destination node makes for a check rule."""
    machine = draw(st.sampled_from(machines))
    ids = [m.node_id for m in machines]
    src = draw(st.sampled_from(ids + [0, 999_999, 10**18 - 1]))
    dst = machine.node_id if draw(st.integers(0, 9)) < 8 else draw(st.sampled_from(ids + [5, 10**19]))
    pair = draw(st.sampled_from([f"{src}/to/{dst}"] * 6 + [f"x/to/{dst}", f"{src}/to/", f"{src}/to/{dst}/x",
                                                            f"-{src}/to/{dst}", f"{src}/from/{dst}"]))
    query = [f"local_user={draw(st.sampled_from(['root'] * 4 + SSH_USERS))}"]
    auth = draw(st.sampled_from([None] * 3 + SSH_AUTH_IDS))
    if auth is not None:
        query.append(f"auth_id={auth}")
    query += ["x=1"] * draw(st.sampled_from([0, 0, 0, 20]))
    query = query if draw(st.integers(0, 9)) else list(reversed(query))
    method = "GET" if draw(st.integers(0, 9)) < 9 else draw(st.sampled_from(["POST", "HEAD"]))
    return method, f"/machine/ssh/action/{pair}?{'&'.join(query)}", b"", machine


@settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
@given(data=st.data())
def test_handlers_take_any_body(fuzzed, data):
    draw = ssh_actions(fuzzed.machines) if data.draw(st.integers(0, 9)) == 0 else requests(fuzzed.machines,
                                                                                           fuzzed.auth_key)
    method, path, body, machine = data.draw(draw)
    RECORDED.append((method, path, body, fuzzed.machines.index(machine)))
    resp = fuzzed.call(handle, fuzzed.running, method, path, body, machine.peer)
    ANSWERS[(path.split("?")[0] if not path.startswith(SSH_PREFIX) else SSH_PREFIX, resp.status)] += 1
    if path == "/machine/map" and resp.status == 200 and resp.body:
        check_netmap(bytes(resp.body))
    check_answer(resp, body)
    assert not fuzzed.errors.records, [r.getMessage() for r in fuzzed.errors.records]


def test_after_fuzzing_the_server_still_works_and_memory_is_bounded(fuzzed):
    """Runs after the fuzz above (same module server): replaying its examples leaves the
    server's memory bounded, and its background tasks still compile and map a new node."""
    running, machines = fuzzed.running, fuzzed.machines
    assert RECORDED, "runs after test_handlers_take_any_body"

    async def replay() -> int:
        # One deadline for all: trio keeps a timeout's entry until it expires, which would
        # count here as memory the server holds.
        with trio.fail_after(HANDLER_DEADLINE * 10):
            for method, path, body, m in RECORDED:
                check_answer(await handle_nowait(running, method, path, body, machines[m].peer), body)
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    # pytest's log capture keeps every record (and the request data their arguments hold).
    logging.getLogger("appliance").propagate = False
    tracemalloc.start()
    try:
        first = fuzzed.call(replay)
        second = fuzzed.call(replay)
        third = fuzzed.call(replay)
    finally:
        tracemalloc.stop()
        logging.getLogger("appliance").propagate = True
    print(f"held after replaying {len(RECORDED)} examples: {first / 1024:.0f} KiB, "
          f"then {(second - first) / 1024:+.0f} KiB, {(third - second) / 1024:+.0f} KiB")
    print("answers:", ", ".join(f"{p} {s}: {n}" for (p, s), n in sorted(ANSWERS.items())))
    assert first < MEMORY_BOUND
    assert third - second < REPLAY_GROWTH_BOUND

    newcomer = Machine()
    body = json.dumps({
        "Version": 133, "NodeKey": newcomer.node_keys[0], "Auth": {"AuthKey": fuzzed.auth_key},
        "Hostinfo": to_json_hostinfo("newcomer", ["10.50.9.0/24"]),
    }).encode()
    resp = fuzzed.call(handle, running, "POST", "/machine/register", body, newcomer.peer)
    assert resp.status == 200 and json.loads(resp.body)["MachineAuthorized"], bytes(resp.body)

    async def compiled() -> None:
        t = running.tailnet
        node = t.node_by_key(newcomer.node_keys[0])
        with trio.fail_after(10):
            while "10.50.9.0/24" not in t.nodes[node.id].approved_routes:  # recompiler + auto-approver
                await trio.sleep(0.05)
        running.policy.engine.result(node.id)  # compiled: a result, not KeyError

    fuzzed.call(compiled)
    map_body = json.dumps({"Version": 133, "NodeKey": newcomer.node_keys[0], "Compress": "zstd"}).encode()
    resp = fuzzed.call(handle, running, "POST", "/machine/map", map_body, newcomer.peer)
    assert resp.status == 200 and resp.body
    check_netmap(bytes(resp.body))
    assert not fuzzed.errors.records, [r.getMessage() for r in fuzzed.errors.records]


def to_json_hostinfo(hostname: str, routes: list[str]) -> dict:
    return to_json(Hostinfo(hostname=hostname, os="linux", routable_ips=tuple(routes)))


