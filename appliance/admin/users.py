"""/api/v1/user: users."""

from __future__ import annotations

from ..errors import Forbidden
from .backend import Backend
from .router import Call, Router
from .schema import ID, Str
from .shapes import user_of
from .types import USER_NAME, CreateUserBody, Empty, SetRoleBody, UserList, UserResponse


def routes(r: Router, b: Backend) -> None:
    @r.get("/api/v1/user", "listUsers", "List users", tag="Users", response=UserList,
           query={"id": ID(), "name": Str(max_len=256), "email": Str(max_len=256)},
           description="Filters: name, else email, else id (Headscale's precedence); id 0 lists all.")
    async def list_users(call: Call, id: int | None = None, name: str | None = None,
                         email: str | None = None) -> UserList:
        users = sorted(b.tailnet.users.values(), key=lambda u: u.id)
        if name:
            users = [u for u in users if u.name == name]
        elif email:
            users = [u for u in users if u.email.casefold() == email.casefold()]
        elif id:
            users = [u for u in users if u.id == id]
        return UserList(tuple(user_of(b.tailnet, u) for u in users))

    @r.post("/api/v1/user", "createUser", "Create a user", tag="Users", body=CreateUserBody,
            response=UserResponse, errors=(409,), changes=True)
    async def create_user(call: Call, body: CreateUserBody) -> UserResponse:
        u = await b.tailnet.create_user(body.name, body.display_name, body.email, body.picture_url)
        return UserResponse(user_of(b.tailnet, u))

    @r.post("/api/v1/user/{oldId}/rename/{newName}", "renameUser", "Rename a user", tag="Users",
            params={"oldId": ID(), "newName": USER_NAME}, response=UserResponse, errors=(404, 409),
            changes=True)
    async def rename_user(call: Call, old_id: int, new_name: str) -> UserResponse:
        return UserResponse(user_of(b.tailnet, await b.tailnet.rename_user(old_id, new_name)))

    @r.post("/api/v1/user/{id}/role", "setUserRole", "Give a user a role", tag="Users", params={"id": ID()},
            body=SetRoleBody, response=UserResponse, errors=(404, 409), changes=True,
            description="trioscale: roles decide the policy's role autogroups (autogroup:admin, ...). "
                        "A tailnet has one owner: making a user owner hands ownership over; the owner "
                        "cannot step down otherwise (409).")
    async def set_role(call: Call, id: int, body: SetRoleBody) -> UserResponse:
        if call.actor.kind == "console" and body.role == "owner" and call.actor.role != "owner":
            raise Forbidden("only the owner may hand ownership of the tailnet over")
        return UserResponse(user_of(b.tailnet, await b.tailnet.set_role(id, body.role)))

    @r.delete("/api/v1/user/{id}", "deleteUser", "Delete a user", tag="Users", params={"id": ID()},
              response=Empty, errors=(404, 409), changes=True,
              description="Refused (409) while the user owns nodes.")
    async def delete_user(call: Call, id: int) -> Empty:
        await b.tailnet.delete_user(id)
        return Empty()

