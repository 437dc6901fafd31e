"""Stand-ins for identity providers that cannot be reached from a test (Google, Microsoft,
Okta, GitHub, ...): an HTTPS server that answers every host name it is given (through the test
namespace's /etc/hosts) with a discovery document naming that host and path as its issuer, and
GitHub's API root. Only `sso setup`'s discovery check talks to it.

    python -m tests.oidc.discovery_stub CERT KEY PORT

serve_discovery() is the in-process form, on plain HTTP, for tests whose server only needs a
provider that answers discovery (nobody signs in through it).
"""

from __future__ import annotations

import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import trio

from appliance.http.server import HTTPServer

SUFFIX = "/.well-known/openid-configuration"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        host = self.headers.get("Host", "").split(":")[0]
        path = self.path.split("?", 1)[0]
        if path.endswith(SUFFIX):
            issuer = f"https://{host}{path[:-len(SUFFIX)]}"
            if path.startswith("/application/o/"):
                issuer += "/"  # authentik's issuers end in a slash
            doc = {"issuer": issuer, "authorization_endpoint": issuer.rstrip("/") + "/authorize",
                   "token_endpoint": issuer.rstrip("/") + "/token", "jwks_uri": issuer.rstrip("/") + "/keys",
                   "id_token_signing_alg_values_supported": ["RS256"]}
        elif host.startswith("api.") and path == "/" or path == "/api/v3/":
            doc = {"current_user_url": f"https://{host}/user"}
        else:
            self.send_error(404)
            return
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


async def serve_discovery(host: str, port: int, nursery: trio.Nursery) -> str:
    """A provider at http://HOST:PORT that answers its discovery document; returns the issuer."""
    issuer = f"http://{host}:{port}"
    doc = json.dumps({"issuer": issuer, "authorization_endpoint": issuer + "/authorize",
                      "token_endpoint": issuer + "/token", "jwks_uri": issuer + "/jwks"}).encode()
    stub = HTTPServer("stub")

    async def route(req, body):
        if req.target == SUFFIX.encode():
            return 200, [("content-type", "application/json")], doc
        return None

    stub.plain_routes.append(route)
    listeners = await trio.open_tcp_listeners(port, host=host)
    nursery.start_soon(trio.serve_listeners, stub.handle, listeners)
    return issuer


def main() -> None:
    cert, key, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
