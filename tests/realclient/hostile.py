"""The hostile client's catalogue (issue 10's bar): malformed values for every field of
RegisterRequest, MapRequest, Hostinfo, NetInfo and the minor bodies, bad encodings, odd but
valid values, and the SSH check's action URL (its outside bytes are in the path and query),
each with the answer the server must give.

The per-field cases are generated from the wire dataclasses' own kinds, so a field added to
the schema is attacked here without anyone remembering to: a value of the wrong JSON type,
and one just beyond its limit (a string one character too long, a list one entry too many, an
integer one past its range). Bodies are built from a base a real 1.96.4 client sends.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Callable

from appliance.control import codec
from appliance.keys import ZERO_KEY, encode_key
from appliance.control.hostinfo import HostinfoKind, Hostinfo, NetInfo
from appliance.control.setdns import SetDNSRequest
from appliance.control.wire import (
    AuditLogRequest, HealthChangeRequest, MapRequest, RegisterRequest, SetDeviceAttributesRequest,
)

ZERO_NODE_KEY = encode_key("nodekey", ZERO_KEY)


@dataclass(frozen=True)
class Keys:
    """What a case needs to know about the hostile client."""

    node_key: str
    disco_key: str
    auth_key: str
    node_id: int = 0  # the hostile client's node
    peer_id: int = 0  # a real node of the same user


@dataclass(frozen=True)
class Case:
    name: str
    path: str | Callable[[Keys], str]
    body: Callable[[Keys], bytes]
    status: int | None  # None: the stream is reset (a body over the size limit)
    names: str = ""  # what the 400's message must contain (the field)
    method: str = "POST"
    checkpoint: bool = False  # not a request: the real nodes must see a fresh netmap


def base_hostinfo(name: str = "hostile") -> dict:
    # As tailscaled 1.96.4 sends it (tests/unit/captures), with this client's name.
    return {
        "IPNVersion": "1.96.4-t8cf541dfd-g62bc84ce7", "OS": "linux", "OSVersion": "6.1.0",
        "Distro": "debian", "DistroVersion": "12.11", "Hostname": name, "Machine": "x86_64",
        "GoArch": "amd64", "GoVersion": "go1.26.1", "Userspace": True, "UserspaceRouter": True,
        "Services": [{"Proto": "peerapi4", "Port": 41000}, {"Proto": "peerapi-dns-proxy", "Port": 1}],
        "NetInfo": {"WorkingUDP": True, "PreferredDERP": 999, "DERPLatency": {"999-v4": 0.0004}},
    }


def lite(k: Keys, hostinfo: dict | None = None) -> dict:
    """A lite map update (OmitPeers), as the client sends with new endpoints or Hostinfo."""
    return {"Version": 133, "Compress": "zstd", "KeepAlive": True, "NodeKey": k.node_key,
            "DiscoKey": k.disco_key, "Hostinfo": hostinfo or base_hostinfo(),
            "Endpoints": ["10.255.255.1:41641"], "EndpointTypes": [1], "OmitPeers": True,
            "DebugFlags": ["netstack"]}


def register(k: Keys) -> dict:
    return {"Version": 133, "NodeKey": k.node_key, "OldNodeKey": ZERO_NODE_KEY,
            "NLKey": "nlpub:" + "11" * 32, "Auth": {"AuthKey": k.auth_key},
            "Expiry": codec.ZERO_TIME, "Followup": "", "Hostinfo": base_hostinfo(),
            "NodeKeySignature": None}


def setting(doc: dict, path: tuple, value: Any) -> dict:
    doc = copy.deepcopy(doc)
    cur = doc
    for key in path[:-1]:
        cur = cur.setdefault(key, {})
    cur[path[-1]] = value
    return doc


def encoded(doc: Any) -> bytes:
    return json.dumps(doc).encode()


# --- values that break a field of each kind ------------------------------------------------

WRONG_TYPE = {
    codec.Str: 12345, codec.Bool: "true", codec.OptBool: "yes", codec.Int: "7", codec.Float: "fast",
    codec.ListOf: {"not": "a list"}, codec.MapOf: [1], codec.Obj: [1], HostinfoKind: [1],
    codec.KeyText: 7, codec.Prefix: 10, codec.AddrPort: ["1.2.3.4", 5], codec.Time: 123,
    codec.Bytes: 5, codec.Scalar: [1],
}


def beyond_limit(kind: codec.Kind) -> Any | None:
    """A value of the right type just past the kind's limit (None where there is none)."""
    if isinstance(kind, codec.Str):
        return "x" * (kind.max_len + 1)
    if isinstance(kind, codec.Int):
        return kind.hi + 1
    if isinstance(kind, codec.Float):
        return kind.hi * 2 + 1 if math.isfinite(kind.hi) else 1e308 * 10  # inf: "Infinity"
    if isinstance(kind, codec.ListOf):
        return [_sample(kind.item)] * (kind.max_items + 1)
    if isinstance(kind, codec.MapOf):
        return {f"k{i}": _sample(kind.value) for i in range(kind.max_items + 1)}
    if isinstance(kind, codec.KeyText):
        return f"{kind.prefix}:" + "zz" * kind.nbytes
    if isinstance(kind, codec.Prefix):
        return "10.50.0.0/33"
    if isinstance(kind, codec.AddrPort):
        return "10.255.255.1:65536"
    if isinstance(kind, codec.Time):
        return "2026-02-30T00:00:00Z"
    if isinstance(kind, codec.Bytes):
        return "not base64!"
    return None


def _sample(kind: codec.Kind) -> Any:
    """One valid value of a kind (list entries for the too-many cases)."""
    return {codec.Str: "s", codec.Int: 1, codec.Float: 1.0, codec.Prefix: "10.50.0.0/24",
            codec.AddrPort: "192.0.2.1:1", codec.Bool: True, codec.Scalar: "s"}.get(type(kind), {})


def field_cases(label: str, cls: type, where: tuple, base: Callable[[Keys], dict], path: str,
                msg_prefix: str) -> list[Case]:
    """A wrong-type and a beyond-the-limit case for every field of ``cls`` found at ``where``
    inside the body ``base`` builds."""
    out = []
    for f in dataclasses.fields(cls):
        kind = f.metadata.get("kind")
        if kind is None:
            continue
        name = f.metadata["json"]
        at = where + (name,)
        field_name = f"{msg_prefix}.{name}"
        bad_values = [("wrong-type", WRONG_TYPE[type(kind)])]
        over = beyond_limit(kind)
        if over is not None:
            bad_values.append(("beyond-limit", over))
        for what, value in bad_values:
            out.append(Case(
                f"{label}.{name}-{what}", path,
                (lambda k, at=at, value=value: encoded(setting(base(k), at, value))),
                400, field_name,
            ))
    return out


def _minor(cls: type, path: str, method: str = "POST") -> list[Case]:
    def base(k: Keys) -> dict:
        return {"Version": 133, "NodeKey": k.node_key}
    cases = field_cases(cls.__name__, cls, (), base, path, cls.__name__)
    return [dataclasses.replace(c, method=method) for c in cases]


def all_cases() -> list[Case]:
    cases: list[Case] = []

    def checkpoint(name: str) -> None:
        cases.append(Case(f"checkpoint-{name}", "", lambda k: b"", None, checkpoint=True))

    # Every field, wrong type and beyond its limit, where a real client puts it.
    cases += field_cases("MapRequest", MapRequest, (), lite, "/machine/map", "MapRequest")
    checkpoint("maprequest")
    cases += field_cases("Hostinfo", Hostinfo, ("Hostinfo",), lite, "/machine/map", "MapRequest.Hostinfo")
    checkpoint("hostinfo")
    cases += field_cases("NetInfo", NetInfo, ("Hostinfo", "NetInfo"), lite, "/machine/map",
                         "MapRequest.Hostinfo.NetInfo")
    checkpoint("netinfo")
    cases += field_cases("RegisterRequest", RegisterRequest, (), register, "/machine/register", "RegisterRequest")
    cases += [c for c in field_cases("RegisterRequest.Hostinfo", Hostinfo, ("Hostinfo",), register,
                                     "/machine/register", "RegisterRequest.Hostinfo")
              if c.name.split(".")[-1].split("-")[0] in ("Hostname", "RoutableIPs", "RequestTags", "NetInfo")]
    checkpoint("register")
    cases += _minor(SetDNSRequest, "/machine/set-dns")
    cases += _minor(HealthChangeRequest, "/machine/update-health")
    cases += _minor(SetDeviceAttributesRequest, "/machine/set-device-attr", "PATCH")
    cases += _minor(AuditLogRequest, "/machine/audit-log")
    checkpoint("minor")

    # The issue's own findings, and values that are wrong in content, not type.
    def hostinfo_case(name: str, path: tuple, value: Any, status: int, names: str = "") -> None:
        cases.append(Case(name, "/machine/map",
                          lambda k: encoded(setting(lite(k), ("Hostinfo",) + path, value)), status, names))

    hostinfo_case("routableips-garbage", ("RoutableIPs",), ["garbage"], 400, "MapRequest.Hostinfo.RoutableIPs[0]")
    hostinfo_case("routableips-no-bits", ("RoutableIPs",), ["10.50.0.0"], 400, "RoutableIPs[0]")
    hostinfo_case("routableips-zone", ("RoutableIPs",), ["fe80::%eth0/64"], 400, "RoutableIPs[0]")
    hostinfo_case("routableips-netmask", ("RoutableIPs",), ["10.0.0.0/255.0.0.0"], 400, "RoutableIPs[0]")
    hostinfo_case("netinfo-array", ("NetInfo",), [1], 400, "MapRequest.Hostinfo.NetInfo")
    hostinfo_case("service-port-uint16", ("Services",), [{"Proto": "tcp", "Port": 65536}], 400, "Services[0].Port")
    hostinfo_case("derp-latency-negative", ("NetInfo", "DERPLatency"), {"999-v4": -1}, 400, "DERPLatency")
    hostinfo_case("hostname-lone-surrogate", ("Hostname",), "host\ud800", 400, "MapRequest.Hostinfo.Hostname")
    hostinfo_case("location-latitude", ("Location",), {"Latitude": 1000}, 400, "Location.Latitude")
    # Accepted, cleaned or kept within bounds:
    hostinfo_case("hostname-control-characters", ("Hostname",), "hostile\x1b[2J\x07\x00", 200)
    hostinfo_case("hostname-emoji", ("Hostname",), "\U0001F608" * 200, 200)
    hostinfo_case("unknown-field-dropped", ("FutureField",), {"deep": ["x" * 1000] * 50}, 200)
    hostinfo_case("services-over-budget-trimmed", ("Services",),
                  [{"Proto": "tcp", "Port": p, "Description": "d" * 200} for p in range(1000)], 200)
    hostinfo_case("derp-latency-many-regions", ("NetInfo", "DERPLatency"),
                  {f"{r}-v4": 0.01 for r in range(500)}, 200)
    hostinfo_case("routes-auto-approved", ("RoutableIPs",), ["10.50.3.7/24", "0.0.0.0/0", "::/0"], 200)
    cases.append(Case("endpoints-link-local-dropped", "/machine/map", lambda k: encoded(
        setting(lite(k), ("Endpoints",), ["[fe80::1%eth0]:41641", "10.255.255.1:41641"])), 200))
    checkpoint("content")

    # Encodings and shapes no Go client sends.
    def raw(name: str, path: str, body: bytes | Callable[[Keys], bytes], status: int | None, names: str = "") -> None:
        cases.append(Case(name, path, body if callable(body) else (lambda k, b=body: b), status, names))

    raw("empty-body", "/machine/map", b"", 400, "empty body")
    raw("invalid-utf8", "/machine/map", lambda k: encoded(lite(k)).replace(b'"linux"', b'"lin\xffux"'), 400, "UTF-8")
    raw("overlong-utf8", "/machine/register", lambda k: encoded(register(k)).replace(b'"hostile"', b'"\xc0\xafx"'), 400, "UTF-8")
    raw("nan", "/machine/map", lambda k: encoded(lite(k)).replace(b'"Version": 133', b'"Version": NaN'), 400, "NaN")
    raw("infinity", "/machine/map", lambda k: encoded(lite(k)).replace(b"0.0004", b"Infinity"), 400, "Infinity")
    raw("huge-integer", "/machine/map", lambda k: encoded(lite(k)).replace(b'"Version": 133', b'"Version": ' + b"9" * 5000), 400, "MapRequest")
    raw("big-integer", "/machine/map", lambda k: encoded(lite(k)).replace(b'"Version": 133', b'"Version": 1' + b"0" * 30), 400, "MapRequest.Version")
    raw("float-version", "/machine/map", lambda k: encoded(lite(k)).replace(b'"Version": 133', b'"Version": 133.0'), 400, "MapRequest.Version")
    raw("deep-nesting", "/machine/map", b"[" * 200_000 + b"]" * 200_000, 400, "deeper than")
    raw("deep-nesting-inside", "/machine/register", lambda k: encoded(setting(
        register(k), ("Hostinfo", "Extra"), json.loads("[" * 500 + "]" * 500))), 400, "deeper than")
    raw("top-level-array", "/machine/register", b"[]", 400, "expected a JSON object")
    raw("truncated", "/machine/register", lambda k: encoded(register(k))[:-7], 400, "not JSON")
    raw("huge-array", "/machine/map", lambda k: encoded(setting(lite(k), ("Endpoints",), ["192.0.2.1:1"] * 60_000)),
        400, "MapRequest.Endpoints")
    raw("body-over-1mib", "/machine/map", lambda k: encoded(setting(lite(k), ("Hostinfo", "Pad"), "x" * (2 << 20))), None)
    raw("missing-node-key", "/machine/map", lambda k: encoded({"Version": 133, "OmitPeers": True}), 400, "NodeKey")
    raw("zero-node-key", "/machine/register", lambda k: encoded(setting(register(k), ("NodeKey",), ZERO_NODE_KEY)),
        400, "NodeKey")
    raw("naive-expiry", "/machine/register", lambda k: encoded(setting(register(k), ("Expiry",), "2026-01-01")),
        400, "RegisterRequest.Expiry")
    raw("overflowing-expiry", "/machine/register", lambda k: encoded(
        setting(register(k), ("Expiry",), "9999-12-31T23:59:59-23:59")), 400, "RegisterRequest.Expiry")
    raw("ping-response-bad-token", "/machine/ping-response?token=%00%ff", b"", 400, "token")
    raw("ping-response-unknown", "/machine/ping-response?token=nosuchtoken", b"", 404)
    raw("ping-response-bad-body", "/machine/ping-response?token=abc",
        encoded({"LatencySeconds": "slow"}), 400, "PingResponse.LatencySeconds")
    checkpoint("encodings")

    # Well-formed requests: answered as the protocol says, never a 500.
    # Refused (403): certificates are off here (tests/realclient/test_certs covers them on).
    raw("set-dns-valid", "/machine/set-dns", lambda k: encoded(
        {"Version": 133, "NodeKey": k.node_key, "Name": "_acme-challenge.hostile.ts.test", "Type": "TXT",
         "Value": "v"}), 403)
    cases.append(Case("set-device-attr-valid", "/machine/set-device-attr", lambda k: encoded(
        {"Version": 133, "NodeKey": k.node_key, "Update": {"a": "b", "n": 1, "gone": None}}), 200, method="PATCH"))
    raw("audit-log-valid", "/machine/audit-log", lambda k: encoded(
        {"Version": 133, "NodeKey": k.node_key, "Action": "DISCONNECT_NODE", "Details": "\x1b[31mbye"}), 200)
    raw("update-health-valid", "/machine/update-health", lambda k: encoded(
        {"Subsys": "overall", "Error": "x", "NodeKey": ZERO_NODE_KEY}), 200)
    raw("register-wrong-auth-key", "/machine/register", lambda k: encoded(
        setting(register(k), ("Auth", "AuthKey"), "hskey-auth-nope-" + "0" * 64)), 200)
    raw("register-interactive", "/machine/register", lambda k: encoded(
        {**register(k), "Auth": None, "NodeKey": "nodekey:" + "43" * 32}), 200)
    raw("register-tags-not-permitted", "/machine/register", lambda k: encoded(
        setting(register(k), ("Hostinfo", "RequestTags"), ["tag:nobody-owns-this", "not-a-tag\x1b"])), 200)
    raw("map-someone-elses-key", "/machine/map", lambda k: encoded(
        setting(lite(k), ("NodeKey",), "nodekey:" + "42" * 32)), 404)
    raw("unknown-path", "/machine/id-token", b"{}", 404)
    cases.append(Case("wrong-method", "/machine/map", lambda k: b"", 405, method="GET"))
    checkpoint("valid")

    # The SSH check's action URL (the policy's check rule covers a real node -> this node).
    def ssh(name: str, path: Callable[[Keys], str], status: int, names: str = "", method: str = "GET") -> None:
        cases.append(Case(name, path, lambda k: b"", status, names, method=method))

    action = "/machine/ssh/action/"
    ssh("ssh-action-hold", lambda k: f"{action}{k.peer_id}/to/{k.node_id}?local_user=root", 200)
    ssh("ssh-action-unknown-auth-id", lambda k: f"{action}{k.peer_id}/to/{k.node_id}?local_user=root"
                                                f"&auth_id=hskey-authreq-{'0' * 24}", 200)
    ssh("ssh-action-not-the-destination", lambda k: f"{action}{k.node_id}/to/{k.peer_id}?local_user=root", 403)
    ssh("ssh-action-unknown-node", lambda k: f"{action}999999/to/{k.node_id}?local_user=root", 404)
    ssh("ssh-action-not-ids", lambda k: f"{action}a/to/{k.node_id}", 400, "SSH action")
    ssh("ssh-action-id-too-long", lambda k: f"{action}{'9' * 19}/to/{k.node_id}", 400, "SSH action")
    ssh("ssh-action-extra-segment", lambda k: f"{action}{k.peer_id}/to/{k.node_id}/x", 400, "SSH action")
    ssh("ssh-action-user-not-utf8", lambda k: f"{action}{k.peer_id}/to/{k.node_id}?local_user=%ff%fe", 400, "SSH action")
    ssh("ssh-action-user-newline", lambda k: f"{action}{k.peer_id}/to/{k.node_id}?local_user=a%0Ab", 400, "local_user")
    ssh("ssh-action-user-too-long", lambda k: f"{action}{k.peer_id}/to/{k.node_id}?local_user={'u' * 300}", 400,
        "local_user")
    ssh("ssh-action-bad-auth-id", lambda k: f"{action}{k.peer_id}/to/{k.node_id}?auth_id=%00rm", 400, "auth_id")
    ssh("ssh-action-many-fields", lambda k: f"{action}{k.peer_id}/to/{k.node_id}?" + "a=1&" * 50, 400, "SSH action")
    ssh("ssh-action-post", lambda k: f"{action}{k.peer_id}/to/{k.node_id}?local_user=root", 405, method="POST")
    checkpoint("ssh-action")
    return cases


CASES = all_cases()
