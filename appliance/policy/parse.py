"""From policy text to a validated :class:`Policy`.

Checks that need no tailnet data happen here; the messages are Tailscale's
where the conformance corpus recorded them.
"""

from __future__ import annotations

import ipaddress
import json
import re

from . import hujson
from .aliases import Alias, is_prefix, parse_alias, split_dst_port
from .document import (ACLTest, IPProto, NodeAttr, Policy, Rule, SSHRule,
                       SSHTest)
from .durations import format_go_duration, parse_go_duration
from .errors import ParseError, ValidationError
from .ports import ALL_PORTS, parse_ports, parse_proto

# Fields Tailscale accepts at each level; anything else is refused, as
# Tailscale's strict JSON decoding does ("unknown field").
TOP_FIELDS = {
    "acls", "grants", "groups", "hosts", "tagOwners", "autoApprovers", "ssh",
    "nodeAttrs", "tests", "sshTests", "postures", "defaultSrcPosture",
    "randomizeClientPort", "disableIPv4", "OneCGNATRoute", "derpMap",
    "ipsets", "attrConfig", "settings", "warnings",
}
ACL_FIELDS = {"action", "src", "dst", "proto", "srcPosture", "users", "ports"}
GRANT_FIELDS = {"src", "dst", "ip", "app", "via", "srcPosture"}
SSH_FIELDS = {"action", "src", "dst", "users", "checkPeriod", "acceptEnv", "srcPosture"}
NODEATTR_FIELDS = {"target", "attr", "app", "ipPool"}
TEST_FIELDS = {"src", "accept", "deny", "proto", "srcPostureAttrs"}
SSHTEST_FIELDS = {"src", "dst", "accept", "check", "deny"}
AUTOAPPROVER_FIELDS = {"routes", "exitNode", "services"}

MAX_CHECK_PERIOD = 168 * 3600.0
_TAG_NAME = re.compile(r"^tag:[A-Za-z][A-Za-z0-9_\-]*$")
_CAP_NAME = re.compile(r"^[^/\s]+\.[^/\s]+/\S+$")

# Tailscale keeps the tailscale.com domain of capability names for itself: a policy may name
# only those a person is meant to grant (tailcfg.PeerCapability* of v1.96.4 less the
# companions the server adds by itself, drive-sharer and relay-target; and the caps of
# Tailscale's own apps: setec's secrets, proxy-to-grafana). Issue tailscale#16312 shows the
# refusal for a cap not (yet) on the list.
RESERVED_CAP_DOMAIN = "tailscale.com/"
GRANTABLE_TAILSCALE_CAPS = frozenset({
    "tailscale.com/cap/webui", "tailscale.com/cap/drive", "tailscale.com/cap/kubernetes",
    "tailscale.com/cap/relay", "tailscale.com/cap/tsidp", "tailscale.com/cap/secrets",
    "tailscale.com/cap/proxy-to-grafana",
})
# nodeAttrs "app" carries node capabilities: of Tailscale's own, app connectors only
# (kb/1281 app connectors; appctype.AppConnectorAttr).
NODE_APP_TAILSCALE_CAPS = frozenset({"tailscale.com/app-connectors"})
CAP_FORM_MSG = "capability name must have the form {domain}/{path}"
CAP_RESERVED_MSG = "capability name must not be in the tailscale.com domain"

# nodeAttrs ipPool: addresses come from the CGNAT range, less Tailscale's own parts of it:
# 100.100.100.0/24 (MagicDNS, Quad100) and 100.115.92.0/23 (kept for ChromeOS VMs and
# services). kb/1304 ip-pool; Headscale's validateNodeAttrIPPool states the same ranges.
CGNAT = ipaddress.ip_network("100.64.0.0/10")
RESERVED_POOL_RANGES = (ipaddress.ip_network("100.100.100.0/24"),
                        ipaddress.ip_network("100.115.92.0/23"))


class _Ctx:
    def __init__(self, positions):
        self.positions = positions

    def error(self, msg: str, path: tuple, field: str | None = None, cls=ValidationError):
        pos = self.positions.get(path + ("<key>",)) or self.positions.get(path)
        line, col = pos if pos else (None, None)
        return cls(msg, line=line, column=col, field=field or _path_name(path))

    def fields(self, obj, allowed: set[str], path: tuple, what: str) -> None:
        if not isinstance(obj, dict):
            raise self.error(f"{what}: expected an object", path, cls=ParseError)
        for key in obj:
            if key not in allowed:
                raise self.error(f'unknown field "{key}"', path + (key,), field=key, cls=ParseError)


def _path_name(path: tuple) -> str:
    out = ""
    for p in path:
        if p == "<key>":
            continue
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def _strings(ctx: _Ctx, obj, path: tuple, what: str, allow_missing=True) -> list[str]:
    if obj is None and allow_missing:
        return []
    if not isinstance(obj, list) or not all(isinstance(x, str) for x in obj):
        raise ctx.error(f"{what}: expected a list of strings", path, cls=ParseError)
    return list(obj)


def parse_policy(text: str | bytes | dict, extra_groups=frozenset()) -> Policy:
    """Parse and validate a policy file. Raises PolicyError (with position
    for syntax and unknown fields). ``extra_groups`` ("group:NAME") are defined
    outside the file (by users' identity providers): references to them are valid."""
    if isinstance(text, dict):
        raw, positions = text, {}
    else:
        raw, positions = hujson.loads(text)
    ctx = _Ctx(positions)
    ctx.fields(raw, TOP_FIELDS, (), "policy")
    # The sections' own shapes, before anything iterates them (Go's decoder refuses these too).
    for key in ("acls", "grants", "ssh", "nodeAttrs", "tests", "sshTests"):
        if raw.get(key) is not None and not isinstance(raw[key], list):
            raise ctx.error(f"{key}: expected a list", (key,), cls=ParseError)
    for key in ("hosts", "tagOwners", "groups", "autoApprovers", "postures", "ipsets"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise ctx.error(f"{key}: expected an object", (key,), cls=ParseError)
    if not isinstance(raw.get("randomizeClientPort", False), bool):
        raise ctx.error("randomizeClientPort: expected true or false", ("randomizeClientPort",), cls=ParseError)

    hosts = _parse_hosts(ctx, raw.get("hosts"))
    tag_owners = _parse_tag_owners(ctx, raw.get("tagOwners"))
    defined = _parse_groups(ctx, raw.get("groups"))
    # What references may name: the file's groups and the identity providers'.
    groups = {**{g: () for g in extra_groups}, **defined}

    def alias(text: str, path: tuple) -> Alias:
        try:
            # Tailscale ignores surrounding whitespace in names.
            a = parse_alias(text.strip(), hosts)
        except ValidationError as exc:
            raise ctx.error(exc.message, path) from None
        return a

    rules: list[Rule] = []
    for i, acl in enumerate(raw.get("acls") or []):
        rules.append(_parse_acl(ctx, acl, ("acls", i), alias, tag_owners, groups, hosts))
    for i, grant in enumerate(raw.get("grants") or []):
        rules.append(_parse_grant(ctx, grant, ("grants", i), alias, tag_owners, groups))

    ssh = None
    if raw.get("ssh") is not None:
        ssh = tuple(_parse_ssh(ctx, r, ("ssh", i), alias, tag_owners, groups, hosts)
                    for i, r in enumerate(raw["ssh"]))

    node_attrs = []
    for i, na in enumerate(raw.get("nodeAttrs") or []):
        path = ("nodeAttrs", i)
        ctx.fields(na, NODEATTR_FIELDS, path, "nodeAttrs")
        targets = []
        for j, t in enumerate(_strings(ctx, na.get("target"), path + ("target",), "target")):
            a = alias(t, path + ("target", j))
            if a.value == "autogroup:self":
                # Tailscale's control plane fails on this one with a 500;
                # refusing it with the same words keeps behaviour aligned.
                raise ctx.error("internal server error", path + ("target", j))
            _check_refs(ctx, a, path + ("target", j), tag_owners, groups, "")
            targets.append(a)
        attrs = _strings(ctx, na.get("attr"), path + ("attr",), "attr")
        app = na.get("app")
        if app is not None:
            if not isinstance(app, dict):
                raise ctx.error("app: expected an object", path + ("app",), cls=ParseError)
            for name in app:
                _check_cap_name(ctx, name, NODE_APP_TAILSCALE_CAPS, path + ("app", name))
        for j, pool in enumerate(_strings(ctx, na.get("ipPool"), path + ("ipPool",), "ipPool")):
            _check_ip_pool(ctx, pool, path + ("ipPool", j))
        node_attrs.append(NodeAttr(tuple(targets), tuple(attrs), app))

    auto_routes: dict[str, tuple[Alias, ...]] = {}
    auto_exit: tuple[Alias, ...] = ()
    aa = raw.get("autoApprovers")
    if aa is not None:
        ctx.fields(aa, AUTOAPPROVER_FIELDS, ("autoApprovers",), "autoApprovers")
        for prefix, approvers in (aa.get("routes") or {}).items():
            path = ("autoApprovers", "routes", prefix)
            if not is_prefix(prefix):
                raise ctx.error(f'autoApprovers: "{prefix}": invalid prefix', path)
            als = []
            for j, s in enumerate(_strings(ctx, approvers, path, "approvers")):
                a = alias(s, path + (j,))
                _check_refs(ctx, a, path + (j,), tag_owners, groups, "")
                als.append(a)
            auto_routes[prefix] = tuple(als)
        als = []
        for j, s in enumerate(_strings(ctx, aa.get("exitNode"), ("autoApprovers", "exitNode"), "exitNode")):
            a = alias(s, ("autoApprovers", "exitNode", j))
            _check_refs(ctx, a, ("autoApprovers", "exitNode", j), tag_owners, groups, "")
            als.append(a)
        auto_exit = tuple(als)

    tests = []
    for i, t in enumerate(raw.get("tests") or []):
        path = ("tests", i)
        ctx.fields(t, TEST_FIELDS, path, "tests")
        tests.append(ACLTest(
            src=t.get("src") if isinstance(t.get("src"), str) else "",
            accept=tuple(_strings(ctx, t.get("accept"), path + ("accept",), "accept")),
            deny=tuple(_strings(ctx, t.get("deny"), path + ("deny",), "deny")),
            proto=t.get("proto")))
    ssh_tests = []
    for i, t in enumerate(raw.get("sshTests") or []):
        path = ("sshTests", i)
        ctx.fields(t, SSHTEST_FIELDS, path, "sshTests")
        ssh_tests.append(SSHTest(
            src=t.get("src") if isinstance(t.get("src"), str) else "",
            dst=tuple(_strings(ctx, t.get("dst"), path + ("dst",), "dst")),
            accept=tuple(_strings(ctx, t.get("accept"), path + ("accept",), "accept")),
            check=tuple(_strings(ctx, t.get("check"), path + ("check",), "check")),
            deny=tuple(_strings(ctx, t.get("deny"), path + ("deny",), "deny"))))

    return Policy(
        groups=defined, hosts=hosts, tag_owners=tag_owners, rules=tuple(rules),
        ssh=ssh, node_attrs=tuple(node_attrs), auto_routes=auto_routes,
        auto_exit=auto_exit, tests=tuple(tests), ssh_tests=tuple(ssh_tests),
        randomize_client_port=bool(raw.get("randomizeClientPort")),
        has_filter=("acls" in raw and raw["acls"] is not None) or ("grants" in raw and raw["grants"] is not None),
        raw=raw)


def _parse_hosts(ctx: _Ctx, obj) -> dict[str, str]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ctx.error("hosts: expected an object", ("hosts",), cls=ParseError)
    for name, value in obj.items():
        if not isinstance(value, str) or not is_prefix(value):
            raise ctx.error(f'hosts["{name}"]: "{value}": invalid IP address or prefix',
                            ("hosts", name))
    return dict(obj)


def _parse_tag_owners(ctx: _Ctx, obj) -> dict[str, tuple[str, ...]]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ctx.error("tagOwners: expected an object", ("tagOwners",), cls=ParseError)
    out = {}
    for tag, owners in obj.items():
        if not _TAG_NAME.match(tag):
            raise ctx.error(f"tagOwners[\"{tag}\"]: tag names must start with a letter, after 'tag:'",
                            ("tagOwners", tag))
        out[tag] = tuple(_strings(ctx, owners, ("tagOwners", tag), "tagOwners"))
    return out


def _parse_groups(ctx: _Ctx, obj) -> dict[str, tuple[str, ...]]:
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ctx.error("groups: expected an object", ("groups",), cls=ParseError)
    out = {}
    for name, members in obj.items():
        path = ("groups", name)
        if not name.startswith("group:"):
            raise ctx.error(f'groups["{name}"]: group names must start with "group:"', path)
        out[name] = tuple(_strings(ctx, members, path, "groups"))
    _check_group_nesting(ctx, out)
    return out


def _check_group_nesting(ctx: _Ctx, groups: dict[str, tuple[str, ...]]) -> None:
    """Tailscale has no nested groups. It reports the innermost offending
    pair found by following group members from the first such group."""
    for name, members in groups.items():
        nested = [m for m in members if m.startswith("group:")]
        if not nested:
            continue
        seen = {name}
        cur, member = name, nested[0]
        while True:
            inner = [m for m in groups.get(member, ()) if m.startswith("group:")]
            if member in seen or not inner:
                j = groups[cur].index(member)
                raise ctx.error(f'groups["{cur}"]: "{member}": group members cannot be recursive',
                                ("groups", cur, j))
            seen.add(member)
            cur, member = member, inner[0]


def _check_refs(ctx: _Ctx, a: Alias, path: tuple, tag_owners, groups, side: str) -> None:
    """Tags and groups must be defined (Tailscale refuses dangling names)."""
    if a.kind == "tag" and a.value not in tag_owners:
        prefix = f"{side}=" if side else ""
        raise ctx.error(f'{prefix}tag not found: "{a.value}"', path)
    if a.kind == "group" and a.value not in groups:
        prefix = f"{side}=" if side else ""
        raise ctx.error(f'{prefix}group not found: "{a.value}"', path)


def _self_sources_ok(srcs: list[Alias], allow_wildcard: bool) -> bool:
    # autogroup:self in dst narrows sources to the destination's own user, so
    # only sources that name users make sense (Tailscale's wording below).
    for a in srcs:
        if a.kind in ("user", "group"):
            continue
        if a.kind == "autogroup" and a.value == "autogroup:member":
            continue
        if a.kind == "wildcard" and allow_wildcard:
            continue
        return False
    return True


SELF_SOURCE_MSG = "autogroup:self can only be used with users, groups, or supported autogroups"


def _parse_srcs(ctx, obj, path, alias, tag_owners, groups, *, side="src", quote=False):
    srcs = []
    for j, s in enumerate(_strings(ctx, obj, path, side)):
        a = alias(s, path + (j,))
        if a.kind == "autogroup" and a.value == "autogroup:self":
            raise ctx.error('"autogroup:self" not valid on the src side of a rule', path + (j,))
        if a.value == "autogroup:internet":
            # The internet is reached through exit nodes; it never opens a connection.
            raise ctx.error(INTERNET_SRC_MSG, path + (j,))
        _check_not_nonroot(ctx, a, path + (j,))
        _check_refs(ctx, a, path + (j,), tag_owners, groups, side)
        srcs.append(a)
    return srcs


# Headscale's wording (policy/v2 ErrAutogroupInternetSrc); Tailscale's is not on record.
INTERNET_SRC_MSG = "autogroup:internet can only be used in ACL destinations"


def _check_not_nonroot(ctx: _Ctx, a: Alias, path: tuple) -> None:
    """autogroup:nonroot names login users of an SSH rule, never devices (kb/1396)."""
    if a.value == "autogroup:nonroot":
        raise ctx.error('"autogroup:nonroot" can only be used in the users of an SSH rule', path)


def _check_cap_name(ctx: _Ctx, name: str, allowed_reserved: frozenset[str], path: tuple) -> None:
    if not _CAP_NAME.match(name):
        raise ctx.error(CAP_FORM_MSG, path)
    if name.lower().startswith(RESERVED_CAP_DOMAIN) and name not in allowed_reserved:
        raise ctx.error(CAP_RESERVED_MSG, path)


def _check_ip_pool(ctx: _Ctx, text: str, path: tuple) -> None:
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ctx.error(f'ipPool "{text}": invalid prefix', path) from None
    if net.version != 4 or not net.subnet_of(CGNAT):
        raise ctx.error(f'ipPool "{text}": nodeAttrs ipPool must be within {CGNAT}', path)
    for reserved in RESERVED_POOL_RANGES:
        if net.overlaps(reserved):
            raise ctx.error(f'ipPool "{text}": nodeAttrs ipPool must not overlap reserved '
                            f"Tailscale range {reserved}", path)


def _parse_acl(ctx, acl, path, alias, tag_owners, groups, hosts) -> Rule:
    ctx.fields(acl, ACL_FIELDS, path, "acls")
    action = acl.get("action")
    if action != "accept":
        raise ctx.error(f'action="{action}" is not supported', path + ("action",))
    srcs = _parse_srcs(ctx, acl.get("src"), path + ("src",), alias, tag_owners, groups)
    dsts = []
    for j, d in enumerate(_strings(ctx, acl.get("dst"), path + ("dst",), "dst")):
        p = path + ("dst", j)
        try:
            host, ports_s = split_dst_port(d)
            ports = parse_ports(ports_s)
        except ValidationError as exc:
            raise ctx.error(f'dst="{d}": {exc.message}', p) from None
        try:
            a = parse_alias(host, hosts)
        except ValidationError as exc:
            raise ctx.error(f'dst="{d}": {exc.message}', p) from None
        if a.kind == "tag" and a.value not in tag_owners:
            raise ctx.error(f'dst="{host}": tag not found: "{a.value}"', p)
        if a.kind == "group" and a.value not in groups:
            raise ctx.error(f'dst="{host}": group not found: "{a.value}"', p)
        if a.kind == "autogroup" and a.value == "autogroup:danger-all":
            raise ctx.error("cannot use autogroup:danger-all as a dst", p)
        _check_not_nonroot(ctx, a, p)
        dsts.append((a, ports))
    if any(a.value == "autogroup:self" for a, _ in dsts) and not _self_sources_ok(srcs, True):
        raise ctx.error(SELF_SOURCE_MSG, path + ("dst",))
    protocols = None
    if acl.get("proto"):
        try:
            protocols = parse_proto(str(acl["proto"]))
        except ValidationError as exc:
            raise ctx.error(exc.message, path + ("proto",)) from None
    return Rule(srcs=tuple(srcs), dsts=tuple(dsts), is_acl=True, protocols=protocols)


def _parse_grant(ctx, grant, path, alias, tag_owners, groups) -> Rule:
    ctx.fields(grant, GRANT_FIELDS, path, "grants")
    srcs = _parse_srcs(ctx, grant.get("src"), path + ("src",), alias, tag_owners, groups)
    ip_entries = _strings(ctx, grant.get("ip"), path + ("ip",), "ip")
    app = grant.get("app")
    if not ip_entries and not app:
        raise ctx.error("ip and app can not both be empty", path)
    if app is not None:
        if not isinstance(app, dict):
            raise ctx.error("app: expected an object", path + ("app",), cls=ParseError)
        for name in app:
            _check_cap_name(ctx, name, GRANTABLE_TAILSCALE_CAPS, path + ("app", name))
    dsts = []
    for j, d in enumerate(_strings(ctx, grant.get("dst"), path + ("dst",), "dst")):
        p = path + ("dst", j)
        a = alias(d, p)
        if a.kind == "autogroup" and a.value == "autogroup:danger-all":
            raise ctx.error("cannot use autogroup:danger-all as a dst", p)
        _check_not_nonroot(ctx, a, p)
        if a.kind == "tag" and a.value not in tag_owners:
            raise ctx.error(f'tag "{a.value}" not found', p)
        if a.kind == "group" and a.value not in groups:
            raise ctx.error(f'group "{a.value}" not found', p)
        if a.kind == "prefix" and a.value.split("/")[-1] == "0" and "/" in a.value:
            raise ctx.error(f'dst "{a.value}": to allow all IP addresses, use "*" or "autogroup:internet"', p)
        if a.value == "autogroup:internet" and app:
            raise ctx.error("cannot use app grants with autogroup:internet", p)
        dsts.append((a, None))
    if any(a.value == "autogroup:self" for a, _ in dsts) and not _self_sources_ok(srcs, False):
        raise ctx.error(SELF_SOURCE_MSG, path + ("dst",))
    ip = []
    for j, entry in enumerate(ip_entries):
        try:
            ip.append(parse_ip_entry(entry))
        except ValidationError as exc:
            raise ctx.error(exc.message, path + ("ip", j)) from None
    via = []
    for j, v in enumerate(_strings(ctx, grant.get("via"), path + ("via",), "via")):
        if not v.startswith("tag:"):
            raise ctx.error("via can only be a tag", path + ("via", j))
        if v not in tag_owners:
            raise ctx.error(f'tag "{v}" not found', path + ("via", j))
        via.append(v)
    return Rule(srcs=tuple(srcs), dsts=tuple(dsts), ip=tuple(ip), app=app, via=tuple(via))


def parse_ip_entry(entry: str) -> IPProto:
    """A grant "ip" entry: "*", "443", "tcp:443", "udp:*", "icmp:*", "tcp"."""
    if entry == "*":
        return IPProto(None, ALL_PORTS)
    proto_s, sep, ports_s = entry.rpartition(":")
    if not sep:
        # A bare entry is ports only: Tailscale reads "icmp" as a bad port.
        return IPProto(None, parse_ports(entry))
    return IPProto(parse_proto(proto_s), parse_ports(ports_s))


def _parse_ssh(ctx, rule, path, alias, tag_owners, groups, hosts) -> SSHRule:
    ctx.fields(rule, SSH_FIELDS, path, "ssh")
    action = rule.get("action")
    if isinstance(action, str):
        action = action.strip()
    if not action:
        raise ctx.error("action must be specified", path)
    if action not in ("accept", "check"):
        raise ctx.error(f'"{action}" is not a valid action', path + ("action",))
    srcs = _parse_srcs(ctx, rule.get("src"), path + ("src",), alias, tag_owners, groups)
    dsts = []
    for j, d in enumerate(_strings(ctx, rule.get("dst"), path + ("dst",), "dst")):
        p = path + ("dst", j)
        try:
            a = parse_alias(d.strip(), hosts)
        except ValidationError:
            raise ctx.error(f'invalid dst "{d}"', p) from None
        if a.kind in ("host", "prefix", "wildcard"):
            # SSH destinations are nodes, never addresses.
            raise ctx.error(f'invalid dst "{d}"', p)
        if a.value == "autogroup:internet":
            raise ctx.error(INTERNET_SRC_MSG, p)
        _check_not_nonroot(ctx, a, p)
        _check_refs(ctx, a, p, tag_owners, groups, "dst")
        dsts.append(a)
    if "users" not in rule or rule.get("users") is None:
        raise ctx.error("users must be specified", path)
    users = _strings(ctx, rule.get("users"), path + ("users",), "users")
    if not users:
        raise ctx.error("users must be specified", path)
    users = [u.strip() for u in users]
    for j, u in enumerate(users):
        if u in ("", "*"):
            raise ctx.error(f'user "{u}" is not valid', path + ("users", j))
    check_period = None
    if rule.get("checkPeriod") is not None:
        cp = rule["checkPeriod"]
        if cp == "always":
            check_period = 0.0
        else:
            if not isinstance(cp, str):
                raise ctx.error(f"checkPeriod: expected a duration string, got {json.dumps(cp)}",
                                path + ("checkPeriod",), cls=ParseError)
            try:
                check_period = parse_go_duration(cp)
            except ValueError as exc:
                raise ctx.error(str(exc), path + ("checkPeriod",)) from None
            if check_period < 0:
                raise ctx.error(f"checkPeriod {format_go_duration(check_period)} must be a positive duration",
                                path + ("checkPeriod",))
            if check_period > MAX_CHECK_PERIOD:
                raise ctx.error(f"checkPeriod {format_go_duration(check_period)} is above the max (168h)",
                                path + ("checkPeriod",))
    accept_env = _strings(ctx, rule.get("acceptEnv"), path + ("acceptEnv",), "acceptEnv")
    for j, e in enumerate(accept_env):
        if not e:
            raise ctx.error("acceptEnv values cannot be empty", path + ("acceptEnv", j))
    return SSHRule(action=action, srcs=tuple(srcs), dsts=tuple(dsts), users=tuple(users),
                   check_period=check_period, accept_env=tuple(accept_env))
