"""Routes of the admin API (``/api/v1/...``), one table from path pattern to handler."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import h11

from .. import __version__
from ..control.service import ControlService
from ..errors import Invalid, NotFound, TrioscaleError
from ..http.server import Answer
from ..tailnet import secrets as keysecrets
from ..tailnet.model import Tailnet
from ..policy import PolicyError
from ..policy.reach import reach
from ..tailnet.policy import policy_node
from .shapes import node_json, preauth_json, ts, user_json

Handler = Callable[..., Awaitable[Any]]


def _json(status: int, doc: Any) -> Answer:
    return status, [("content-type", "application/json")], json.dumps(doc).encode()


def _parse_expiration(value: Any, now: datetime) -> timedelta | None:
    """Headscale sends an RFC 3339 time; we also accept a duration in seconds."""
    if value in (None, ""):
        return timedelta(hours=1)
    if isinstance(value, (int, float)):
        return timedelta(seconds=value)
    try:
        t = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(f"expiration: expected an RFC 3339 time, got {value!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t - now


class AdminAPI:
    def __init__(self, tailnet: Tailnet, control: ControlService, policy: Any = None, *,
                 certs: Any = None, zone: Any = None) -> None:
        self.tailnet = tailnet
        self.control = control
        self.policy = policy  # the policy manager, once it exists
        self.certs = certs  # autocert's CertManager or StaticCertificate; None without TLS
        self.zone = zone  # certdns.CertZone when dns.certificates is on
        self.routes: list[tuple[str, re.Pattern, Handler]] = []
        r = self._route
        r("GET", r"/api/v1/user", self.list_users)
        r("POST", r"/api/v1/user", self.create_user)
        r("POST", r"/api/v1/user/(?P<ref>[^/]+)/rename/(?P<new>[^/]+)", self.rename_user)
        r("DELETE", r"/api/v1/user/(?P<ref>[^/]+)", self.delete_user)
        r("GET", r"/api/v1/preauthkey", self.list_keys)
        r("POST", r"/api/v1/preauthkey", self.create_key)
        r("POST", r"/api/v1/preauthkey/expire", self.expire_key)
        r("GET", r"/api/v1/node", self.list_nodes)
        r("POST", r"/api/v1/node/register", self.register_node)
        r("GET", r"/api/v1/node/(?P<id>\d+)", self.get_node)
        r("DELETE", r"/api/v1/node/(?P<id>\d+)", self.delete_node)
        r("POST", r"/api/v1/node/(?P<id>\d+)/expire", self.expire_node)
        r("POST", r"/api/v1/node/(?P<id>\d+)/rename/(?P<new>[^/]+)", self.rename_node)
        r("POST", r"/api/v1/node/(?P<id>\d+)/tags", self.tag_node)
        r("POST", r"/api/v1/node/(?P<id>\d+)/user", self.move_node)
        r("POST", r"/api/v1/node/(?P<id>\d+)/approve_routes", self.approve_routes)
        r("GET", r"/api/v1/apikey", self.list_api_keys)
        r("POST", r"/api/v1/apikey", self.create_api_key)
        r("POST", r"/api/v1/apikey/expire", self.expire_api_key)
        r("GET", r"/api/v1/policy", self.get_policy)
        r("PUT", r"/api/v1/policy", self.set_policy)
        r("POST", r"/api/v1/policy/check", self.check_policy)
        r("GET", r"/api/v1/policy/topology", self.topology)
        r("GET", r"/api/v1/policy/reach", self.reach)
        r("GET", r"/api/v1/certs", self.get_certs)
        r("GET", r"/api/v1/version", self.version)
        r("GET", r"/version", self.version)

    def _route(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append((method, re.compile(pattern + r"/?"), handler))

    async def __call__(self, req: h11.Request, body: bytes) -> Answer | None:
        target = req.target.decode("latin-1")
        parts = urlsplit(target)
        method = req.method.decode()
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        matched_path = False
        for m, pattern, handler in self.routes:
            match = pattern.fullmatch(parts.path)
            if not match:
                continue
            matched_path = True
            if m != method:
                continue
            try:
                doc = json.loads(body) if body else {}
                if not isinstance(doc, dict):
                    raise Invalid("the request body must be a JSON object")
                result = await handler(query=query, body=doc, **match.groupdict())
            except json.JSONDecodeError as e:
                return _json(400, {"code": 3, "message": f"invalid JSON: {e}"})
            except TrioscaleError as e:
                return _json(e.http_status, {"code": e.http_status, "message": str(e)})
            return _json(200, result)
        if matched_path:
            return _json(405, {"code": 12, "message": "method not allowed"})
        return None

    # --- users --------------------------------------------------------------------------

    async def list_users(self, query: dict, body: dict) -> dict:
        users = sorted(self.tailnet.users.values(), key=lambda u: u.id)
        if "id" in query:
            users = [u for u in users if str(u.id) == query["id"]]
        if "name" in query:
            users = [u for u in users if u.name == query["name"]]
        if "email" in query:
            users = [u for u in users if u.email == query["email"]]
        return {"users": [user_json(u) for u in users]}

    async def create_user(self, query: dict, body: dict) -> dict:
        u = await self.tailnet.create_user(
            str(body.get("name") or ""), str(body.get("displayName") or ""), str(body.get("email") or "")
        )
        return {"user": user_json(u)}

    async def rename_user(self, query: dict, body: dict, ref: str, new: str) -> dict:
        return {"user": user_json(await self.tailnet.rename_user(ref, new))}

    async def delete_user(self, query: dict, body: dict, ref: str) -> dict:
        await self.tailnet.delete_user(ref)
        return {}

    # --- pre-auth keys ------------------------------------------------------------------

    async def list_keys(self, query: dict, body: dict) -> dict:
        keys = sorted(self.tailnet.keys.values(), key=lambda k: k.id)
        if query.get("user"):
            uid = self.tailnet.find_user(query["user"]).id
            keys = [k for k in keys if k.user_id == uid]
        return {"preAuthKeys": [preauth_json(self.tailnet, k) for k in keys]}

    async def create_key(self, query: dict, body: dict) -> dict:
        tags = body.get("aclTags") or []
        if not isinstance(tags, list):
            raise Invalid("aclTags: expected a list of tags")
        rec, text = await self.tailnet.create_preauth_key(
            body.get("user") if body.get("user") not in (None, "", 0, "0") else None,
            reusable=bool(body.get("reusable")), ephemeral=bool(body.get("ephemeral")),
            expiration=_parse_expiration(body.get("expiration"), self.tailnet.clock()), tags=tags,
        )
        return {"preAuthKey": preauth_json(self.tailnet, rec, text)}

    async def expire_key(self, query: dict, body: dict) -> dict:
        ref = str(body.get("key") or body.get("id") or "")
        if not ref:
            raise Invalid("key: which pre-auth key to expire")
        await self.tailnet.expire_preauth_key(ref)
        return {}

    # --- nodes --------------------------------------------------------------------------

    def _node(self, id: str):
        return self.tailnet.get_node(int(id))

    async def list_nodes(self, query: dict, body: dict) -> dict:
        nodes = sorted(self.tailnet.nodes.values(), key=lambda n: n.id)
        if query.get("user"):
            uid = self.tailnet.find_user(query["user"]).id
            nodes = [n for n in nodes if n.user_id == uid]
        return {"nodes": [node_json(self.tailnet, n) for n in nodes]}

    async def get_node(self, query: dict, body: dict, id: str) -> dict:
        return {"node": node_json(self.tailnet, self._node(id))}

    async def delete_node(self, query: dict, body: dict, id: str) -> dict:
        await self.tailnet.delete_node(int(id))
        return {}

    async def expire_node(self, query: dict, body: dict, id: str) -> dict:
        return {"node": node_json(self.tailnet, await self.tailnet.expire_node(int(id)))}

    async def rename_node(self, query: dict, body: dict, id: str, new: str) -> dict:
        return {"node": node_json(self.tailnet, await self.tailnet.rename_node(int(id), new))}

    async def tag_node(self, query: dict, body: dict, id: str) -> dict:
        tags = body.get("tags")
        if not isinstance(tags, list):
            raise Invalid("tags: expected a list of tags")
        return {"node": node_json(self.tailnet, await self.tailnet.set_tags(int(id), tags))}

    async def move_node(self, query: dict, body: dict, id: str) -> dict:
        user = body.get("user")
        if user in (None, ""):
            raise Invalid("user: which user to move the node to")
        return {"node": node_json(self.tailnet, await self.tailnet.move_node(int(id), user))}

    async def approve_routes(self, query: dict, body: dict, id: str) -> dict:
        routes = body.get("routes")
        if not isinstance(routes, list):
            raise Invalid("routes: expected a list of prefixes")
        return {"node": node_json(self.tailnet, await self.tailnet.set_approved_routes(int(id), routes))}

    async def register_node(self, query: dict, body: dict) -> dict:
        user = query.get("user") or body.get("user")
        key = query.get("key") or body.get("key")
        if not user or not key:
            raise Invalid("register needs a user and the key shown on the login page")
        node = await self.control.complete_interactive(str(key), str(user))
        return {"node": node_json(self.tailnet, node)}

    # --- API keys -----------------------------------------------------------------------

    async def list_api_keys(self, query: dict, body: dict) -> dict:
        keys = await self.tailnet.store.list_api_keys()
        return {"apiKeys": [
            {"id": str(k.id), "prefix": k.prefix, "expiration": ts(k.expiration),
             "createdAt": ts(k.created_at), "lastSeen": ts(k.last_seen)}
            for k in keys
        ]}

    async def create_api_key(self, query: dict, body: dict) -> dict:
        now = self.tailnet.clock()
        lifetime = _parse_expiration(body.get("expiration"), now) if body.get("expiration") else timedelta(days=90)
        text, prefix, hashed = keysecrets.new_secret("api")
        await self.tailnet.store.create_api_key(prefix, hashed, now, now + lifetime)
        return {"apiKey": text}

    async def expire_api_key(self, query: dict, body: dict) -> dict:
        prefix = keysecrets.split_prefix("api", str(body.get("prefix") or "")) or str(body.get("prefix") or "")
        if not await self.tailnet.store.expire_api_key(prefix, self.tailnet.clock()):
            raise NotFound(f"API key {prefix!r} not found")
        return {}

    async def authorized(self, authorization: str | None) -> bool:
        """Is ``Authorization: Bearer <key>`` a valid, unexpired API key? (The unix socket
        needs none: its file mode guards it.)"""
        if not authorization or not authorization.startswith("Bearer "):
            return False
        text = authorization[len("Bearer "):].strip()
        prefix = keysecrets.split_prefix("api", text)
        if prefix is None:
            return False
        now = self.tailnet.clock()
        for k in await self.tailnet.store.list_api_keys():
            if k.prefix == prefix and keysecrets.matches(text, k.hash):
                return k.expiration is None or k.expiration > now
        return False

    def public_route(self):
        """The same API on the public listener, for Headscale's UIs and scripts: Bearer API keys."""

        async def route(req: h11.Request, body: bytes) -> Answer | None:
            if not req.target.startswith(b"/api/v1/"):
                return None
            auth = next((v.decode("latin-1") for k, v in req.headers if k == b"authorization"), None)
            if not await self.authorized(auth):
                return _json(401, {"code": 16, "message": "unauthorized: a valid API key is needed (Authorization: Bearer ...)"})
            return await self(req, body)

        return route

    # --- policy -------------------------------------------------------------------------

    async def get_policy(self, query: dict, body: dict) -> dict:
        return {"policy": self.policy.text or "", "updatedAt": ts(self.policy.updated_at)}

    async def set_policy(self, query: dict, body: dict) -> dict:
        text = body.get("policy")
        if not isinstance(text, str):
            raise Invalid("policy: expected the policy text as a string")
        await self.policy.set(text)
        return await self.get_policy(query, body)

    async def check_policy(self, query: dict, body: dict) -> dict:
        text = body.get("policy")
        if not isinstance(text, str):
            raise Invalid("policy: expected the policy text as a string")
        try:
            await self.policy.check(text)
        except PolicyError as e:
            raise Invalid(str(e)) from None
        return {}

    async def topology(self, query: dict, body: dict) -> dict:
        """The live tailnet in the policy corpus's topology format (for `policy evaluate`)."""
        users = [{"id": u.id, "name": u.name, "email": u.email} for u in self.tailnet.users.values()]
        names = {u.id: u.name for u in self.tailnet.users.values()}
        nodes = {}
        for n in self.tailnet.nodes.values():
            pn = policy_node(n)
            nodes[n.given_name] = {
                "hostname": n.given_name, "tags": list(n.tags), "ipv4": n.ipv4, "ipv6": n.ipv6,
                "user": names.get(n.user_id) if not n.tags else None,
                "routable_ips": list(pn.routable_ips), "approved_routes": list(n.approved_routes),
            }
        return {"users": users, "nodes": nodes}

    async def reach(self, query: dict, body: dict) -> dict:
        src, dst = self._node_named(query.get("src", "")), self._node_named(query.get("dst", ""))
        port = int(query.get("port") or 0)
        engine = self.policy.engine
        if engine is None:
            return {"allowed": True, "reason": "no policy is set: every node may reach every node"}
        allowed, reason = reach(engine, policy_node(src), policy_node(dst), port)
        return {"allowed": allowed, "reason": reason}

    def _node_named(self, ref: str):
        for n in self.tailnet.nodes.values():
            if ref in (str(n.id), n.given_name, n.hostname, n.ipv4, n.ipv6):
                return n
        raise NotFound(f"node {ref!r} not found")

    async def get_certs(self, query: dict, body: dict) -> dict:
        """The served certificate (names, issuer, validity, next renewal, last error), as
        autocert reports it; ``certificate`` is null when trioscale does not terminate TLS.
        ``dns_zone``: the zone of the nodes' certificate names, null when that is off."""
        zone = self.zone.status() if self.zone is not None else None
        if self.certs is None:
            return {"tls": False, "certificate": None, "dns_zone": zone}
        return {"tls": True, "certificate": self.certs.status(), "dns_zone": zone}

    async def version(self, query: dict, body: dict) -> dict:
        return {"version": __version__}
