"""The oidc.* keys (Headscale's, plus a few of ours) as one typed value."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, ConfigError

# Headscale's fixed path: a provider set up for Headscale works unchanged.
CALLBACK_PATH = "/oidc/callback"


@dataclass(frozen=True, slots=True)
class OIDCSettings:
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: tuple[str, ...] = ("openid", "profile", "email")
    extra_params: dict[str, str] = field(default_factory=dict)
    allowed_domains: tuple[str, ...] = ()
    allowed_users: tuple[str, ...] = ()
    allowed_groups: tuple[str, ...] = ()
    email_verified_required: bool = True
    use_expiry_from_token: bool = False
    pkce_enabled: bool = False
    pkce_method: str = "S256"
    only_start_if_available: bool = True
    groups_claim: str = "groups"
    provider: str = "oidc"  # or "github": OAuth 2.0 and GitHub's APIs
    allowed_organizations: tuple[str, ...] = ()
    api_url: str = ""  # GitHub's API (default: derived from the issuer)

    def redirect_uri(self, server_url: str) -> str:
        return server_url.rstrip("/") + CALLBACK_PATH

    @property
    def github_api(self) -> str:
        if self.api_url:
            return self.api_url.rstrip("/")
        base = self.issuer.rstrip("/")
        # github.com's API lives on its own host; GitHub Enterprise Server's under /api/v3.
        return "https://api.github.com" if base == "https://github.com" else base + "/api/v3"


def read_secret_file(text: str, env: dict[str, str] | None = None) -> str:
    """oidc.client_secret_path: environment variables expanded (Headscale expands
    ${CREDENTIALS_DIRECTORY} for systemd credentials); the file's text without surrounding
    whitespace. Raises ConfigError naming the key."""
    env = dict(os.environ) if env is None else env
    expanded = text
    for name, value in sorted(env.items(), key=lambda kv: -len(kv[0])):
        expanded = expanded.replace("${" + name + "}", value).replace("$" + name, value)
    if "$" in expanded:
        raise ConfigError(f"oidc.client_secret_path: {text!r} names an unset environment variable",
                          key="oidc.client_secret_path")
    try:
        secret = Path(expanded).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"oidc.client_secret_path: cannot read {expanded}: {e}", key="oidc.client_secret_path") from None
    if not secret:
        raise ConfigError(f"oidc.client_secret_path: {expanded} is empty", key="oidc.client_secret_path")
    return secret


def oidc_settings(cfg: Config, env: dict[str, str] | None = None) -> OIDCSettings | None:
    """None unless oidc.issuer is set. Raises ConfigError for an unusable combination."""
    x = cfg.extras
    issuer = (x.get("oidc.issuer") or "").strip()
    if not issuer:
        return None
    if not issuer.startswith(("https://", "http://")):
        raise ConfigError(f"oidc.issuer: expected an https:// URL, got {issuer!r}", key="oidc.issuer")
    client_id = (x.get("oidc.client_id") or "").strip()
    if not client_id:
        raise ConfigError("oidc.client_id: must be set with oidc.issuer", key="oidc.client_id")
    secret = x.get("oidc.client_secret") or ""
    if x.get("oidc.client_secret_path"):
        secret = read_secret_file(x["oidc.client_secret_path"], env)
    provider = x.get("oidc.provider", "oidc")
    if provider == "github" and not secret:
        raise ConfigError("oidc.client_secret: GitHub needs the OAuth app's client secret", key="oidc.client_secret")
    scope = tuple(x.get("oidc.scope") or ("openid", "profile", "email"))
    if provider == "oidc" and "openid" not in scope:
        raise ConfigError("oidc.scope: must include openid", key="oidc.scope")
    return OIDCSettings(
        issuer=issuer.rstrip("/") if provider == "github" else issuer,
        client_id=client_id,
        client_secret=secret,
        scope=scope,
        extra_params=dict(x.get("oidc.extra_params") or {}),
        allowed_domains=tuple(d.lower() for d in x.get("oidc.allowed_domains") or ()),
        allowed_users=tuple(x.get("oidc.allowed_users") or ()),
        allowed_groups=tuple(x.get("oidc.allowed_groups") or ()),
        email_verified_required=bool(x.get("oidc.email_verified_required", True)),
        use_expiry_from_token=bool(x.get("oidc.use_expiry_from_token", False)),
        pkce_enabled=bool(x.get("oidc.pkce.enabled", False)),
        pkce_method=x.get("oidc.pkce.method", "S256"),
        only_start_if_available=bool(x.get("oidc.only_start_if_oidc_is_available", True)),
        groups_claim=x.get("oidc.groups_claim") or "groups",
        provider=provider,
        allowed_organizations=tuple(o.lower() for o in x.get("oidc.allowed_organizations") or ()),
        api_url=x.get("oidc.api_url") or "",
    )
