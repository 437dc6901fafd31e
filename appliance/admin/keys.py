"""/api/v1/preauthkey and /api/v1/apikey: pre-auth keys and API keys."""

from __future__ import annotations

from datetime import timedelta

from ..errors import Invalid
from .apikeys import masked
from .backend import Backend
from .router import Call, Router
from .schema import ID, Str
from .shapes import preauth_of
from .types import (
    ApiKey, ApiKeyList, CreateApiKeyBody, CreateApiKeyResponse, CreatePreAuthKeyBody, Empty,
    ExpireApiKeyBody, ExpirePreAuthKeyBody, PreAuthKeyList, PreAuthKeyResponse, Ref,
)

PREAUTH_DEFAULT_LIFETIME = timedelta(hours=1)
API_KEY_DEFAULT_LIFETIME = timedelta(days=90)


def routes(r: Router, b: Backend) -> None:
    t = b.tailnet

    def future(when, default: timedelta) -> timedelta:
        now = t.clock()
        if when is None:
            return default
        if when <= now:
            raise Invalid("expiration: must be in the future")
        return when - now

    # --- pre-auth keys ------------------------------------------------------------------

    @r.get("/api/v1/preauthkey", "listPreAuthKeys", "List pre-auth keys", tag="PreAuthKeys",
           query={"user": Ref("only this user's keys")}, response=PreAuthKeyList, errors=(404,))
    async def list_keys(call: Call, user: str | None = None) -> PreAuthKeyList:
        keys = sorted(t.keys.values(), key=lambda k: k.id)
        if user:
            uid = t.find_user(user).id
            keys = [k for k in keys if k.user_id == uid]
        return PreAuthKeyList(tuple(preauth_of(t, k) for k in keys))

    @r.post("/api/v1/preauthkey", "createPreAuthKey", "Create a pre-auth key", tag="PreAuthKeys",
            body=CreatePreAuthKeyBody, response=PreAuthKeyResponse, errors=(404,), changes=True,
            description="The answer holds the whole key, the only time it is shown.")
    async def create_key(call: Call, body: CreatePreAuthKeyBody) -> PreAuthKeyResponse:
        rec, text = await t.create_preauth_key(
            body.user or None, reusable=body.reusable, ephemeral=body.ephemeral,
            expiration=future(body.expiration, PREAUTH_DEFAULT_LIFETIME), tags=body.acl_tags,
            pre_approved=body.pre_approved,
        )
        return PreAuthKeyResponse(preauth_of(t, rec, text))

    @r.post("/api/v1/preauthkey/expire", "expirePreAuthKey", "Expire a pre-auth key", tag="PreAuthKeys",
            body=ExpirePreAuthKeyBody, response=Empty, errors=(404,), changes=True)
    async def expire_key(call: Call, body: ExpirePreAuthKeyBody) -> Empty:
        ref = str(body.id) if body.id is not None else body.key
        if not ref:
            raise Invalid("which pre-auth key? give id (or key)")
        await t.expire_preauth_key(ref)
        return Empty()

    @r.delete("/api/v1/preauthkey", "deletePreAuthKey", "Delete a pre-auth key", tag="PreAuthKeys",
              query={"id": ID()}, response=Empty, errors=(404,), changes=True,
              description="Nodes it registered stay.")
    async def delete_key(call: Call, id: int | None = None) -> Empty:
        if id is None:
            raise Invalid("which pre-auth key? give ?id=")
        await t.delete_preauth_key(str(id))
        return Empty()

    # --- API keys -----------------------------------------------------------------------

    def api_key(k) -> ApiKey:
        return ApiKey(id=k.id, prefix=masked(k.prefix), expiration=k.expiration, created_at=k.created_at,
                      last_seen=k.last_seen)

    @r.get("/api/v1/apikey", "listApiKeys", "List API keys", tag="ApiKeys", response=ApiKeyList)
    async def list_api_keys(call: Call) -> ApiKeyList:
        return ApiKeyList(tuple(api_key(k) for k in b.apikeys.listed()))

    @r.post("/api/v1/apikey", "createApiKey", "Create an API key", tag="ApiKeys", body=CreateApiKeyBody,
            body_required=False, response=CreateApiKeyResponse, changes=True,
            description="The answer holds the key, the only time it is shown (only its hash is kept).")
    async def create_api_key(call: Call, body: CreateApiKeyBody = CreateApiKeyBody()) -> CreateApiKeyResponse:
        lifetime = future(body.expiration, API_KEY_DEFAULT_LIFETIME)
        _, text = await b.apikeys.create(t.clock() + lifetime)
        return CreateApiKeyResponse(text)

    def one_key(id: int | None, prefix: str | None):
        if (id is None) == (not prefix):
            raise Invalid("give either id or prefix")
        return b.apikeys.find(str(id) if id is not None else prefix)

    @r.post("/api/v1/apikey/expire", "expireApiKey", "Expire an API key", tag="ApiKeys",
            body=ExpireApiKeyBody, response=Empty, errors=(404,), changes=True)
    async def expire_api_key(call: Call, body: ExpireApiKeyBody) -> Empty:
        await b.apikeys.expire(one_key(body.id, body.prefix))
        return Empty()

    @r.delete("/api/v1/apikey/{prefix}", "deleteApiKey", "Delete an API key", tag="ApiKeys",
              params={"prefix": Str(min_len=1, max_len=200, doc="the key's prefix (or hskey-api-PREFIX-***)")},
              query={"id": ID()}, response=Empty, errors=(404,), changes=True)
    async def delete_api_key(call: Call, prefix: str, id: int | None = None) -> Empty:
        await b.apikeys.delete(b.apikeys.find(str(id)) if id else b.apikeys.find(prefix))
        return Empty()
