"""Loading the conformance corpus and comparing results the way a client
would use them: rules as sets of sources, destinations, ports, protocols and
capabilities; SSH rules in order; policy-derived node capabilities; peers."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.policy.ipset import IPSet

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "conformance" / "policy"

# Node capabilities Tailscale's SaaS adds from tailnet settings and admin
# roles, not from the policy file; a self-hosted server sets its own.
SAAS_DEFAULT_CAPS = {
    "https://tailscale.com/cap/is-admin", "https://tailscale.com/cap/is-owner",
    "https://tailscale.com/cap/tailnet-lock", "https://tailscale.com/cap/file-sharing",
    "https://tailscale.com/cap/ssh", "probe-udp-lifetime", "ssh-behavior-v1", "ssh-env-vars",
    "store-appc-routes", "tailnet-display-name", "default-auto-update",
}


def load_cases() -> list[dict]:
    if not CORPUS.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(CORPUS.glob("*/*.json"))]


def topology_with_roles(case: dict) -> dict:
    """The case's topology with each user's role. The captures do not list roles, but
    Tailscale states them in every user-owned node's capabilities (is-owner for the Owner,
    is-admin for an Admin; the Owner carries both); a refused policy has no nodes, and
    its users keep the default (the first user owns the tailnet)."""
    topo = case["topology"]
    roles: dict[str, str] = {}
    for host, got in (case.get("nodes") or {}).items():
        user = (topo.get("nodes", {}).get(host) or {}).get("user")
        caps = got.get("self_cap_map") or {}
        if not user or (topo["nodes"][host].get("tags") or []):
            continue
        if "https://tailscale.com/cap/is-owner" in caps:
            roles[user] = "owner"
        elif "https://tailscale.com/cap/is-admin" in caps:
            roles.setdefault(user, "admin")
    if not roles:
        return topo
    users = [dict(u, role=u.get("role") or roles.get(u.get("name"), "member"))
             for u in topo.get("users", [])]
    return dict(topo, users=users)


def _addrs(items) -> str:
    if items == ["*"] or "*" in (items or []):
        return "*"
    return ",".join(IPSet.parse(*items).strings()) if items else ""


def normalize_filter(rules) -> tuple:
    ports: dict[tuple, set] = {}
    caps: set = set()
    for r in rules or []:
        src = _addrs(r.get("SrcIPs") or [])
        if r.get("CapGrant"):
            for cg in r["CapGrant"]:
                caps.add((src, _addrs(cg.get("Dsts") or []), json.dumps(cg.get("CapMap"), sort_keys=True)))
            continue
        key = (src, tuple(sorted(r.get("IPProto") or ())))
        s = ports.setdefault(key, set())
        for dp in r.get("DstPorts") or []:
            s.add((_addrs([dp["IP"]]), dp["Ports"]["First"], dp["Ports"]["Last"]))
    return ({k: frozenset(v) for k, v in ports.items() if v}, frozenset(caps))


def normalize_ssh(pol) -> list:
    if not pol:
        return []
    out = []
    for r in pol.get("rules") or []:
        out.append((
            frozenset(json.dumps(p, sort_keys=True) for p in r.get("principals") or []),
            json.dumps(r.get("sshUsers"), sort_keys=True),
            json.dumps(r.get("action"), sort_keys=True),
            tuple(r.get("acceptEnv") or ()),
        ))
    return out


def policy_caps(cap_map) -> dict:
    return {k: v for k, v in (cap_map or {}).items() if k not in SAAS_DEFAULT_CAPS}


def compare(case: dict, got: dict) -> list[str]:
    """Differences between Tailscale's capture and our evaluation."""
    diffs: list[str] = []
    if case["expect_error"]:
        if got["error"] is None:
            diffs.append("Tailscale refused the policy, we accepted it")
        want_msg = (case.get("api_response_body") or {}).get("message")
        if got["error"] is not None and want_msg and got["error"] != want_msg:
            diffs.append(f"refusal message {got['error']!r} != Tailscale's {want_msg!r}")
        return diffs
    if got["error"] is not None:
        return [f"we refused the policy: {got['error']}"]
    for host, want in sorted(case["nodes"].items()):
        mine = got["nodes"].get(host)
        if mine is None:
            diffs.append(f"{host}: missing")
            continue
        if normalize_filter(want.get("packet_filter_rules")) != normalize_filter(mine["packet_filter_rules"]):
            diffs.append(f"{host}: packet filter differs")
        if normalize_ssh(want.get("ssh_policy")) != normalize_ssh(mine["ssh_policy"]):
            diffs.append(f"{host}: ssh policy differs")
        if policy_caps(want.get("self_cap_map")) != policy_caps(mine["self_cap_map"]):
            diffs.append(f"{host}: self cap map differs")
        want_peers = sorted(p["name"] for p in want.get("peers") or [])
        if want_peers != sorted(mine["peers"]):
            diffs.append(f"{host}: peers differ")
    return diffs
