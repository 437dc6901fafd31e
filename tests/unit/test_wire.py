"""The boundary: client bodies checked once into typed values with limits (issue 10).

Real bodies captured from tailscaled 1.96.4 must pass unchanged; every kind of bad value is a
WireError naming the field; Hostinfo keeps what a real client sends and only a budget beyond.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from appliance.control.codec import (
    AddrPort, Prefix, WireError, decode_body, from_json, parse_time, to_json,
)
from appliance.control.hostinfo import (
    EXTRA_BUDGET, MAX_ROUTES, Hostinfo, extra_size, parse_hostinfo, stored_hostinfo,
)
from appliance.control.wire import (
    AuditLogRequest, MapRequest, RegisterRequest, SetDeviceAttributesRequest,
)

CAPTURES = Path(__file__).parent / "captures" / "tailscale-1.96.4-bodies.jsonl"
NODE_KEY = "nodekey:" + "ab" * 32


def captured() -> list[dict]:
    return [json.loads(line) for line in CAPTURES.read_text().splitlines()]


def test_real_client_bodies_pass_and_hostinfo_round_trips():
    bodies = captured()
    assert {b["path"] for b in bodies} == {"/machine/register", "/machine/map"}
    for b in bodies:
        cls = RegisterRequest if b["path"] == "/machine/register" else MapRequest
        raw = decode_body(b["body"].encode(), cls.__name__)
        msg = from_json(cls, raw)
        assert msg.node_key == raw["NodeKey"]
        # What peers get back is exactly what the client sent: no field lost or altered.
        assert to_json(msg.hostinfo) == raw["Hostinfo"]
        assert not msg.hostinfo.notes
    reg = from_json(RegisterRequest, json.loads(bodies[0]["body"]))
    assert reg.old_node_key == "" and reg.expiry is None and reg.auth_key == "hskey-auth-redacted"
    assert reg.hostinfo.routable_ips == ("0.0.0.0/0", "::/0", "10.77.0.0/24")
    lite = from_json(MapRequest, json.loads(bodies[3]["body"]))
    assert lite.omit_peers and lite.endpoints == ("127.0.0.1:32825", "10.255.255.1:32825")
    assert lite.hostinfo.preferred_derp == 999 and lite.hostinfo.net_info.derp_latency


def real_map() -> dict:
    return json.loads(captured()[3]["body"])


def with_path(doc: dict, path: tuple, value) -> dict:
    doc = json.loads(json.dumps(doc))
    cur = doc
    for k in path[:-1]:
        cur = cur.setdefault(k, {})
    cur[path[-1]] = value
    return doc


# (path in a real lite MapRequest, bad value, the field the message must name)
BAD_MAP_VALUES = [
    (("Version",), "133", "MapRequest.Version"),
    (("Version",), -1, "MapRequest.Version"),
    (("Version",), 10**30, "MapRequest.Version"),
    (("Version",), 133.5, "MapRequest.Version"),
    (("Compress",), "gzip", "MapRequest.Compress"),
    (("NodeKey",), "nodekey:xyz", "MapRequest.NodeKey"),
    (("NodeKey",), 7, "MapRequest.NodeKey"),
    (("DiscoKey",), "discokey:" + "g" * 64, "MapRequest.DiscoKey"),
    (("DiscoKey",), "nodekey:" + "00" * 32, "MapRequest.DiscoKey"),
    (("Stream",), "true", "MapRequest.Stream"),
    (("Endpoints",), ["1.2.3.4"], "MapRequest.Endpoints[0]"),
    (("Endpoints",), ["1.2.3.4:65536"], "MapRequest.Endpoints[0]"),
    (("Endpoints",), ["::1:80"], "MapRequest.Endpoints[0]"),
    (("Endpoints",), "1.2.3.4:5", "MapRequest.Endpoints"),
    (("Endpoints",), ["1.2.3.4:5"] * 1025, "MapRequest.Endpoints"),
    (("EndpointTypes",), [1, "x"], "MapRequest.EndpointTypes[1]"),
    (("DebugFlags",), [{}], "MapRequest.DebugFlags[0]"),
    (("Hostinfo",), [1], "MapRequest.Hostinfo"),
    (("Hostinfo", "Hostname"), 5, "MapRequest.Hostinfo.Hostname"),
    (("Hostinfo", "Hostname"), "h" * 257, "MapRequest.Hostinfo.Hostname"),
    (("Hostinfo", "Hostname"), "bad\ud800", "MapRequest.Hostinfo.Hostname"),
    (("Hostinfo", "OS"), ["linux"], "MapRequest.Hostinfo.OS"),
    (("Hostinfo", "RoutableIPs"), ["garbage"], "MapRequest.Hostinfo.RoutableIPs[0]"),
    (("Hostinfo", "RoutableIPs"), ["10.0.0.0"], "MapRequest.Hostinfo.RoutableIPs[0]"),
    (("Hostinfo", "RoutableIPs"), ["10.0.0.0/33"], "MapRequest.Hostinfo.RoutableIPs[0]"),
    (("Hostinfo", "RoutableIPs"), ["10.0.0.0/255.0.0.0"], "MapRequest.Hostinfo.RoutableIPs[0]"),
    (("Hostinfo", "RoutableIPs"), ["fe80::1%eth0/64"], "MapRequest.Hostinfo.RoutableIPs[0]"),
    (("Hostinfo", "RoutableIPs"), [1], "MapRequest.Hostinfo.RoutableIPs[0]"),
    (("Hostinfo", "RoutableIPs"), ["10.0.0.0/8"] * (MAX_ROUTES + 1), "MapRequest.Hostinfo.RoutableIPs"),
    (("Hostinfo", "RequestTags"), "tag:x", "MapRequest.Hostinfo.RequestTags"),
    (("Hostinfo", "Services"), [{"Proto": "tcp", "Port": 70000}], "MapRequest.Hostinfo.Services[0].Port"),
    (("Hostinfo", "Services"), [{"Proto": "tcp", "Port": -1}], "MapRequest.Hostinfo.Services[0].Port"),
    (("Hostinfo", "Container"), "yes", "MapRequest.Hostinfo.Container"),
    (("Hostinfo", "ShieldsUp"), 1, "MapRequest.Hostinfo.ShieldsUp"),
    (("Hostinfo", "ShareeNode"), "false", "MapRequest.Hostinfo.ShareeNode"),
    (("Hostinfo", "WireIngress"), [], "MapRequest.Hostinfo.WireIngress"),
    (("Hostinfo", "NetInfo"), [1], "MapRequest.Hostinfo.NetInfo"),
    (("Hostinfo", "NetInfo", "PreferredDERP"), "999", "MapRequest.Hostinfo.NetInfo.PreferredDERP"),
    (("Hostinfo", "NetInfo", "PreferredDERP"), 2**40, "MapRequest.Hostinfo.NetInfo.PreferredDERP"),
    (("Hostinfo", "NetInfo", "DERPLatency"), {"999-v4": "fast"}, 'MapRequest.Hostinfo.NetInfo.DERPLatency'),
    (("Hostinfo", "NetInfo", "DERPLatency"), {"999-v4": 1e300}, 'MapRequest.Hostinfo.NetInfo.DERPLatency'),
    (("Hostinfo", "NetInfo", "DERPLatency"), {"999-v4": -1}, 'MapRequest.Hostinfo.NetInfo.DERPLatency'),
    (("Hostinfo", "NetInfo", "WorkingUDP"), "true", "MapRequest.Hostinfo.NetInfo.WorkingUDP"),
    (("Hostinfo", "Location", "Latitude"), 91, "MapRequest.Hostinfo.Location.Latitude"),
    (("Hostinfo", "Location", "Priority"), -1, "MapRequest.Hostinfo.Location.Priority"),
    (("Hostinfo", "TPM", "FirmwareVersion"), 2**64, "MapRequest.Hostinfo.TPM.FirmwareVersion"),
    (("Hostinfo", "sshHostKeys"), ["k"] * 17, "MapRequest.Hostinfo.sshHostKeys"),
]


@pytest.mark.parametrize("path,value,field", BAD_MAP_VALUES, ids=[f"{'.'.join(p)}={str(v)[:16]}" for p, v, _ in BAD_MAP_VALUES])
def test_bad_values_are_refused_naming_the_field(path, value, field):
    with pytest.raises(WireError) as e:
        from_json(MapRequest, with_path(real_map(), path, value))
    assert str(e.value).startswith(field), str(e.value)
    assert len(str(e.value)) < 200  # a bounded message, whatever the value's size


def test_register_fields():
    base = json.loads(captured()[0]["body"])
    for path, value, field in [
        (("Expiry",), "2024-01-01", "RegisterRequest.Expiry"),
        (("Expiry",), "9999-12-31T23:59:59-05:00", "RegisterRequest.Expiry"),
        (("Expiry",), 123, "RegisterRequest.Expiry"),
        (("Auth",), "key", "RegisterRequest.Auth"),
        (("Auth", "AuthKey"), ["k"], "RegisterRequest.Auth.AuthKey"),
        (("NLKey",), "nlpub:00", "RegisterRequest.NLKey"),
        (("NodeKeySignature",), "!!", "RegisterRequest.NodeKeySignature"),
        (("Ephemeral",), "yes", "RegisterRequest.Ephemeral"),
        (("Followup",), "x" * 5000, "RegisterRequest.Followup"),
    ]:
        with pytest.raises(WireError) as e:
            from_json(RegisterRequest, with_path(base, path, value))
        assert str(e.value).startswith(field), str(e.value)
    # Logout: a time in the past, as the client sends it.
    rr = from_json(RegisterRequest, with_path(base, ("Expiry",), "1970-01-01T00:02:03Z"))
    assert rr.expiry == datetime(1970, 1, 1, 0, 2, 3, tzinfo=timezone.utc)
    # tlpub: is the CLI's spelling of nlpub:, and Go accepts it.
    rr = from_json(RegisterRequest, with_path(base, ("NLKey",), "tlpub:" + "12" * 32))
    assert rr.nl_key == "nlpub:" + "12" * 32


@pytest.mark.parametrize("body,reason", [
    (b"", "empty body"),
    (b"\xff\xfe{}", "not valid UTF-8"),
    (b'{"Version": NaN}', "NaN is not a JSON value"),
    (b'{"Version": -Infinity}', "-Infinity is not a JSON value"),
    (b'{"Version": ' + b"9" * 5000 + b"}", "not usable JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "deeper than"),
    (b'{"a":' * 70 + b"1" + b"}" * 70, "deeper than"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"Version": 1', "not JSON"),
])
def test_decode_body_refuses_what_go_never_sends(body, reason):
    with pytest.raises(WireError) as e:
        decode_body(body, "MapRequest")
    assert reason in str(e.value)


def test_control_characters_are_cleaned_and_the_name_follows():
    h = parse_hostinfo({"Hostname": "evil\x1b[31m\x07host\x00", "OS": "li\u009bnux"}, "Hostinfo")
    assert h.hostname == "evil[31mhost" and h.os == "linux"


def test_times():
    assert parse_time("0001-01-01T00:00:00Z") is None
    t = parse_time("2026-03-01T10:00:00.123456789+02:00")
    assert t == datetime(2026, 3, 1, 8, 0, 0, 123456, tzinfo=timezone.utc)
    for bad in ("2026-03-01", "2026-13-01T00:00:00Z", "2026-03-01T00:00:00", "0001-01-01T00:00:00+05:00x"):
        with pytest.raises(WireError):
            parse_time(bad)


def test_prefixes_and_endpoints_are_canonical():
    p = Prefix()
    assert p.parse("10.1.2.3/24", "r") == "10.1.2.0/24"
    assert p.parse("FD7A:115C::1/48", "r") == "fd7a:115c::/48"
    assert p.parse("0.0.0.0/0", "r") == "0.0.0.0/0"
    for bad in ("10.0.0.0/024", "10.0.0.0/+8", "010.0.0.0/8", "10.0.0.0/ 8", "/8", "10.0.0.0/8/8"):
        with pytest.raises(WireError):
            p.parse(bad, "r")
    a = AddrPort()
    assert a.parse("[FD7A::1]:41641", "e") == "[fd7a::1]:41641"
    assert a.parse("[fe80::1%eth0]:1", "e") == "[fe80::1%eth0]:1"
    for bad in ("1.2.3.4", "[1.2.3.4]:5", "1.2.3.4:-1", "host:80", "[::1]80"):
        with pytest.raises(WireError):
            a.parse(bad, "e")


def test_unused_fields_are_kept_within_the_budget():
    services = [{"Proto": "tcp", "Port": p, "Description": "d" * 200} for p in range(1000)]
    services.append({"Proto": "peerapi4", "Port": 5000})
    h = parse_hostinfo({"Hostname": "big", "Services": services, "RoutableIPs": ["10.0.0.0/24"]}, "Hostinfo")
    assert extra_size(h) <= EXTRA_BUDGET
    # Peers find Taildrop and DNS through the peer API: those entries stay.
    assert [s.proto for s in h.services] == ["peerapi4"]
    assert h.hostname == "big" and h.routable_ips == ("10.0.0.0/24",)
    assert h.notes and "Services" in h.notes[0]
    # Unknown keys are dropped, as Go's decoder into tailcfg.Hostinfo drops them.
    h = parse_hostinfo({"Hostname": "x", "Surprise": {"a": [1, 2, 3]}}, "Hostinfo")
    assert to_json(h) == {"Hostname": "x"}


def test_stored_hostinfo_is_repaired_not_refused():
    h = stored_hostinfo(json.dumps({"Hostname": "r", "RoutableIPs": ["garbage", "10.0.0.0/24"],
                                    "NetInfo": [1], "OS": "linux"}))
    assert h.hostname == "r" and h.os == "linux" and h.routable_ips == ("10.0.0.0/24",)
    assert h.net_info is None
    assert any("garbage" in n for n in h.notes) and any("NetInfo" in n for n in h.notes)
    assert stored_hostinfo("{not json").notes
    assert stored_hostinfo("[1]") == Hostinfo()
    assert not stored_hostinfo("{}").notes


def test_minor_bodies():
    r = from_json(SetDeviceAttributesRequest, {"NodeKey": NODE_KEY, "Update": {"a": "b", "c": 1, "d": None}})
    assert r.update == {"a": "b", "c": 1.0, "d": None}
    with pytest.raises(WireError, match=r"Update\["):
        from_json(SetDeviceAttributesRequest, {"NodeKey": NODE_KEY, "Update": {"a": [1]}})
    with pytest.raises(WireError, match="Action"):
        from_json(AuditLogRequest, {"NodeKey": NODE_KEY, "Action": "rm -rf"})
