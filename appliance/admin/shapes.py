"""Our records in the JSON shapes of Headscale's v1 API (camelCase, string IDs, RFC 3339),
so that its users' scripts and third-party UIs read them unchanged."""

from __future__ import annotations

from datetime import datetime

from ..storage.records import NodeRecord, PreAuthKeyRecord, UserRecord
from ..tailnet.model import Tailnet
from ..tailnet.routes import advertised


def ts(t: datetime | None) -> str | None:
    return None if t is None else t.strftime("%Y-%m-%dT%H:%M:%SZ")


def user_json(u: UserRecord | None) -> dict | None:
    if u is None:
        return None
    return {
        "id": str(u.id),
        "name": u.name,
        "createdAt": ts(u.created_at),
        "displayName": u.display_name,
        "email": u.email,
        "providerId": u.provider_id,
        "provider": u.provider,
        "profilePicUrl": u.profile_pic_url,
    }


def preauth_json(tailnet: Tailnet, k: PreAuthKeyRecord, key_text: str | None = None) -> dict:
    return {
        "user": user_json(tailnet.users.get(k.user_id)) if k.user_id is not None else None,
        "id": str(k.id),
        # Only the key's hash is kept: after creation only its prefix can be shown.
        "key": key_text or f"hskey-auth-{k.prefix}-***",
        "reusable": k.reusable,
        "ephemeral": k.ephemeral,
        "used": k.used,
        "expiration": ts(k.expiration),
        "createdAt": ts(k.created_at),
        "aclTags": list(k.tags),
    }


_METHODS = {"authkey": "REGISTER_METHOD_AUTH_KEY", "cli": "REGISTER_METHOD_CLI", "oidc": "REGISTER_METHOD_OIDC"}


def node_json(tailnet: Tailnet, n: NodeRecord) -> dict:
    key = tailnet.keys.get(n.auth_key_id) if n.auth_key_id is not None else None
    routable = sorted(advertised(n))
    return {
        "id": str(n.id),
        "machineKey": n.machine_key,
        "nodeKey": n.node_key,
        "discoKey": n.disco_key,
        "ipAddresses": [a for a in (n.ipv4, n.ipv6) if a],
        "name": n.hostname,
        "user": user_json(tailnet.users.get(n.user_id)) if n.user_id is not None else None,
        "lastSeen": ts(n.last_seen),
        "expiry": ts(n.expiry),
        "preAuthKey": preauth_json(tailnet, key) if key else None,
        "createdAt": ts(n.created_at),
        "registerMethod": _METHODS.get(n.register_method, "REGISTER_METHOD_UNSPECIFIED"),
        "givenName": n.given_name,
        "online": tailnet.is_online(n.id),
        "approvedRoutes": list(n.approved_routes),
        "availableRoutes": routable,
        "subnetRoutes": [r for r in routable if r in n.approved_routes],
        "primaryRoutes": tailnet.routes.primaries_of(n.id),
        "tags": list(n.tags),
        "ephemeral": n.ephemeral,
        "expired": tailnet.is_expired(n),
    }
