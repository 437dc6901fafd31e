"""Our records as the API's types (types.py), in the shapes of Headscale's v1 API."""

from __future__ import annotations

from ..control.authrequests import AuthRequest
from ..storage.records import NodeRecord, PreAuthKeyRecord, UserRecord
from ..tailnet.model import Tailnet
from ..tailnet.routes import advertised
from .types import AuthRequestInfo, Node, PreAuthKey, User


def user_of(tailnet: Tailnet, u: UserRecord | None) -> User | None:
    if u is None:
        return None
    return User(
        id=u.id, name=u.name, created_at=u.created_at, display_name=u.display_name, email=u.email,
        provider_id=u.provider_id, provider=u.provider, profile_pic_url=u.profile_pic_url,
        role=tailnet.roles().get(u.id, "member"), groups=u.groups,
    )


def preauth_of(tailnet: Tailnet, k: PreAuthKeyRecord, key_text: str | None = None) -> PreAuthKey:
    return PreAuthKey(
        user=user_of(tailnet, tailnet.users.get(k.user_id)) if k.user_id is not None else None,
        id=k.id,
        # Only the key's hash is kept: after creation only its prefix can be shown.
        key=key_text or f"hskey-auth-{k.prefix}-***",
        reusable=k.reusable, ephemeral=k.ephemeral, used=k.used, expiration=k.expiration,
        created_at=k.created_at, acl_tags=tuple(k.tags), pre_approved=k.pre_approved,
    )


_METHODS = {"authkey": "REGISTER_METHOD_AUTH_KEY", "cli": "REGISTER_METHOD_CLI", "oidc": "REGISTER_METHOD_OIDC"}


def node_of(tailnet: Tailnet, n: NodeRecord) -> Node:
    key = tailnet.keys.get(n.auth_key_id) if n.auth_key_id is not None else None
    routable = tuple(sorted(advertised(n)))
    return Node(
        id=n.id, machine_key=n.machine_key, node_key=n.node_key, disco_key=n.disco_key,
        ip_addresses=tuple(a for a in (n.ipv4, n.ipv6) if a), name=n.hostname,
        user=user_of(tailnet, tailnet.users.get(n.user_id)) if n.user_id is not None else None,
        last_seen=n.last_seen, expiry=n.expiry,
        pre_auth_key=preauth_of(tailnet, key) if key else None,
        created_at=n.created_at,
        register_method=_METHODS.get(n.register_method, "REGISTER_METHOD_UNSPECIFIED"),
        given_name=n.given_name, online=tailnet.is_online(n.id),
        approved_routes=tuple(n.approved_routes), available_routes=routable,
        subnet_routes=tuple(r for r in routable if r in n.approved_routes),
        tags=tuple(n.tags), primary_routes=tuple(tailnet.routes.primaries_of(n.id)),
        ephemeral=n.ephemeral, expired=tailnet.is_expired(n), approved=n.authorized,
        os=" ".join(x for x in (n.hostinfo.os, n.hostinfo.os_version) if x), client_version=n.hostinfo.ipn_version,
        derp_region=n.hostinfo.net_info.preferred_derp if n.hostinfo.net_info is not None else 0,
    )


def auth_request_of(r: AuthRequest) -> AuthRequestInfo:
    return AuthRequestInfo(
        auth_id=r.auth_id, kind=r.kind, source=r.source, created_at=r.created, expiration=r.expires,
        hostname=r.hostinfo.hostname, os=r.hostinfo.os, machine_key=r.machine_key, node_key=r.node_key,
        src_node_id=r.src_node_id, dst_node_id=r.dst_node_id, local_user=r.local_user,
    )
