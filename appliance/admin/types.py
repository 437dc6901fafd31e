"""The admin API's request and response types, in the shapes of Headscale's v1 API (camelCase,
string IDs, RFC 3339 times, every response field present), with trioscale's additions marked.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..control.authrequests import parse_auth_id
from ..policy.model import ROLES
from ..tailnet import names
from .schema import (
    ID, Bool, Enum, Free, Int, List, Nullable, Prefix, Spec, Str, Time, api_type, fld,
)


class Ref(Spec):
    """A user named by ID, name or email (a JSON number is read as an ID, as protojson reads
    Headscale's uint64 user field)."""

    def __init__(self, doc: str = "a user's ID, name or email") -> None:
        self.doc = doc
        self._text = Str(max_len=names.EMAIL_MAX)

    def parse(self, value: Any, at: str) -> str:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return str(value)
        return self._text.parse(value, at)

    def schema(self, components: dict[str, Any]) -> dict[str, Any]:
        return {"type": "string", "maxLength": names.EMAIL_MAX, "description": self.doc}


USER_NAME = Str(min_len=names.USER_NAME_MIN, max_len=names.USER_NAME_MAX, check=names.check_user_name,
                pattern=r"^[A-Za-z][A-Za-z0-9._-]*(@[A-Za-z0-9._-]*)?$", example="alice",
                doc="2-64 ASCII letters, digits, '-', '.', '_', at most one '@'; a letter first")
EMAIL = Str(max_len=names.EMAIL_MAX, check=names.check_email, example="alice@example.com",
            pattern=r"^$|^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$",
            doc="an email address, unique without regard to case; empty for none")
DISPLAY_NAME = Str(max_len=names.DISPLAY_NAME_MAX, check=names.check_display_name,
                   doc="printable characters, any script")
PICTURE_URL = Str(max_len=2048, pattern=r"^$|^https?://[\x21-\x7e]+$", doc="an http(s) URL, or empty")
NODE_NAME = Str(min_len=1, max_len=names.MAX_LABEL, check=names.check_given_name,
                pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", example="laptop",
                doc="a DNS label: 1-63 lower-case letters, digits and inner hyphens")
TAG = Str(min_len=5, max_len=names.TAG_MAX, check=names.check_tag, pattern=names.TAG_PATTERN,
          example="tag:server")
TAGS = List(TAG, max_items=64)
KEY_REF = Str(min_len=1, max_len=200, doc="a pre-auth key's ID, its prefix or the whole key")
AUTH_ID = Str(min_len=1, max_len=64, pattern=r"^(hskey-authreq-)?[0-9a-f]{24}$", check=parse_auth_id,
              example="hskey-authreq-0123456789abcdef01234567",
              doc="the ID the login page shows: hskey-authreq- and 24 hex digits")
POLICY_TEXT = Str(max_len=1 << 20, doc="the policy, HuJSON")
MAX_LIST = 4096


# --- users ------------------------------------------------------------------------------------


@api_type
class User:
    id: int = fld(ID())
    name: str = fld(Str(max_len=256))
    created_at: datetime | None = fld(Nullable(Time()))
    display_name: str = fld(Str(max_len=1024))
    email: str = fld(Str(max_len=1024))
    provider_id: str = fld(Str(max_len=1024), json="providerId")
    provider: str = fld(Str(max_len=256))
    profile_pic_url: str = fld(Str(max_len=4096), json="profilePicUrl")
    role: str = fld(Enum(*ROLES), doc="trioscale: owner, admin, network-admin, it-admin, billing-admin, "
                    "auditor or member; the first user owns a tailnet whose store names no owner")
    groups: tuple = fld(List(Str(max_len=names.GROUP_MAX), max_items=names.GROUPS_MAX),
                        doc="trioscale: the identity provider's groups at the last sign-in (group:NAME)")


@api_type
class SetRoleBody:
    role: str = fld(Enum(*ROLES), doc="the owner role hands ownership over: the old owner becomes an admin")


@api_type
class CreateUserBody:
    name: str = fld(USER_NAME)
    display_name: str = fld(DISPLAY_NAME, default="")
    email: str = fld(EMAIL, default="")
    picture_url: str = fld(PICTURE_URL, default="")


@api_type
class UserResponse:
    user: User = fld(User.spec)


@api_type
class UserList:
    users: tuple = fld(List(User.spec, max_items=1 << 20))


# --- pre-auth keys ----------------------------------------------------------------------------


@api_type
class PreAuthKey:
    user: User | None = fld(Nullable(User.spec))
    id: int = fld(ID())
    key: str = fld(Str(max_len=256), doc="the whole key only in the answer that created it; "
                   "afterwards its prefix, hskey-auth-PREFIX-***")
    reusable: bool = fld(Bool())
    ephemeral: bool = fld(Bool())
    used: bool = fld(Bool())
    expiration: datetime | None = fld(Nullable(Time()))
    created_at: datetime | None = fld(Nullable(Time()))
    acl_tags: tuple = fld(List(Str(max_len=256), max_items=MAX_LIST))
    pre_approved: bool = fld(Bool(), doc="trioscale: its nodes skip device approval")


@api_type
class CreatePreAuthKeyBody:
    user: str | None = fld(Nullable(Ref()), default=None, doc="the owner; none for a tagged key")
    reusable: bool = fld(Bool(), default=False)
    ephemeral: bool = fld(Bool(), default=False)
    expiration: datetime | None = fld(Nullable(Time()), default=None,
                                      doc="when the key stops working (default: in one hour)")
    acl_tags: tuple = fld(TAGS, default=(), doc="tags of the nodes it registers")
    pre_approved: bool = fld(Bool(), default=False,
                             doc="trioscale: its nodes skip device approval (node.approval_required)")


@api_type
class ExpirePreAuthKeyBody:
    id: int | None = fld(Nullable(ID()), default=None)
    key: str | None = fld(Nullable(KEY_REF), default=None, doc="trioscale: the key or its prefix, instead of id")
    user: str | None = fld(Nullable(Ref()), default=None, doc="ignored (Headscale before 0.27 sent it)")


@api_type
class PreAuthKeyResponse:
    pre_auth_key: PreAuthKey = fld(PreAuthKey.spec)


@api_type
class PreAuthKeyList:
    pre_auth_keys: tuple = fld(List(PreAuthKey.spec, max_items=1 << 20))


# --- nodes ------------------------------------------------------------------------------------

REGISTER_METHODS = ("REGISTER_METHOD_UNSPECIFIED", "REGISTER_METHOD_AUTH_KEY", "REGISTER_METHOD_CLI",
                    "REGISTER_METHOD_OIDC")
_ROUTES = List(Str(max_len=64), max_items=MAX_LIST)


@api_type
class Node:
    id: int = fld(ID())
    machine_key: str = fld(Str(max_len=256))
    node_key: str = fld(Str(max_len=256))
    disco_key: str = fld(Str(max_len=256))
    ip_addresses: tuple = fld(List(Str(max_len=64), max_items=2))
    name: str = fld(Str(max_len=1024), doc="the hostname the client reported")
    user: User | None = fld(Nullable(User.spec))
    last_seen: datetime | None = fld(Nullable(Time()))
    expiry: datetime | None = fld(Nullable(Time()))
    pre_auth_key: PreAuthKey | None = fld(Nullable(PreAuthKey.spec))
    created_at: datetime | None = fld(Nullable(Time()))
    register_method: str = fld(Enum(*REGISTER_METHODS))
    given_name: str = fld(Str(max_len=256), doc="the MagicDNS name")
    online: bool = fld(Bool())
    approved_routes: tuple = fld(_ROUTES)
    available_routes: tuple = fld(_ROUTES)
    subnet_routes: tuple = fld(_ROUTES, doc="approved routes this node serves now")
    tags: tuple = fld(List(Str(max_len=256), max_items=MAX_LIST))
    primary_routes: tuple = fld(_ROUTES, doc="trioscale: routes this node is the primary router of")
    ephemeral: bool = fld(Bool(), doc="trioscale")
    expired: bool = fld(Bool(), doc="trioscale")
    approved: bool = fld(Bool(), doc="trioscale: false while it waits for device approval")
    os: str = fld(Str(max_len=1024), doc="trioscale: the client's OS and version, as it reports them")
    client_version: str = fld(Str(max_len=256), doc="trioscale: the Tailscale client's version")
    derp_region: int = fld(Int(minimum=0, maximum=1 << 30), doc="trioscale: the client's home DERP region (0: none)")


@api_type
class NodeResponse:
    node: Node = fld(Node.spec)


@api_type
class NodeList:
    nodes: tuple = fld(List(Node.spec, max_items=1 << 20))


@api_type
class ExpireNodeBody:
    expiry: datetime | None = fld(Nullable(Time()), default=None, doc="when (default: now)")
    disable_expiry: bool = fld(Bool(), default=False, doc="the node's key never expires")


@api_type
class SetTagsBody:
    tags: tuple = fld(TAGS)


@api_type
class MoveNodeBody:
    user: str = fld(Ref())


@api_type
class ApproveRoutesBody:
    routes: tuple = fld(List(Prefix(), max_items=1024),
                        doc="the whole approved set; an exit route (0.0.0.0/0 or ::/0) brings the other")


@api_type
class RegisterNodeBody:
    user: str | None = fld(Nullable(Ref()), default=None)
    key: str | None = fld(Nullable(AUTH_ID), default=None)


# --- auth requests (logins and SSH checks waiting for a decision) ------------------------------

@api_type
class AuthRegisterBody:
    user: str = fld(Ref("the user the machine joins as: ID, name or email"))
    auth_id: str = fld(AUTH_ID)


@api_type
class AuthIdBody:
    auth_id: str = fld(AUTH_ID)


@api_type
class AuthRequestInfo:
    """trioscale: a pending login (kind "register") or SSH check (kind "ssh-check")."""

    auth_id: str = fld(Str(max_len=64))
    kind: str = fld(Enum("register", "ssh-check"))
    source: str = fld(Str(max_len=64), doc="the address it came from (an IPv6 /64)")
    created_at: datetime | None = fld(Nullable(Time()))
    expiration: datetime | None = fld(Nullable(Time()))
    hostname: str = fld(Str(max_len=256), doc="register: the machine's name")
    os: str = fld(Str(max_len=256), doc="register: its operating system")
    machine_key: str = fld(Str(max_len=256), doc="register")
    node_key: str = fld(Str(max_len=256), doc="register")
    src_node_id: int | None = fld(Nullable(ID()), doc="ssh-check: the connecting node")
    dst_node_id: int | None = fld(Nullable(ID()), doc="ssh-check: the node connected to")
    local_user: str = fld(Str(max_len=256), doc="ssh-check: the account asked for")


@api_type
class AuthRequestList:
    auth_requests: tuple = fld(List(AuthRequestInfo.spec, max_items=1 << 20))


# --- API keys ---------------------------------------------------------------------------------


@api_type
class ApiKey:
    id: int = fld(ID())
    prefix: str = fld(Str(max_len=256), doc="hskey-api-PREFIX-*** (the key itself is never shown again)")
    expiration: datetime | None = fld(Nullable(Time()))
    created_at: datetime | None = fld(Nullable(Time()))
    last_seen: datetime | None = fld(Nullable(Time()), doc="last use (recorded about once a minute)")


@api_type
class CreateApiKeyBody:
    expiration: datetime | None = fld(Nullable(Time()), default=None, doc="default: in 90 days")


@api_type
class CreateApiKeyResponse:
    api_key: str = fld(Str(max_len=256), doc="the key, shown this once")


@api_type
class ExpireApiKeyBody:
    prefix: str | None = fld(Nullable(Str(max_len=200)), default=None)
    id: int | None = fld(Nullable(ID()), default=None)


@api_type
class ApiKeyList:
    api_keys: tuple = fld(List(ApiKey.spec, max_items=1 << 20))


@api_type
class Empty:
    pass


# --- policy -----------------------------------------------------------------------------------


@api_type
class PolicyBody:
    policy: str = fld(POLICY_TEXT)


@api_type
class PolicyResponse:
    policy: str = fld(Str(max_len=1 << 21))
    updated_at: datetime | None = fld(Nullable(Time()))


@api_type
class ReachResponse:
    allowed: bool = fld(Bool())
    reason: str = fld(Str(max_len=1 << 16))


@api_type
class PolicyProblem:
    message: str = fld(Str(max_len=1 << 16))
    line: int | None = fld(Nullable(Int(minimum=1, maximum=1 << 31)), doc="1-based, when known")
    column: int | None = fld(Nullable(Int(minimum=1, maximum=1 << 31)))


@api_type
class PolicyValidation:
    valid: bool = fld(Bool())
    errors: tuple = fld(List(PolicyProblem.spec, max_items=64))


@api_type
class PolicyVersionInfo:
    """trioscale: one saved version of the policy (policy.mode: database)."""

    id: int = fld(ID())
    created_at: datetime | None = fld(Nullable(Time()))
    author: str = fld(Str(max_len=1024), doc="who saved it: console:LOGIN, apikey:ID or cli")
    size: int = fld(Int(minimum=0, maximum=1 << 31), doc="characters")
    current: bool = fld(Bool(), doc="the version in force")


@api_type
class PolicyHistory:
    versions: tuple = fld(List(PolicyVersionInfo.spec, max_items=1000), doc="newest first")


@api_type
class PolicyVersionResponse:
    version: PolicyVersionInfo = fld(PolicyVersionInfo.spec)
    policy: str = fld(Str(max_len=1 << 21))


@api_type
class Reacher:
    node_id: int = fld(ID())
    name: str = fld(Str(max_len=256), doc="the node's MagicDNS name")
    reason: str = fld(Str(max_len=1 << 16), doc="the rule that allows it")


@api_type
class ReachersResponse:
    sources: tuple = fld(List(Reacher.spec, max_items=1 << 20),
                         doc="every node that may open a connection to the node on the port")


@api_type
class ConsoleLoginBody:
    user: str | None = fld(Nullable(Ref("the user to sign in as: ID, name or email; null: the server's "
                                        "operator, an owner")), default=None)


@api_type
class ConsoleLoginResponse:
    url: str = fld(Str(max_len=4096), doc="open it once, within its lifetime")
    expiration: datetime | None = fld(Nullable(Time()))


@api_type
class Topology:
    """The live tailnet in the policy corpus's topology format (for `policy evaluate`)."""

    users: tuple = fld(List(Free(), max_items=1 << 20))
    nodes: dict = fld(Free())


# --- server -----------------------------------------------------------------------------------


@api_type
class Version:
    version: str = fld(Str(max_len=64))


@api_type
class Health:
    database_connectivity: bool = fld(Bool())


_TEXT = Nullable(Str(max_len=1 << 14))


@api_type
class Certificate:
    """The served certificate as autocert reports it (its names in snake_case, as `trioscale
    certs -o json` has always printed them); times are ISO 8601 UTC."""

    source: str = fld(Str(max_len=32), json="source", doc="acme or file")
    names: tuple = fld(List(Str(max_len=256), max_items=256), json="names")
    issuer: str | None = fld(_TEXT, json="issuer")
    serial: str | None = fld(_TEXT, json="serial", doc="hexadecimal")
    not_before: str | None = fld(_TEXT, json="not_before")
    not_after: str | None = fld(_TEXT, json="not_after")
    expired: bool = fld(Bool(), json="expired")
    next_renewal: str | None = fld(_TEXT, json="next_renewal", doc="null when files are used")
    last_error: str | None = fld(_TEXT, json="last_error")
    hostname: str | None = fld(_TEXT, json="hostname", doc="ACME: the name ordered")
    directory_url: str | None = fld(_TEXT, json="directory_url", doc="ACME directory")
    challenge_type: str | None = fld(_TEXT, json="challenge_type")
    failures: int = fld(Int(minimum=0, maximum=1 << 31), json="failures", doc="ACME: failed attempts in a row")
    cert_path: str | None = fld(_TEXT, json="cert_path", doc="files: the certificate file")


@api_type
class Certs:
    tls: bool = fld(Bool(), doc="trioscale terminates TLS")
    certificate: Certificate | None = fld(Nullable(Certificate.spec))
    dns_zone: dict | None = fld(Nullable(Free()), json="dns_zone",
                                doc="the zone of the nodes' certificate names (tailscale cert); null when off")


@api_type
class Settings:
    """The effective configuration (secrets redacted), with the changes made through the API
    applied: what `trioscale configtest` prints for the running server."""

    settings: dict = fld(Free())
    changed_by_api: tuple = fld(List(Str(max_len=128), max_items=256),
                                doc="the settings whose value comes from the API, not config.yaml")


def port(doc: str = "") -> Int:
    return Int(minimum=0, maximum=65535, doc=doc)
