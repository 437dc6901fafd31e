"""/api/v1/auth: interactive logins and SSH checks waiting for a decision (Headscale 0.28's
auth verbs; the list is trioscale's own)."""

from __future__ import annotations

from ..errors import NotFound
from .backend import Backend
from .router import Call, Router
from .shapes import auth_request_of, node_of
from .types import AuthIdBody, AuthRegisterBody, AuthRequestList, Empty, NodeResponse


def routes(r: Router, b: Backend) -> None:
    t = b.tailnet

    def control():
        if b.control is None:  # an API without the control service (some tests) has none waiting
            raise NotFound("no pending auth request with that ID")
        return b.control

    @r.get("/api/v1/auth", "listAuthRequests", "List pending logins and SSH checks", tag="Auth",
           response=AuthRequestList, description="trioscale: oldest first, with their expiry.")
    async def list_auth(call: Call) -> AuthRequestList:
        waiting = b.control.auth.waiting(t.clock()) if b.control is not None else []
        return AuthRequestList(tuple(auth_request_of(x) for x in waiting))

    @r.post("/api/v1/auth/register", "authRegister", "Register a waiting machine as a user's", tag="Auth",
            body=AuthRegisterBody, response=NodeResponse, errors=(404, 409), changes=True,
            description="The machine whose login page shows `authId` joins as `user`; its client is "
                        "answered at once.")
    async def auth_register(call: Call, body: AuthRegisterBody) -> NodeResponse:
        n = await control().register_pending(body.auth_id, body.user)
        return NodeResponse(node_of(t, n))

    @r.post("/api/v1/auth/approve", "authApprove", "Approve a pending auth request", tag="Auth",
            body=AuthIdBody, response=Empty, errors=(404, 409), changes=True,
            description="An SSH check passes; a machine that had a node logs in again as its user "
                        "(a new machine needs authRegister).")
    async def auth_approve(call: Call, body: AuthIdBody) -> Empty:
        await control().approve(body.auth_id)
        return Empty()

    @r.post("/api/v1/auth/reject", "authReject", "Reject a pending auth request", tag="Auth",
            body=AuthIdBody, response=Empty, errors=(404, 409), changes=True,
            description="The waiting client is told at once.")
    async def auth_reject(call: Call, body: AuthIdBody) -> Empty:
        await control().reject(body.auth_id)
        return Empty()
