"/api/v1/node: nodes, their names, tags, owners, expiry and routes."

from __future__ import annotations

from ..errors import Invalid, NotFound
from .backend import Backend
from .router import Call, Router
from .schema import ID, Bool, Time
from .shapes import node_of
from .types import (
    AUTH_ID, NODE_NAME, ApproveRoutesBody, Empty, ExpireNodeBody, MoveNodeBody, NodeList, NodeResponse, Ref,
    RegisterNodeBody, SetTagsBody,
)

EXIT_ROUTES = ("0.0.0.0/0", "::/0")
NODE_ID = {"nodeId": ID()}


def routes(r: Router, b: Backend) -> None:
    t = b.tailnet

    def node(node_id: int) -> NodeResponse:
        return NodeResponse(node_of(t, t.get_node(node_id)))

    @r.get("/api/v1/node", "listNodes", "List nodes", tag="Nodes", response=NodeList,
           query={"user": Ref("only this user's nodes: ID, name or email")}, errors=(404,))
    async def list_nodes(call: Call, user: str | None = None) -> NodeList:
        nodes = sorted(t.nodes.values(), key=lambda n: n.id)
        if user:
            uid = t.find_user(user).id
            nodes = [n for n in nodes if n.user_id == uid]
        return NodeList(tuple(node_of(t, n) for n in nodes))

    @r.get("/api/v1/node/{nodeId}", "getNode", "Get a node", tag="Nodes", params=NODE_ID,
           response=NodeResponse, errors=(404,))
    async def get_node(call: Call, node_id: int) -> NodeResponse:
        return node(node_id)

    @r.delete("/api/v1/node/{nodeId}", "deleteNode", "Delete a node", tag="Nodes", params=NODE_ID,
              response=Empty, errors=(404,), changes=True)
    async def delete_node(call: Call, node_id: int) -> Empty:
        await t.delete_node(node_id)
        return Empty()

    @r.post("/api/v1/node/{nodeId}/expire", "expireNode", "Expire a node's key (log it out)", tag="Nodes",
            params=NODE_ID, query={"expiry": Time(), "disableExpiry": Bool()}, body=ExpireNodeBody,
            body_required=False, response=NodeResponse, errors=(404,), changes=True,
            description="Now, at `expiry`, or never with `disableExpiry` (body or query).")
    async def expire_node(call: Call, node_id: int, body: ExpireNodeBody = ExpireNodeBody(),
                          expiry=None, disable_expiry: bool = False) -> NodeResponse:
        expiry = body.expiry or expiry
        never = body.disable_expiry or disable_expiry
        if never and expiry is not None:
            raise Invalid("give either expiry or disableExpiry, not both")
        t.get_node(node_id)
        await t.update_node(node_id, expiry=None if never else (expiry or t.clock()))
        return node(node_id)

    @r.post("/api/v1/node/{nodeId}/rename/{newName}", "renameNode", "Rename a node", tag="Nodes",
            params={**NODE_ID, "newName": NODE_NAME}, response=NodeResponse, errors=(404, 409),
            changes=True, description="Its MagicDNS name; peers learn it at once.")
    async def rename_node(call: Call, node_id: int, new_name: str) -> NodeResponse:
        t.get_node(node_id)
        await t.rename_node(node_id, new_name)
        return node(node_id)

    @r.post("/api/v1/node/{nodeId}/tags", "setTags", "Set a node's tags", tag="Nodes", params=NODE_ID,
            body=SetTagsBody, response=NodeResponse, errors=(404,), changes=True,
            description="An empty list gives the node back to its user; a node without a user "
                        "keeps at least one tag.")
    async def set_tags(call: Call, node_id: int, body: SetTagsBody) -> NodeResponse:
        await t.set_tags(node_id, body.tags)
        return node(node_id)

    @r.post("/api/v1/node/{nodeId}/user", "moveNode", "Move a node to another user", tag="Nodes",
            params=NODE_ID, body=MoveNodeBody, response=NodeResponse, errors=(404,), changes=True)
    async def move_node(call: Call, node_id: int, body: MoveNodeBody) -> NodeResponse:
        t.get_node(node_id)
        await t.move_node(node_id, body.user)
        return node(node_id)

    @r.post("/api/v1/node/{nodeId}/approve_routes", "setApprovedRoutes", "Set a node's approved routes",
            tag="Nodes", params=NODE_ID, body=ApproveRoutesBody, response=NodeResponse, errors=(404,),
            changes=True)
    async def approve_routes(call: Call, node_id: int, body: ApproveRoutesBody) -> NodeResponse:
        routes = set(body.routes)
        if routes & set(EXIT_ROUTES):
            routes |= set(EXIT_ROUTES)  # one exit route without the other is no exit node
        await t.set_approved_routes(node_id, routes)
        return node(node_id)

    @r.post("/api/v1/node/{nodeId}/approve", "approveNode", "Approve a node waiting for device approval",
            tag="Nodes", params=NODE_ID, response=NodeResponse, errors=(404,), changes=True,
            description="trioscale: with node.approval_required a new node has no peers and no peer "
                        "sees it until approved.")
    async def approve_node(call: Call, node_id: int) -> NodeResponse:
        t.get_node(node_id)
        return NodeResponse(node_of(t, await t.approve_node(node_id)))

    @r.post("/api/v1/node/register", "registerNode", "Approve a pending interactive login", tag="Nodes",
            query={"user": Ref(), "key": AUTH_ID}, body=RegisterNodeBody, body_required=False,
            response=NodeResponse, errors=(404, 409), changes=True,
            description="Headscale's older verb for POST /api/v1/auth/register; `key` is the auth ID.")
    async def register_node(call: Call, body: RegisterNodeBody = RegisterNodeBody(), user: str | None = None,
                            key: str | None = None) -> NodeResponse:
        user, key = user or body.user, key or body.key
        if not user or not key:
            raise Invalid("register needs a user and the key shown on the login page")
        if b.control is None:
            raise NotFound("no pending auth request with that ID")
        n = await b.control.register_pending(key, user)
        return NodeResponse(node_of(t, n))
