"""/api/v1/policy: the access policy, checked by the real engine."""

from __future__ import annotations

from ..errors import Invalid, NotFound
from ..policy import PolicyError
from ..policy.reach import reach
from ..tailnet.policy import policy_node
from .backend import Backend
from .router import Call, Router
from .schema import Str
from .types import Empty, PolicyBody, PolicyResponse, ReachResponse, Topology, port

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
        await b.policy.set(body.policy)
        return PolicyResponse(b.policy.text or "", b.policy.updated_at)

    @r.post("/api/v1/policy/check", "checkPolicy", "Check a policy against the live tailnet", tag="Policy",
            body=PolicyBody, response=Empty, description="Nothing is stored or applied.")
    async def check_policy(call: Call, body: PolicyBody) -> Empty:
        try:
            await b.policy.check(body.policy)
        except PolicyError as e:
            raise Invalid(str(e)) from None
        return Empty()

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
