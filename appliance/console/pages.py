"""The console's pages, rendered on the server from the admin API's operations (called
in-process through the router, with the signed-in person's rights). Every outside value goes
through esc(). Actions are small forms that console.js sends to /admin/api/v1 (see
``action``); a form the person's role may not use is shown disabled, and the server refuses it
anyway.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, urlencode

from ..admin import permissions
from ..admin.problem import Malformed
from ..admin.router import Router
from ..admin.schema import FieldError
from ..audit.changes import changed_fields
from ..errors import TrioscaleError
from ..http.pages import esc
from ..policy.model import ROLES
from .sessions import SignedIn

PAGES = {
    "": "Dashboard", "machines": "Machines", "users": "Users", "keys": "Keys", "policy": "Policy",
    "access": "Access", "dns": "DNS", "audit": "Audit log",
}
# Pages that reload when the server says something changed (not while the person types).
LIVE = {"", "machines", "users", "keys", "audit"}
SOON = timedelta(days=7)  # a key expiring within this is shown on the dashboard


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def ago(text: str | None, now: datetime) -> str:
    t = _time(text)
    if t is None:
        return "never"
    s = (now - t).total_seconds()
    future = s < 0
    s = abs(s)
    if s < 60:
        n = "just now" if not future else "in a moment"
        return n
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            v = f"{int(s // size)} {unit}"
            return f"in {v}" if future else f"{v} ago"
    return ""


def seen(n: dict, now: datetime) -> str:
    return "connected now" if n["online"] else ago(n["lastSeen"], now)


def stamp(text: str | None) -> str:
    t = _time(text)
    return "—" if t is None else t.strftime("%Y-%m-%d %H:%M UTC")


def layout(title: str, active: str, signed: SignedIn, body: str) -> str:
    live = " data-live=1" if active in LIVE else ""
    nav = "".join(
        f'<a href="/admin/{k}"{" class=on" if k == active else ""}>{esc(v)}</a>' for k, v in PAGES.items())
    ro = permissions.READ_ONLY
    banner = (f'<p class="note">Your role ({esc(signed.role)}) can look but not change anything.</p>'
              if signed.role in ro else "")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<meta name=csrf content='{esc(signed.csrf)}'>"
        f"<title>{esc(title)} · trioscale</title><link rel=stylesheet href='/admin/static/console.css'>"
        f"<script src='/admin/static/console.js' defer></script></head><body{live}>"
        f"<header><b class=brand>trioscale</b><nav>{nav}</nav>"
        f"<form method=post action='/admin/logout' class=who><span>{esc(signed.login)} · {esc(signed.role)}</span>"
        f"<input type=hidden name=csrf value='{esc(signed.csrf)}'><button id=logout>Sign out</button></form>"
        f"</header><main><h1>{esc(title)}</h1>{banner}<div id=status role=status></div>{body}</main></body></html>\n"
    )


def _bare(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<title>{esc(title)} · trioscale</title><link rel=stylesheet href='/admin/static/console.css'></head>"
        f"<body><main class=narrow><h1>{esc(title)}</h1>{body}</main></body></html>\n"
    )


def login(oidc: bool) -> str:
    body = ""
    if oidc:
        body += "<p><a class=button href='/admin/oidc' id=oidc>Sign in with your identity provider</a></p>"
    body += ("<p>Or run this on the server, and open the link it prints (it works once, for 10 minutes):</p>"
             "<pre>trioscale admin login [--user NAME]</pre>")
    return _bare("Sign in to trioscale", body)


def confirm_link() -> str:
    return _bare("Sign in to trioscale", "<form method=post><p>This one-time link signs you in to the console.</p>"
                 "<button id=signin>Sign in</button></form>")


def continue_page() -> str:
    # A meta refresh is a navigation started by our own page: the new cookie goes with it.
    return _bare("Signed in", "<meta http-equiv=refresh content='0;url=/admin/'>"
                 "<p><a href='/admin/'>Continue to the console</a></p>")


def action(signed: SignedIn, router: Router, op_id: str, path: str, fields: str, label: str, *,
           method: str = "POST", body: bool = False, confirm: str = "", cls: str = "", show: str = "") -> str:
    """A form console.js sends: ``path`` under /api/v1, with {name} filled from the form's
    fields (``data-in=path``); with ``body``, the other fields as a JSON object. ``show``:
    where the answer's field is shown once (a new key) instead of reloading."""
    op = router.by_id(op_id)
    allowed = signed.role in permissions.roles_for(op.id, op.tag, op.changes)
    attrs = f" data-confirm='{esc(confirm)}'" if confirm else ""
    attrs += f" data-show='{esc(show)}'" if show else ""
    disabled = "" if allowed else " disabled title='your role may not do this'"
    return (f"<form class='api {cls}' data-method={method} data-path='{esc(path)}'"
            f"{' data-body=1' if body else ''}{attrs}>{fields}<button{disabled}>{esc(label)}</button></form>")


def _table(head: list[str], rows: list[str], ident: str = "") -> str:
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    idattr = f" id={ident}" if ident else ""
    return f"<div class=scroll><table{idattr}><thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"


def _node_name(n: dict) -> str:
    return n["givenName"]


def _owner(n: dict) -> str:
    return ", ".join(n["tags"]) if n["tags"] else (n["user"] or {}).get("name", "")


# --- pages -----------------------------------------------------------------------------------


async def render(name: str, router: Router, signed: SignedIn, source: str, query: str = "") -> str:
    """The page ``name``; ``query`` is the page's own query string (the audit log's filters)."""
    actor = signed.actor(source)

    async def call(op_id: str, query: str = "", **kw: Any) -> Any:
        return await router.read_now(op_id, actor, query, **kw)

    now = datetime.now(timezone.utc)
    call.query = query  # type: ignore[attr-defined]
    body = await _BUILDERS[name](call, router, signed, now)
    return layout(PAGES[name], name, signed, body)


def chart(values: list[float], label: str, width: int = 320, height: int = 64) -> str:
    """A small SVG line of ``values`` (oldest first), scaled to its highest."""
    if len(values) < 2:
        return "<p class=muted>not enough samples yet</p>"
    top = max(values) or 1
    step = width / (len(values) - 1)
    points = " ".join(f"{i * step:.1f},{height - 2 - v / top * (height - 4):.1f}" for i, v in enumerate(values))
    return (f"<svg class=chart viewBox='0 0 {width} {height}' preserveAspectRatio=none role=img "
            f"aria-label='{esc(label)}'><polyline fill=none stroke=currentColor stroke-width=1.5 "
            f"vector-effect=non-scaling-stroke points='{points}'/></svg>")


def size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.0f} TB"


async def charts(call) -> str:
    out = []
    for rng, title in (("day", "last day"), ("week", "last week")):
        st = await call("getStats", range=rng)
        samples = st["samples"]
        rows = (
            ("Nodes online", [s["nodesOnline"] for s in samples], str(st["current"]["nodesOnline"])),
            ("Relayed traffic", [s["relayedBytes"] for s in samples], size(sum(s["relayedBytes"] for s in samples))),
            ("Registrations", [s["registrations"] for s in samples], str(sum(s["registrations"] for s in samples))),
        )
        out.append(f"<div class=charts><h2>The {title}</h2>" + "".join(
            f"<figure><figcaption>{esc(name)} <b>{esc(total)}</b></figcaption>{chart(vals, f'{name}, {title}')}</figure>"
            for name, vals, total in rows) + "</div>")
    return "<section class=grid>" + "".join(out) + "</section>"


async def dashboard(call, router, signed, now) -> str:
    nodes = (await call("listNodes"))["nodes"]
    online = [n for n in nodes if n["online"]]
    waiting = [n for n in nodes if not n["approved"]]
    expiring = [n for n in nodes if (t := _time(n["expiry"])) is not None and t - now < SOON]
    keys = [k for k in (await call("listPreAuthKeys"))["preAuthKeys"]
            if (t := _time(k["expiration"])) is not None and now < t < now + SOON and not (k["used"] and not k["reusable"])]
    versions: dict[str, int] = {}
    oses: dict[str, int] = {}
    regions: dict[int, int] = {}
    for n in nodes:
        versions[n["clientVersion"].split("-")[0] or "unknown"] = versions.get(n["clientVersion"].split("-")[0] or "unknown", 0) + 1
        os_name = n["os"].split(" ")[0] or "unknown"
        oses[os_name] = oses.get(os_name, 0) + 1
        if n["online"]:
            regions[n["derpRegion"]] = regions.get(n["derpRegion"], 0) + 1
    derp = (await call("getDerpMap"))["derpMap"].get("Regions", {})
    certs = await call("getCertificates")

    def tally(d: dict) -> str:
        return "".join(f"<li><b>{esc(v)}</b> {esc(k)}</li>" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "<li>none</li>"

    region_names = {int(k): (r.get("RegionName") or r.get("RegionCode") or k) for k, r in derp.items()}
    region_list = {f"{region_names.get(k, 'no relay' if k == 0 else k)}": v for k, v in regions.items()}
    if certs["tls"] and certs["certificate"]:
        c = certs["certificate"]
        cert = (f"<p>{esc(', '.join(c['names']))}: valid until {esc(stamp(c['not_after']))}"
                f"{' — <b class=bad>expired</b>' if c['expired'] else ''}"
                f"{'; renews ' + esc(stamp(c['next_renewal'])) if c['next_renewal'] else ''}</p>")
        if c["last_error"]:
            cert += f"<p class=bad>Last renewal error: {esc(c['last_error'])}</p>"
    else:
        cert = "<p>trioscale does not terminate TLS here (a reverse proxy or plain HTTP).</p>"
    recent = sorted(nodes, key=lambda n: (n["online"], n["lastSeen"] or ""), reverse=True)[:10]
    rows = [f"<tr><td>{esc(_node_name(n))}</td><td>{'<span class=on>online</span>' if n['online'] else 'offline'}</td>"
            f"<td>{esc(seen(n, now))}</td><td>{esc(n['os'])}</td><td>{esc(n['clientVersion'])}</td></tr>"
            for n in recent]
    exp_rows = [f"<li>{esc(_node_name(n))}: key expires {esc(ago(n['expiry'], now))}</li>" for n in expiring]
    exp_rows += [f"<li>pre-auth key {esc(k['id'])} ({esc((k['user'] or {}).get('name') or ', '.join(k['aclTags']))}) "
                 f"expires {esc(ago(k['expiration'], now))}</li>" for k in keys]
    return (
        "<section class=cards>"
        f"<div class=card><div class=big id=online-count>{len(online)}</div>online</div>"
        f"<div class=card><div class=big id=offline-count>{len(nodes) - len(online)}</div>offline</div>"
        f"<div class=card><div class=big>{len(waiting)}</div>waiting for approval</div>"
        f"<div class=card><div class=big>{len(expiring) + len(keys)}</div>keys expiring within 7 days</div>"
        "</section><section class=grid>"
        f"<div><h2>Client versions</h2><ul class=tally>{tally(versions)}</ul></div>"
        f"<div><h2>Operating systems</h2><ul class=tally>{tally(oses)}</ul></div>"
        f"<div><h2>Home relay (DERP region) of online nodes</h2><ul class=tally>{tally(region_list)}</ul></div>"
        f"<div><h2>Certificate</h2>{cert}</div>"
        f"</section><h2>Keys expiring soon</h2><ul>{''.join(exp_rows) or '<li>none</li>'}</ul>"
        f"{await charts(call)}"
        f"<h2>Last seen</h2>{_table(['Machine', 'State', 'Last seen', 'OS', 'Client'], rows)}"
    )


async def machines(call, router, signed, now) -> str:
    nodes = (await call("listNodes"))["nodes"]
    rows = []
    for n in nodes:
        i = n["id"]
        state = ("waiting" if not n["approved"] else "expired" if n["expired"]
                 else "online" if n["online"] else "offline")
        routes = ""
        if n["availableRoutes"]:
            boxes = "".join(
                f"<label><input type=checkbox name=routes data-type=item value='{esc(r)}'"
                f"{' checked' if r in n['approvedRoutes'] else ''}> {esc(r)}"
                f"{' (exit node)' if r in ('0.0.0.0/0', '::/0') else ''}</label>" for r in n["availableRoutes"])
            routes = action(signed, router, "setApprovedRoutes", f"/node/{i}/approve_routes", boxes, "Approve routes",
                            body=True, cls="routes")
        approve = "" if n["approved"] else action(signed, router, "approveNode", f"/node/{i}/approve", "",
                                                   "Approve device", cls="approve")
        rename = action(signed, router, "renameNode", f"/node/{i}/rename/{{newName}}",
                        f"<input name=newName data-in=path value='{esc(n['givenName'])}' aria-label='new name' "
                        "required maxlength=63>", "Rename", cls="rename")
        tags = action(signed, router, "setTags", f"/node/{i}/tags",
                      f"<input name=tags data-type=list value='{esc(', '.join(n['tags']))}' "
                      "placeholder='tag:server, tag:db' aria-label=tags>", "Set tags", body=True)
        expire = action(signed, router, "expireNode", f"/node/{i}/expire", "", "Expire key",
                        confirm=f"Log {n['givenName']} out? It must log in again.")
        delete = action(signed, router, "deleteNode", f"/node/{i}", "", "Delete", method="DELETE",
                        confirm=f"Delete {n['givenName']}?", cls="danger")
        search = " ".join([n["givenName"], n["name"], _owner(n), *n["ipAddresses"], *n["tags"], n["os"]]).lower()
        rows.append(
            f"<tr class=machine data-state={state} data-search='{esc(search)}' data-name='{esc(n['givenName'])}'>"
            f"<td><b>{esc(n['givenName'])}</b><div class=muted>{esc(n['name'])}</div></td>"
            f"<td>{esc(_owner(n))}</td><td>{esc(' '.join(n['ipAddresses']))}</td>"
            f"<td class=state-{state}>{state}<div class=muted>{esc(seen(n, now))}</div></td>"
            f"<td>{esc(n['os'])}<div class=muted>{esc(n['clientVersion'])}</div></td>"
            f"<td class=actions>{approve}{rename}{tags}{routes}{expire}{delete}</td></tr>")
    waiting = await _waiting(call, router, signed, now)
    tools = ("<div class=tools><input id=search type=search placeholder='Search name, user, address, tag' "
             "aria-label=search><select id=filter aria-label=filter><option value=''>all</option>"
             "<option>online</option><option>offline</option><option>waiting</option><option>expired</option>"
             "</select></div>")
    return waiting + tools + _table(["Machine", "Owner", "Addresses", "State", "OS", "Actions"], rows, "machines")


async def _waiting(call, router, signed, now) -> str:
    """Logins and SSH checks waiting for an admin (Headscale's `auth register|approve|reject`)."""
    pending = (await call("listAuthRequests"))["authRequests"]
    if not pending:
        return ""
    users_ = (await call("listUsers"))["users"]
    opts = "".join(f"<option value='{u['id']}'>{esc(u['name'])}</option>" for u in users_)
    rows = []
    for a in pending:
        ident = f"<input type=hidden name=authId value='{esc(a['authId'])}'>"
        if a["kind"] == "register":
            what = f"<b>{esc(a['hostname'] or 'a machine')}</b> ({esc(a['os'] or 'unknown OS')}) wants to join"
            yes = action(signed, router, "authRegister", "/auth/register",
                         ident + f"<select name=user aria-label='join as'>{opts}</select>", "Register", body=True)
        else:
            what = f"SSH check from node {esc(a['srcNodeId'])} to node {esc(a['dstNodeId'])} as {esc(a['localUser'])}"
            yes = action(signed, router, "authApprove", "/auth/approve", ident, "Allow", body=True)
        no = action(signed, router, "authReject", "/auth/reject", ident, "Reject", body=True, cls="danger")
        rows.append(f"<tr class=pending><td>{what}<div class=muted>from {esc(a['source'])}, "
                    f"expires {esc(ago(a['expiration'], now))}</div></td><td class=actions>{yes}{no}</td></tr>")
    return "<h2>Waiting for you</h2>" + _table(["Request", ""], rows, "pending")


async def users(call, router, signed, now) -> str:
    rows = []
    for u in (await call("listUsers"))["users"]:
        opts = "".join(f"<option{' selected' if r == u['role'] else ''}>{r}</option>" for r in ROLES)
        role = action(signed, router, "setUserRole", f"/user/{u['id']}/role",
                      f"<select name=role aria-label=role>{opts}</select>", "Set role", body=True)
        rows.append(f"<tr><td>{esc(u['name'])}</td><td>{esc(u['email'])}</td><td>{esc(u['provider'] or 'local')}</td>"
                    f"<td>{role}</td><td>{esc(stamp(u['createdAt']))}</td></tr>")
    create = action(signed, router, "createUser", "/user",
                    "<input name=name placeholder=name required aria-label=name>"
                    "<input name=email type=email placeholder=email aria-label=email>", "Create user", body=True)
    return _table(["Name", "Email", "Sign-in", "Role", "Created"], rows) + f"<h2>New user</h2>{create}"


async def keys(call, router, signed, now) -> str:
    users_ = (await call("listUsers"))["users"]
    opts = "<option value=''>(tagged, no user)</option>" + "".join(
        f"<option value='{u['id']}'>{esc(u['name'])}</option>" for u in users_)
    rows = []
    for k in (await call("listPreAuthKeys"))["preAuthKeys"]:
        exp = action(signed, router, "expirePreAuthKey", "/preauthkey/expire",
                     f"<input type=hidden name=id data-type=int value='{k['id']}'>", "Expire", body=True)
        flags = [f for f, on in (("reusable", k["reusable"]), ("ephemeral", k["ephemeral"]), ("used", k["used"]),
                                 ("pre-approved", k["preApproved"])) if on]
        rows.append(f"<tr><td>{esc(k['key'])}</td><td>{esc((k['user'] or {}).get('name', ''))}</td>"
                    f"<td>{esc(', '.join(k['aclTags']))}</td><td>{esc(', '.join(flags))}</td>"
                    f"<td>{esc(stamp(k['expiration']))}</td><td>{exp}</td></tr>")
    create = action(
        signed, router, "createPreAuthKey", "/preauthkey",
        f"<select name=user aria-label=user>{opts}</select>"
        "<input name=aclTags data-type=list placeholder='tags (tag:a, tag:b)' aria-label=tags>"
        "<label><input type=checkbox name=reusable data-type=bool> reusable</label>"
        "<label><input type=checkbox name=ephemeral data-type=bool> ephemeral</label>"
        "<label><input type=checkbox name=preApproved data-type=bool> pre-approved</label>"
        "<label>valid for <input name=expiration data-type=hours type=number min=1 max=8760 value=1> h</label>",
        "Create pre-auth key", body=True, show="preAuthKey.key")
    api_rows = []
    for k in (await call("listApiKeys"))["apiKeys"]:
        exp = action(signed, router, "expireApiKey", "/apikey/expire",
                     f"<input type=hidden name=id data-type=int value='{k['id']}'>", "Expire", body=True)
        api_rows.append(f"<tr><td>{esc(k['prefix'])}</td><td>{esc(stamp(k['expiration']))}</td>"
                        f"<td>{esc(ago(k['lastSeen'], now))}</td><td>{exp}</td></tr>")
    api_create = action(signed, router, "createApiKey", "/apikey",
                        "<label>valid for <input name=expiration data-type=days type=number min=1 max=3650 value=90> days"
                        "</label>", "Create API key", body=True, show="apiKey")
    return (f"<h2>Pre-auth keys</h2>{_table(['Key', 'User', 'Tags', 'Flags', 'Expires', ''], rows)}"
            f"<h3>New pre-auth key</h3>{create}"
            f"<h2>API keys</h2>{_table(['Key', 'Expires', 'Last used', ''], api_rows)}"
            f"<h3>New API key</h3>{api_create}<pre id=secret hidden></pre>")


async def policy(call, router, signed, now) -> str:
    live = (await call("getPolicy"))["policy"]
    history = (await call("listPolicyVersions", limit=50))["versions"]
    op = router.by_id("setPolicy")
    can = signed.role in permissions.roles_for(op.id, op.tag, op.changes)
    rows = []
    for v in history:
        restore = "" if v["current"] else action(signed, router, "restorePolicyVersion",
                                                  f"/policy/history/{v['id']}/restore", "", "Restore",
                                                  confirm=f"Put version {v['id']} back in force?", cls="restore")
        rows.append(f"<tr data-version={v['id']}><td>{v['id']}{' (in force)' if v['current'] else ''}</td>"
                    f"<td>{esc(stamp(v['createdAt']))}</td><td>{esc(v['author'] or '—')}</td>"
                    f"<td>{v['size']} characters</td><td><button type=button class=view data-version={v['id']}>View</button>"
                    f"{restore}</td></tr>")
    disabled = "" if can else " disabled"
    return (
        "<div class=editor><textarea id=policy spellcheck=false aria-label=policy "
        f"rows=24>{esc(live)}</textarea><pre id=live hidden>{esc(live)}</pre>"
        "<div id=policy-check class=check aria-live=polite></div>"
        f"<div class=row><button id=review type=button{disabled}>Review changes</button>"
        f"<button id=save type=button hidden{disabled}>Save</button></div>"
        "<pre id=diff class=diff hidden></pre></div>"
        f"<h2>History</h2>{_table(['Version', 'Saved', 'By', 'Size', ''], rows, 'history')}"
        "<pre id=version hidden></pre>"
    )


async def access(call, router, signed, now) -> str:
    nodes = (await call("listNodes"))["nodes"]
    opts = "".join(f"<option>{esc(n['givenName'])}</option>" for n in nodes)
    return (
        "<h2>Can A reach B?</h2><form id=reach class=query>"
        f"<select name=src aria-label=from>{opts}</select> → <select name=dst aria-label=to>{opts}</select>"
        "<label>port <input name=port type=number min=0 max=65535 value=0></label>"
        "<button>Check</button></form><p id=reach-result class=result></p>"
        "<h2>Who can reach this machine?</h2><form id=reachers class=query>"
        f"<select name=dst aria-label=machine>{opts}</select>"
        "<label>port <input name=port type=number min=0 max=65535 value=0></label>"
        "<button>List</button></form><div id=reachers-result class=result></div>"
    )


async def dns(call, router, signed, now) -> str:
    d = await call("getDns")
    changed = ", ".join(d["changedByApi"]) or "none"
    form = action(
        signed, router, "updateDns", "/dns",
        f"<label><input type=checkbox name=magicDns data-type=bool{' checked' if d['magicDns'] else ''}> MagicDNS</label>"
        f"<label><input type=checkbox name=overrideLocalDns data-type=bool{' checked' if d['overrideLocalDns'] else ''}>"
        " override local DNS</label>"
        f"<label>nameservers <input name=nameservers.global data-type=list value='{esc(', '.join(d['nameservers']['global']))}'>"
        "</label>"
        f"<label>search domains <input name=searchDomains data-type=list value='{esc(', '.join(d['searchDomains']))}'>"
        "</label>", "Save DNS settings", method="PATCH", body=True)
    split = "".join(f"<li>{esc(k)}: {esc(', '.join(v))}</li>" for k, v in d["nameservers"]["split"].items())
    records = "".join(f"<li>{esc(r['name'])} {esc(r['type'])} {esc(r['value'])}</li>" for r in d["extraRecords"])
    return (f"<p>Base domain: <b>{esc(d['baseDomain'] or '(none)')}</b> (config.yaml). Set through the console or "
            f"API: {esc(changed)}.</p>{form}<h2>Split DNS</h2><ul>{split or '<li>none</li>'}</ul>"
            f"<h2>Extra records</h2><ul>{records or '<li>none</li>'}</ul>")


def _summary(before, after) -> str:
    """What an entry changed: the fields whose values differ (created / deleted otherwise)."""
    keys = changed_fields(before, after)
    if isinstance(keys, str):
        return keys
    parts = []
    for k in keys[:6]:
        b, a = before.get(k), after.get(k)
        if isinstance(a, (str, int, bool)) and isinstance(b, (str, int, bool, type(None))) and len(str(a)) < 80:
            parts.append(f"{k}: {b} → {a}")
        else:
            parts.append(k)
    return "; ".join(parts) + (" …" if len(keys) > 6 else "")


async def audit(call, router, signed, now) -> str:
    # The filter form sends its empty fields too: they filter nothing.
    fields = {k: v for k, v in parse_qsl(call.query) if v.strip()}
    try:
        doc = await call("listAudit", query=urlencode(fields))
        error = ""
    except (FieldError, Malformed, TrioscaleError) as e:  # a bad filter is the person's to fix
        doc, error = {"entries": [], "nextCursor": None}, str(e)
    rows = []
    for e in doc["entries"]:
        a, t = e["actor"], e["target"]
        who = f"{a['kind']}:{a['name'] or a['id']}" if (a["name"] or a["id"]) else a["kind"]
        rows.append(f"<tr class=entry data-operation='{esc(e['operation'])}'><td>{esc(stamp(e['time']))}</td>"
                    f"<td>{esc(who)}<div class=muted>{esc(a['source'])}</div></td><td>{esc(e['operation'])}</td>"
                    f"<td>{esc(' '.join(dict.fromkeys(x for x in (t['kind'], t['name'] or t['id']) if x)))}</td>"
                    f"<td>{esc(_summary(e['before'], e['after']))}</td></tr>")

    def box(name: str, label: str, hint: str = "") -> str:
        return (f"<label>{esc(label)} <input name={name} value='{esc(fields.get(name, ''))}' "
                f"placeholder='{esc(hint)}'></label>")

    filters = {k: v for k, v in fields.items() if k != "cursor"}
    more = ""
    if doc.get("nextCursor"):
        more = f"<p><a href='/admin/audit?{esc(urlencode({**filters, 'cursor': doc['nextCursor']}))}'>Older entries</a></p>"
    form = ("<form method=get class=query id=audit-filter>" + box("actor", "who", "console:alice, apikey, server")
            + box("operation", "operation", "renameNode") + box("kind", "what", "node, user, policy")
            + box("user", "user") + box("node", "node ID") + "<button>Filter</button>"
            f"<a class=button href='/admin/api/v1/audit/export?{esc(urlencode(filters))}' download=audit.jsonl>"
            "Export as JSON lines</a></form>")
    err = f"<p class=bad>{esc(error)}</p>" if error else ""
    return form + err + _table(["When", "Who", "Operation", "What", "Change"], rows, "audit") + more


_BUILDERS = {"": dashboard, "machines": machines, "users": users, "keys": keys, "policy": policy,
             "access": access, "dns": dns, "audit": audit}
