"""Stand-ins for identity providers that cannot be reached from a test (Google, Microsoft,
Okta, GitHub, ...): an HTTPS server that answers every host name it is given (through the test
namespace's /etc/hosts) with a discovery document naming that host and path as its issuer, and
GitHub's API root. Only `sso setup`'s discovery check talks to it.

    python -m tests.oidc.discovery_stub CERT KEY PORT
"""

from __future__ import annotations

import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
