"""Fuzzing the sans-IO cores that take outside bytes (issue 10, item 6): the Noise handshake and
records, DERP frames and ClientInfo, STUN, HuJSON policies, YAML config files and DERP map files.
Each may only refuse with its own error class; any other exception is a bug the edge would turn
into a dead connection or a dead process."""

from __future__ import annotations

import json

import nacl.public
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from appliance.config import ConfigError, config_from_dict
from appliance.config.yamlfile import parse_yaml
from appliance.noise.errors import NoiseError
from appliance.noise.handshake import ClientHandshake, respond
from appliance.noise.transport import NoiseTransport
from appliance.policy import PolicyEngine, PolicyError, parse_policy
from appliance.policy.model import Node, User
from appliance.relay import parse_derp_map
from derp import frames as fr
from derp import stun
from derp.errors import ProtocolError, StunError

from .mutate import chunks, mutated
from .profile import fuzz, scaled

SERVER_PRIV = bytes(range(32))
SERVER_PUB = fr.public_key(SERVER_PRIV)  # X25519 either way: the same curve as Noise's
MACHINE_PRIV = bytes([0x11] * 32)
VALID_INITIATION = ClientHandshake(SERVER_PUB, MACHINE_PRIV, 106, ephemeral_private=bytes([0x22] * 32)).initiation


@fuzz
@given(st.one_of(st.binary(max_size=200), mutated(VALID_INITIATION)))
@example(VALID_INITIATION)
def test_noise_initiation(data):
    try:
        hs = respond(SERVER_PRIV, data)
    except NoiseError:
        return
    assert len(hs.response) == 51 and len(hs.machine_key) == 32


def _record_stream() -> tuple[NoiseTransport, bytes]:
    sender = NoiseTransport(b"k" * 32, b"r" * 32)
    wire = sender.encrypt(b"hello") + sender.encrypt(b"x" * 5000) + sender.encrypt(b"end")
    return NoiseTransport(b"r" * 32, b"k" * 32), wire


_, RECORDS = _record_stream()


@fuzz
@given(st.one_of(st.binary(max_size=9000), mutated(RECORDS)), st.lists(st.integers(0, 9000), max_size=8))
@example(RECORDS, [1, 2, 3])
def test_noise_records(data, cuts):
    rx, _ = _record_stream()
    out = bytearray()
    try:
        for chunk in chunks(data, cuts):
            out += rx.receive_data(chunk)
    except NoiseError:
        return
    assert len(rx._buf) < 4096  # never more than one incomplete record is held
    if data == RECORDS:
        assert bytes(out) == b"hello" + b"x" * 5000 + b"end"


CLIENT_PRIV = bytes([0x33] * 32)
VALID_FRAMES = b"".join([
    fr.encode(fr.seal_client_info(CLIENT_PRIV, SERVER_PUB, {"version": 2}, nonce=b"\x01" * 24)),
    fr.encode(fr.SendPacket(b"\x44" * 32, b"payload")),
    fr.encode(fr.Ping(b"12345678")),
    fr.encode(fr.NotePreferred(True)),
])


@fuzz
@given(st.one_of(st.binary(max_size=4000), mutated(VALID_FRAMES, 6)), st.lists(st.integers(0, 4000), max_size=6))
@example(VALID_FRAMES, [])
def test_derp_frames_as_a_server_reads_them(data, cuts):
    dec = fr.server_decoder()
    try:
        for chunk in chunks(data, cuts):
            dec.receive_data(chunk)
            while (ev := dec.next_event()) is not fr.NEED_DATA:
                if isinstance(ev, fr.ClientInfo):
                    try:
                        info = fr.open_client_info(SERVER_PRIV, ev)
                    except ProtocolError:
                        continue
                    assert isinstance(info, dict)
    except ProtocolError:
        return
    assert dec.buffered <= fr.MAX_FRAME_LEN + fr.HEADER_LEN


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)


@fuzz
@given(st.one_of(
    JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
    st.integers(1, 120_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 40_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
))
def test_derp_client_info_plaintext(body):
    box = nacl.public.Box(nacl.public.PrivateKey(CLIENT_PRIV), nacl.public.PublicKey(SERVER_PUB))
    msg = fr.ClientInfo(fr.public_key(CLIENT_PRIV), b"\x05" * 24, box.encrypt(body, b"\x05" * 24).ciphertext)
    try:
        info = fr.open_client_info(SERVER_PRIV, msg)
    except ProtocolError:
        return
    assert isinstance(info, dict)


VALID_STUN = stun.build_binding_request(b"t" * 12)


@fuzz
@given(st.one_of(st.binary(max_size=3000), mutated(VALID_STUN)), st.booleans())
@example(VALID_STUN, True)
def test_stun_binding_request(data, strict):
    try:
        txid = stun.parse_binding_request(data, strict=strict)
    except StunError:
        return
    assert len(txid) == 12
    stun.build_binding_response(txid, "192.0.2.1", 3478)


GOOD_POLICY = b"""{
  // a comment
  "groups": {"group:eng": ["alice@example.com", "bob@"]},
  "tagOwners": {"tag:web": ["group:eng"]},
  "hosts": {"db": "10.0.0.5/32"},
  "acls": [
    {"action": "accept", "src": ["group:eng"], "dst": ["tag:web:80,443", "db:5432"]},
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"],},
  ],
  "grants": [{"src": ["*"], "dst": ["tag:web"], "ip": ["tcp:22"]}],
  "ssh": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:web"], "users": ["root"]}],
  "autoApprovers": {"routes": {"10.0.0.0/8": ["group:eng"]}, "exitNode": ["tag:web"]},
  "nodeAttrs": [{"target": ["*"], "attr": ["funnel"]}],
  "tests": [{"src": "alice@example.com", "accept": ["tag:web:80"]}],
}"""
USERS = [User(id=1, name="alice", email="alice@example.com"), User(id=2, name="bob", email="")]
NODES = [Node(id=1, hostname="web", user_id=None, tags=("tag:web",), ipv4="100.64.0.1", ipv6="fd7a:115c:a1e0::1"),
         Node(id=2, hostname="laptop", user_id=1, tags=(), ipv4="100.64.0.2", ipv6="fd7a:115c:a1e0::2")]


def _policy_shapes():
    """Policy documents with the right top-level keys and anything under them."""
    keys = ["groups", "tagOwners", "hosts", "acls", "grants", "ssh", "autoApprovers", "nodeAttrs",
            "tests", "sshTests", "randomizeClientPort", "postures", "ipsets"]
    return st.dictionaries(st.sampled_from(keys), JSON, max_size=6).map(lambda d: json.dumps(d).encode())


@fuzz
@given(st.one_of(
    mutated(GOOD_POLICY, 6),
    _policy_shapes(),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=400),
    st.text(max_size=400).map(str.encode),
))
@example(GOOD_POLICY)
# Found by the long run: a section of the wrong type was iterated before it was checked.
@example(b'{"tests": true}')
@example(b'{"acls": 1, "ssh": true}')
@example(b'{"hosts": [], "groups": "x"}')
def test_policy_parse_and_compile(data):
    try:
        policy = parse_policy(data)
    except PolicyError:
        return
    engine = PolicyEngine(None, USERS, NODES)
    try:
        engine.set_policy(policy)
    except PolicyError:
        return
    for n in NODES:
        engine.result(n.id)


SMALL_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
CONFIG_KEYS = {
    "server_url": st.sampled_from(["http://127.0.0.1:8080", "https://vpn.example.com", "ftp://x", ""]),
    "listen_addr": st.sampled_from(["127.0.0.1:8080", "[::]:443", "nope", ":99999"]),
    "prefixes": st.fixed_dictionaries({}, optional={"v4": st.sampled_from(["100.64.0.0/10", "banana", "10.0.0.0/8"]),
                                                     "allocation": st.sampled_from(["sequential", "random", "x"])}),
    "dns": st.fixed_dictionaries({}, optional={"base_domain": st.text(max_size=30), "magic_dns": SMALL_JSON,
                                                "nameservers": SMALL_JSON, "extra_records": SMALL_JSON}),
    "derp": st.fixed_dictionaries({}, optional={"server": SMALL_JSON, "urls": SMALL_JSON, "paths": SMALL_JSON,
                                                 "update_frequency": SMALL_JSON}),
    "limits": st.fixed_dictionaries({}, optional={"max_connections": SMALL_JSON, "max_connections_per_source": SMALL_JSON}),
    "node": SMALL_JSON, "policy": SMALL_JSON, "log": SMALL_JSON, "trusted_proxies": SMALL_JSON, "tls_cert_path": SMALL_JSON,
    "unix_socket_permission": SMALL_JSON, "database": SMALL_JSON, "oidc": SMALL_JSON,
}


@settings(fuzz, max_examples=scaled(80))
@given(st.fixed_dictionaries({}, optional=CONFIG_KEYS), st.booleans())
def test_config_documents(doc, through_yaml):
    try:
        if through_yaml:
            config_from_dict(parse_yaml(yaml.safe_dump(doc)), env={"HOME": "/nonexistent"})
        else:
            config_from_dict(doc, env={"HOME": "/nonexistent"})
    except ConfigError:
        pass


GOOD_CONFIG = b"""server_url: https://vpn.example.com
listen_addr: 0.0.0.0:443
prefixes: {v4: 100.64.0.0/10, v6: fd7a:115c:a1e0::/48}
dns:
  base_domain: tailnet.internal
  nameservers: {global: [1.1.1.1], split: {corp.example: [10.0.0.1]}}
  extra_records: [{name: a.tailnet.internal, type: A, value: 100.64.0.9}]
derp: {server: {enabled: true, region_id: 999}, update_frequency: 24h}
base: &b {x: 1}
copy: *b
"""


@fuzz
@given(st.one_of(mutated(GOOD_CONFIG, 6), st.binary(max_size=500)))
@example(GOOD_CONFIG)
def test_config_yaml_text(data):
    try:
        text = data.decode("utf-8")
        config_from_dict(parse_yaml(text), env={"HOME": "/nonexistent"})
    except (ConfigError, UnicodeDecodeError):
        pass


GOOD_MAP = json.dumps({"Regions": {"1": {"RegionID": 1, "RegionCode": "r", "Nodes": [
    {"Name": "1a", "RegionID": 1, "HostName": "derp.example", "DERPPort": 443, "STUNPort": 3478}]}}}).encode()
HEADSCALE_MAP = b"regions:\n  900:\n    regionid: 900\n    regioncode: x\n    nodes:\n      - name: 900a\n        hostname: h\n        stunport: 0\n"


@fuzz
@given(st.one_of(mutated(GOOD_MAP, 6), mutated(HEADSCALE_MAP, 6), st.binary(max_size=500),
                 JSON.map(lambda v: json.dumps({"Regions": {"1": v}}).encode())))
@example(GOOD_MAP)
def test_derp_map_files(data):
    try:
        regions = parse_derp_map(data, "derp.paths: fuzz")
    except ConfigError:
        return
    json.dumps(regions)  # what goes to every client must encode
