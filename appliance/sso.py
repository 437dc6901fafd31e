"""``trioscale sso setup PROVIDER`` and ``sso test``: one-step identity provider setup.

Setup asks only what the provider needs, prints the redirect URI to paste into the provider's
console, checks the provider's discovery document before writing anything, then replaces the
config file's ``oidc:`` section (every other line of the file stays as it was) and keeps the
client secret in a 0600 file next to it. Test runs discovery, a dry authorization request and a
token request with a made-up code, and says what is wrong.
"""

from __future__ import annotations

import getpass
import json
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlencode, urlsplit

import yaml

from .config import Config, ConfigError, load_config
from .install import write_file
from .oidc.provider import ProviderError, discovery_url, parse_metadata
from .oidc.settings import OIDCSettings, oidc_settings
from .outbound import FetchError, fetch

SECRET_FILE = "oidc_client_secret"


@dataclass(frozen=True)
class Preset:
    name: str
    asks: tuple[str, ...]  # the provider-specific questions (flag names)
    issuer: Callable[[dict], str]
    console: str  # where the admin registers the app
    scope: tuple[str, ...] = ("openid", "profile", "email")
    extra: Callable[[dict], dict] = lambda a: {}
    hint: str = ""


def _base(url: str) -> str:
    url = url.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url):
        raise SystemExit(f"trioscale: {url!r} is not an http(s) URL")
    return url


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("google", ("domain",), lambda a: "https://accounts.google.com",
           "Google Cloud console: APIs & Services > Credentials > Create OAuth client ID (Web application)",
           extra=lambda a: {"allowed_domains": [a["domain"]], "extra_params": {"hd": a["domain"]}} if a.get("domain") else {},
           hint="--domain limits sign-in to your Google Workspace domain"),
    Preset("microsoft", ("tenant",), lambda a: f"https://login.microsoftonline.com/{a['tenant']}/v2.0",
           "Microsoft Entra admin center: App registrations > New registration (Web platform)",
           hint="groups reach the policy by object ID once the app's token configuration adds the groups claim"),
    Preset("okta", ("domain",), lambda a: f"https://{a['domain'].removeprefix('https://').rstrip('/')}",
           "Okta admin console: Applications > Create App Integration > OIDC, Web Application",
           scope=("openid", "profile", "email", "groups"),
           hint="add a groups claim to the app's sign-on settings to use Okta groups in the policy"),
    Preset("github", ("organization", "url"), lambda a: _base(a.get("url") or "https://github.com"),
           "GitHub: Settings > Developer settings > OAuth Apps > New OAuth App",
           extra=lambda a: ({"allowed_organizations": [o.strip() for o in a["organization"].split(",") if o.strip()]}
                            if a.get("organization") else {}) | {"provider": "github"},
           hint="teams become groups named org/team; --organization limits sign-in to members"),
    Preset("gitlab", ("url",), lambda a: _base(a.get("url") or "https://gitlab.com"),
           "GitLab: User settings (or Admin area) > Applications, scopes openid profile email",
           hint="GitLab puts the person's groups in the groups claim of UserInfo"),
    Preset("keycloak", ("url", "realm"), lambda a: f"{_base(a['url'])}/realms/{a['realm']}",
           "Keycloak admin console: Clients > Create client (OpenID Connect, client authentication on)",
           scope=("openid", "profile", "email", "groups"),
           hint="add a Group Membership mapper named groups (full path off) to use Keycloak groups"),
    Preset("authentik", ("url", "slug"), lambda a: f"{_base(a['url'])}/application/o/{a['slug']}/",
           "authentik: Applications > Providers > Create OAuth2/OpenID Provider, then an Application",
           hint="authentik's groups scope mapping puts groups in the groups claim"),
    Preset("generic", ("issuer",), lambda a: a["issuer"].strip(),
           "your identity provider's client registration"),
)}

QUESTIONS = {
    "domain": "Domain", "tenant": "Tenant (ID or domain, e.g. contoso.onmicrosoft.com)",
    "organization": "GitHub organisations allowed to sign in (comma-separated, empty: anyone)",
    "url": "Base URL", "realm": "Realm", "slug": "Application slug", "issuer": "Issuer URL",
}
OPTIONAL = {("google", "domain"), ("github", "organization"), ("github", "url"), ("gitlab", "url")}


def _ask(label: str, secret: bool = False) -> str:
    if not sys.stdin.isatty():
        raise SystemExit(f"trioscale: {label} is needed (give it as a flag; stdin is not a terminal)")
    return (getpass.getpass if secret else input)(f"{label}: ").strip()


def check_discovery(issuer: str, provider: str, api_url: str = "") -> str:
    """Fetch the provider's discovery document (GitHub: its API); a short description of what
    was found. Raises ProviderError with what is wrong."""
    if provider == "github":
        api = OIDCSettings(issuer=issuer, client_id="", client_secret="", api_url=api_url).github_api
        try:
            got = fetch(api + "/", headers={"Accept": "application/json"})
        except FetchError as e:
            raise ProviderError(f"cannot reach GitHub's API: {e}") from None
        if got.status >= 500:
            raise ProviderError(f"GitHub's API at {api} answers HTTP {got.status}")
        return f"GitHub API at {api}"
    try:
        got = fetch(discovery_url(issuer), headers={"Accept": "application/json"})
    except FetchError as e:
        raise ProviderError(f"cannot fetch the discovery document: {e}") from None
    if got.status != 200:
        raise ProviderError(f"{discovery_url(issuer)} answers HTTP {got.status}")
    m = parse_metadata(got.body, issuer)
    return f"discovery OK: authorization at {m.authorization_endpoint}"


def replace_oidc_section(text: str, section: dict) -> str:
    """The config text with its top-level ``oidc:`` block replaced by ``section`` (appended if
    there was none). Only those lines change: comments and layout elsewhere stay."""
    lines = text.splitlines(keepends=True)
    out, skipping = [], False
    for line in lines:
        if re.match(r"^oidc\s*:", line):
            skipping = True
            continue
        if skipping and (line.strip() == "" or line[0] in " \t#"):
            continue  # the old block's body (and its comments)
        skipping = False
        out.append(line)
    body = "".join(out)
    if body and not body.endswith("\n"):
        body += "\n"
    block = yaml.safe_dump({"oidc": section}, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return body + ("\n" if body else "") + "# Written by `trioscale sso setup`.\n" + block


def config_path(args) -> Path:
    """The file setup writes: -c, else the one the server would read, else the system one."""
    from .config.load import SYSTEM_CONFIG_PATH, find_config_file

    given = getattr(args, "config", None)
    return Path(given) if given else (find_config_file() or SYSTEM_CONFIG_PATH)


def setup(args) -> int:
    preset = PRESETS[args.provider]
    path = config_path(args)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    cfg = load_config(path) if path.exists() else None
    server_url = (cfg.server_url if cfg else "http://127.0.0.1:8080").rstrip("/")
    redirect = server_url + "/oidc/callback"
    print(f"Register trioscale in {preset.console}.")
    print(f"Redirect URI (paste it exactly): {redirect}")
    if preset.hint:
        print(f"Note: {preset.hint}.")
    answers = {}
    for q in preset.asks:
        value = getattr(args, q, None)
        if value is None and (preset.name, q) not in OPTIONAL:
            value = _ask(QUESTIONS[q])
        answers[q] = value or ""
        if not answers[q] and (preset.name, q) not in OPTIONAL:
            raise SystemExit(f"trioscale: --{q} is needed for {preset.name}")
    client_id = args.client_id or _ask("Client ID")
    secret = args.client_secret
    if secret is None and args.client_secret_file:
        secret = Path(args.client_secret_file).read_text().strip()
    if secret is None:
        secret = _ask("Client secret", secret=True)
    issuer = preset.issuer(answers)
    provider = "github" if preset.name == "github" else "oidc"
    try:
        found = check_discovery(issuer, provider)
    except ProviderError as e:
        print(f"trioscale: {preset.name}: {e}; nothing was written", file=sys.stderr)
        return 1
    print(f"{issuer}: {found}")
    section: dict = {"issuer": issuer, "client_id": client_id}
    if secret:
        secret_path = path.with_name(SECRET_FILE)
        write_file(secret_path, (secret + "\n").encode(), 0o600)
        section["client_secret_path"] = str(secret_path)
    section["scope"] = list(preset.scope)
    section["pkce"] = {"enabled": True, "method": "S256"}
    section.update(preset.extra(answers))
    new_text = replace_oidc_section(text, section)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o640
    write_file(path, new_text.encode(), mode)
    try:
        oidc_settings(load_config(path))
    except ConfigError as e:
        print(f"trioscale: the written configuration does not load: {e}", file=sys.stderr)
        return 1
    print(f"Wrote the oidc section of {path}" + (f" (secret in {section['client_secret_path']}, mode 0600)"
                                                  if secret else ""))
    print("Next: restart trioscale (systemctl restart trioscale), then check the setup with "
          f"`trioscale sso test -c {path}` and sign in with `tailscale up --login-server {server_url}`.")
    return 0


def dry_run(cfg: Config, s: OIDCSettings) -> list[tuple[bool, str]]:
    """What ``sso test`` reports: (ok, line) for each check, stopping at the first failure that
    makes the next checks meaningless."""
    out: list[tuple[bool, str]] = []
    redirect = s.redirect_uri(cfg.server_url)
    if s.provider == "github":
        try:
            out.append((True, check_discovery(s.issuer, "github", s.api_url)))
        except ProviderError as e:
            return out + [(False, str(e))]
        auth_endpoint, token_endpoint = s.issuer + "/login/oauth/authorize", s.issuer + "/login/oauth/access_token"
    else:
        try:
            got = fetch(discovery_url(s.issuer), headers={"Accept": "application/json"})
            if got.status != 200:
                raise ProviderError(f"{discovery_url(s.issuer)} answers HTTP {got.status}")
            m = parse_metadata(got.body, s.issuer)
        except (FetchError, ProviderError) as e:
            return out + [(False, f"discovery: {e}")]
        out.append((True, f"discovery: {s.issuer} (signing {', '.join(m.algorithms)})"))
        auth_endpoint, token_endpoint = m.authorization_endpoint, m.token_endpoint
    params = {"response_type": "code", "client_id": s.client_id, "redirect_uri": redirect,
              "scope": " ".join(s.scope), "state": secrets.token_urlsafe(16), "nonce": secrets.token_urlsafe(16)}
    try:
        # Not followed: a redirect to the provider's login page is the answer we hope for.
        got = fetch(auth_endpoint + ("&" if "?" in auth_endpoint else "?") + urlencode(params),
                    follow_redirects=False)
    except FetchError as e:
        return out + [(False, f"authorization request: {e}")]
    page = got.body.decode("utf-8", "replace")
    location = got.headers.get("location", "")
    if location.startswith(redirect) and "error=" in location:
        # The provider sent the person straight back with an error (a scope it refuses...).
        q = parse_qs(urlsplit(location).query)
        return out + [(False, "authorization request refused: "
                              f"{q.get('error', [''])[0]} {q.get('error_description', [''])[0]}".rstrip())]
    if got.status >= 400:
        why = re.search(r"(invalid_client|invalid_redirect_uri|redirect_uri_mismatch|unauthorized_client|"
                        r"invalid_scope|invalid_request)[^<\"]{0,200}", page)
        reason = why.group(0) if why else f"HTTP {got.status}"
        hint = (f" (is the redirect URI {redirect} registered for client {s.client_id}?)"
                if "redirect" in reason or "client" in reason else "")
        return out + [(False, f"authorization request refused: {reason.strip()}{hint}")]
    out.append((True, f"authorization request accepted (HTTP {got.status}): the provider shows its login page "
                      f"and will send people back to {redirect}"))
    # A made-up code: a provider that knows the client answers invalid_grant; a wrong client
    # ID or secret gives invalid_client.
    form = {"grant_type": "authorization_code", "code": "trioscale-sso-test", "redirect_uri": redirect,
            "client_id": s.client_id, "client_secret": s.client_secret}
    try:
        got = fetch(token_endpoint, method="POST", data=urlencode(form).encode(),
                    headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"})
        doc = json.loads(got.body) if got.body else {}
        err = doc.get("error", "") if isinstance(doc, dict) else ""
    except (FetchError, ValueError, RecursionError) as e:
        return out + [(False, f"token endpoint: {e}")]
    if err in ("invalid_client", "unauthorized_client"):
        out.append((False, f"token endpoint: {err}: the client ID or secret is wrong"))
    elif err in ("invalid_grant", "bad_verification_code"):
        out.append((True, "token endpoint: the client ID and secret are accepted"))
    else:
        out.append((True, f"token endpoint answered HTTP {got.status} {err}".rstrip()))
    if not cfg.server_url.startswith("https://"):
        out.append((True, f"note: server_url {cfg.server_url} is not https; providers accept that only for localhost"))
    return out


def test(args) -> int:
    cfg = load_config(getattr(args, "config", None))
    s = oidc_settings(cfg)
    if s is None:
        print("trioscale: no oidc.issuer in the configuration: run `trioscale sso setup PROVIDER` first",
              file=sys.stderr)
        return 1
    ok = True
    for good, line in dry_run(cfg, s):
        print(("ok    " if good else "FAIL  ") + line)
        ok = ok and good
    print("Sign-in is ready." if ok else "Sign-in will not work until the failures above are fixed.")
    return 0 if ok else 1
