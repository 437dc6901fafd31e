"""A stand-in for GitHub's OAuth 2.0 and REST API (nothing real exists offline): its authorize
page (pick a user), code exchange, and /user, /user/emails, /user/orgs and /user/teams under
/api/v3, as GitHub Enterprise Server lays them out. Users come from a JSON file:

    {"octocat": {"id": 583231, "name": "...", "email": "...", "verified": true,
                 "orgs": ["acme"], "teams": [["acme", "admins"]]}}

    python -m tests.oidc.github_stub USERS.json CLIENT_ID CLIENT_SECRET PORT
"""

from __future__ import annotations

import html
import json
import secrets
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

USERS: dict = {}
CLIENT: tuple[str, str] = ("", "")
CODES: dict[str, str] = {}  # code -> login (used once)
TOKENS: dict[str, str] = {}  # access token -> login


class Handler(BaseHTTPRequestHandler):
    def _json(self, status: int, doc) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/login/oauth/authorize":
            if q.get("client_id") != CLIENT[0]:
                self._json(404, {"error": "unknown client"})
                return
            hidden = "".join(f"<input type=hidden name={k} value='{html.escape(v)}'>" for k, v in q.items())
            page = (f"<html><body><h1>Sign in to GitHub</h1><form method=post action=/login/session>{hidden}"
                    "<input name=login><button type=submit>Sign in</button></form></body></html>").encode()
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
            return
        if url.path == "/api/v3/":
            self._json(200, {"current_user_url": "/api/v3/user"})
            return
        login = TOKENS.get((self.headers.get("Authorization") or "").removeprefix("Bearer "))
        if login is None:
            self._json(401, {"message": "Bad credentials"})
            return
        u = USERS[login]
        docs = {
            "/api/v3/user": {"id": u["id"], "login": login, "name": u.get("name"), "avatar_url": f"https://avatars/{login}"},
            "/api/v3/user/emails": [{"email": u["email"], "primary": True, "verified": u.get("verified", True)}],
            "/api/v3/user/orgs": [{"login": o} for o in u.get("orgs", [])],
            "/api/v3/user/teams": [{"slug": t, "organization": {"login": o}} for o, t in u.get("teams", [])],
        }
        if url.path in docs:
            self._json(200, docs[url.path])
        else:
            self._json(404, {"message": "Not Found"})

    def do_POST(self) -> None:  # noqa: N802
        form = {k: v[-1] for k, v in parse_qs(self.rfile.read(int(self.headers.get("content-length", 0))).decode()).items()}
        if self.path == "/login/session":
            if form.get("login") not in USERS:
                self._json(403, {"error": "no such user"})
                return
            code = secrets.token_hex(10)
            CODES[code] = form["login"]
            target = form["redirect_uri"] + "?" + urlencode({"code": code, "state": form.get("state", "")})
            self.send_response(302)
            self.send_header("location", target)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        if self.path == "/login/oauth/access_token":
            if (form.get("client_id"), form.get("client_secret")) != CLIENT:
                self._json(200, {"error": "incorrect_client_credentials"})
                return
            login = CODES.pop(form.get("code", ""), None)
            if login is None:
                self._json(200, {"error": "bad_verification_code"})
                return
            token = "gho_" + secrets.token_hex(16)
            TOKENS[token] = login
            self._json(200, {"access_token": token, "token_type": "bearer", "scope": "read:user,user:email,read:org"})
            return
        self._json(404, {"message": "Not Found"})

    def log_message(self, *args) -> None:
        pass


def main() -> None:
    global USERS, CLIENT
    USERS = json.load(open(sys.argv[1]))
    CLIENT = (sys.argv[2], sys.argv[3])
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[4])), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
