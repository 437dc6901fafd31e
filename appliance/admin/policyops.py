"""/api/v1/policy: the access policy, checked by the real engine."""

from __future__ import annotations

from ..errors import Invalid, NotFound
from ..policy import PolicyError
from ..policy.reach import reach
from ..tailnet.policy import policy_node
from .backend import Backend
from .router import Call, Router
from .schema import ID, Int, Str
from .types import (
    Empty, PolicyBody, PolicyHistory, PolicyProblem, PolicyValidation, PolicyResponse, PolicyVersionInfo, PolicyVersionResponse, ReachersResponse,
    Reacher, ReachResponse, Topology, port,
)

NODE_REF = Str(min_len=1, max_len=256, doc="a node's ID, name, hostname or address")


def routes(r: Router, b: Backend) -> None:
    t = b.tailnet

    @r.get("/api/v1/policy", "getPolicy", "Get the policy in force", tag="Policy", response=PolicyResponse)
    async def get_policy(call: Call) -> PolicyResponse:
        return PolicyResponse(b.policy.text or "", b.policy.updated_at)

    @r.put("/api/v1/policy", "setPolicy", "Replace the policy", tag="Policy", body=PolicyBody,
           response=PolicyResponse, errors=(403,), changes=True,
           description="Only with policy.mode: database (403 otherwise: edit the file). A policy "
                       "the engine refuses is answered 422 and the old one stays.")
    async def set_policy(call: Call, body: PolicyBody) -> PolicyResponse:
        await b.policy.set(body.policy, author=call.actor.describe())
        return PolicyResponse(b.policy.text or "", b.policy.updated_at)

    async def latest_id() -> int | None:
        newest = await t.store.policy_versions(1)
        return newest[0].id if newest else None

    def info(v, current: int | None) -> PolicyVersionInfo:
        return PolicyVersionInfo(v.id, v.created_at, v.author, v.size, v.id == current)

    @r.get("/api/v1/policy/history", "listPolicyVersions", "Every saved version of the policy", tag="Policy",
           query={"limit": Int(minimum=1, maximum=1000, doc="at most this many (default 100)")},
           response=PolicyHistory,
           description="trioscale: with policy.mode: database every saved policy is kept, with who "
                       "saved it and when; newest first.")
    async def history(call: Call, limit: int = 100) -> PolicyHistory:
        versions = await t.store.policy_versions(limit)
        current = versions[0].id if versions else None
        return PolicyHistory(tuple(info(v, current) for v in versions))

    async def version(version_id: int):
        found = await t.store.policy_version(version_id)
        if found is None:
            raise NotFound(f"policy version {version_id} not found")
        return found

    @r.get("/api/v1/policy/history/{versionId}", "getPolicyVersion", "One saved version of the policy",
           tag="Policy", params={"versionId": ID()}, response=PolicyVersionResponse, errors=(404,))
    async def get_version(call: Call, version_id: int) -> PolicyVersionResponse:
        v, text = await version(version_id)
        return PolicyVersionResponse(info(v, await latest_id()), text)

    @r.post("/api/v1/policy/history/{versionId}/restore", "restorePolicyVersion",
            "Put a saved version of the policy back in force", tag="Policy", params={"versionId": ID()},
            response=PolicyResponse, errors=(403, 404), changes=True,
            description="trioscale: the version's text is checked against the live tailnet and saved "
                        "as a new version (history is never rewritten); refused (422) if the engine "
                        "no longer accepts it, and the policy in force stays.")
    async def restore(call: Call, version_id: int) -> PolicyResponse:
        v, text = await version(version_id)
        await b.policy.set(text, author=f"{call.actor.describe()} (restored version {v.id})")
        return PolicyResponse(b.policy.text or "", b.policy.updated_at)

    @r.post("/api/v1/policy/check", "checkPolicy", "Check a policy against the live tailnet", tag="Policy",
            body=PolicyBody, response=Empty, description="Nothing is stored or applied.")
    async def check_policy(call: Call, body: PolicyBody) -> Empty:
        try:
            await b.policy.check(body.policy)
        except PolicyError as e:
            raise Invalid(str(e)) from None
        return Empty()

    @r.post("/api/v1/policy/validate", "validatePolicy", "Check a policy; the answer lists its errors",
            tag="Policy", body=PolicyBody, response=PolicyValidation,
            description="trioscale: as checkPolicy, but a refused policy is a 200 answer with the "
                        "engine's errors and their line and column (the console's editor checks as "
                        "you type). Nothing is stored or applied.")
    async def validate_policy(call: Call, body: PolicyBody) -> PolicyValidation:
        try:
            await b.policy.check(body.policy)
        except PolicyError as e:
            return PolicyValidation(False, (PolicyProblem(e.message, e.line, e.column),))
        return PolicyValidation(True, ())

    @r.get("/api/v1/policy/topology", "getTopology", "The tailnet as `policy evaluate` reads it",
           tag="Policy", response=Topology)
    async def topology(call: Call) -> Topology:
        users = tuple({"id": u.id, "name": u.name, "email": u.email, "role": u.role, "groups": list(u.groups)}
                      for u in t.users.values())
        names = {u.id: u.name for u in t.users.values()}
        nodes = {}
        for n in t.nodes.values():
            pn = policy_node(n)
            nodes[n.given_name] = {
                "hostname": n.given_name, "tags": list(n.tags), "ipv4": n.ipv4, "ipv6": n.ipv6,
                "user": names.get(n.user_id) if not n.tags else None,
                "routable_ips": list(pn.routable_ips), "approved_routes": list(n.approved_routes),
            }
        return Topology(users, nodes)

    def node_named(ref: str):
        for n in t.nodes.values():
            if ref in (str(n.id), n.given_name, n.hostname, n.ipv4, n.ipv6):
                return n
        raise NotFound(f"node {ref[:80]!r} not found")

    @r.get("/api/v1/policy/reach", "checkReach", "May SRC reach DST on PORT, and by which rule",
           tag="Policy", query={"src": NODE_REF, "dst": NODE_REF, "port": port("0: any port")},
           response=ReachResponse, errors=(404,))
    async def check_reach(call: Call, src: str = "", dst: str = "", port: int = 0) -> ReachResponse:
        s, d = node_named(src), node_named(dst)
        if b.policy.engine is None:
            return ReachResponse(True, "no policy is set: every node may reach every node")
        allowed, reason = reach(b.policy.engine, policy_node(s), policy_node(d), port)
        return ReachResponse(allowed, reason)

    @r.get("/api/v1/policy/reachers", "listReachers", "Every node that may reach DST on PORT, and by which rule",
           tag="Policy", query={"dst": NODE_REF, "port": port("0: any port")}, response=ReachersResponse,
           errors=(404,), description="trioscale: \"who can reach this machine\" under the policy in force.")
    async def reachers(call: Call, dst: str = "", port: int = 0) -> ReachersResponse:
        d = node_named(dst)
        out = []
        for s in sorted(t.nodes.values(), key=lambda n: n.id):
            if s.id == d.id:
                continue
            if b.policy.engine is None:
                out.append(Reacher(s.id, s.given_name, "no policy is set: every node may reach every node"))
                continue
            allowed, reason = reach(b.policy.engine, policy_node(s), policy_node(d), port)
            if allowed:
                out.append(Reacher(s.id, s.given_name, reason))
        return ReachersResponse(tuple(out))
