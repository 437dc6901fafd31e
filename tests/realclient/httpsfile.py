"""``python3 -m tests.realclient.httpsfile PORT CERT KEY DIRECTORY``: serve DIRECTORY over HTTPS
on 127.0.0.1:PORT (a stand-in for a remote DERP map URL). Runs inside the test namespace."""

import functools
import http.server
import ssl
import sys

if __name__ == "__main__":
    port, cert, key, directory = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    httpd.serve_forever()
