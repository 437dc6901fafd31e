"""AcmeSession's error translation, against a tiny scripted ACME HTTP server on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from acme import messages

from autocert.acmeclient import (AcmeSession, parse_retry_after, problem_hint, problem_to_error)
from autocert.errors import (AcmeError, AcmeProblem, AcmeUnreachable, ChallengeFailed,
                             RateLimited)
from autocert.tlsconfig import new_private_key_pem

NOW = 1_800_000_000.0


def test_parse_retry_after() -> None:
    assert parse_retry_after(None, NOW) is None
    assert parse_retry_after("120", NOW) == NOW + 120
    assert parse_retry_after(" 0 ", NOW) == NOW
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", NOW) == 1445412480.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after("-5", NOW) is None


def test_problem_documents_become_our_errors() -> None:
    rl = problem_to_error(messages.Error(typ="urn:ietf:params:acme:error:rateLimited",
                                         detail="too many new orders"),
                          hostname="h.example", challenge="http-01", status=429,
                          retry_after=NOW + 60)
    assert isinstance(rl, RateLimited) and rl.code == "rateLimited"
    assert rl.retry_after == NOW + 60 and rl.status == 429
    assert "too many new orders" in str(rl)

    dns = problem_to_error(messages.Error(typ="urn:ietf:params:acme:error:dns",
                                          detail="NXDOMAIN looking up A for h.example"),
                           hostname="h.example", challenge="http-01", status=None,
                           retry_after=None, during_validation=True)
    assert isinstance(dns, ChallengeFailed)
    assert "resolve in public DNS" in dns.hint and "h.example" in dns.hint

    sub = problem_to_error(messages.Error.from_json({
        "type": "urn:ietf:params:acme:error:malformed", "detail": "bad order",
        "subproblems": [{"type": "urn:ietf:params:acme:error:rejectedIdentifier",
                         "detail": "h.local is not allowed"}]}),
        hostname="h.local", challenge="tls-alpn-01", status=400, retry_after=None)
    assert type(sub) is AcmeProblem and "h.local is not allowed" in str(sub)


@pytest.mark.parametrize("code, detail, challenge, expect", [
    ("connection", "Connection refused", "tls-alpn-01", "port 443"),
    ("connection", "Timeout during connect", "http-01", "port 80"),
    ("unauthorized", "Invalid response from http://h/.well-known/...: 404", "http-01",
     "something other than this process"),
    ("caa", "CAA record prevents issuance", "http-01", "CAA"),
    ("serverInternal", "oops", "http-01", "refused the request"),
])
def test_hints(code: str, detail: str, challenge: str, expect: str) -> None:
    assert expect in problem_hint(code, detail, "h.example", challenge)


class ScriptedACME(BaseHTTPRequestHandler):
    """Directory and nonce work; newAccount answers with whatever the test scripted."""

    answer: tuple[int, dict[str, str], bytes] = (500, {}, b"")

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        headers = {"Replay-Nonce": "AAAAAAAAAAAAAAAAAAAAAA", "Content-Length": str(len(body)),
                   **headers}
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        body = json.dumps({"newNonce": base + "/nonce", "newAccount": base + "/acct",
                           "newOrder": base + "/order", "revokeCert": base + "/revoke",
                           "keyChange": base + "/key"}).encode()
        self._send(200, {"Content-Type": "application/json"}, body)

    def do_HEAD(self) -> None:
        self._send(200, {}, b"")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(*type(self).answer)


@pytest.fixture
def acme_server() -> Iterator[tuple[str, type[ScriptedACME]]]:
    handler = type("Handler", (ScriptedACME,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/dir", handler
    server.shutdown()
    server.server_close()


def session(url: str) -> AcmeSession:
    return AcmeSession(url, new_private_key_pem(), "ops@example.net", hostname="h.example",
                       challenge="http-01", clock=lambda: NOW)


def problem(type_: str, detail: str) -> bytes:
    return json.dumps({"type": "urn:ietf:params:acme:error:" + type_, "detail": detail}).encode()


def test_rate_limited_carries_retry_after_header(acme_server) -> None:
    url, handler = acme_server
    handler.answer = (429, {"Content-Type": "application/problem+json", "Retry-After": "3600"},
                      problem("rateLimited", "too many registrations for this IP"))
    with pytest.raises(RateLimited) as info:
        session(url).connect()
    assert info.value.retry_after == NOW + 3600
    assert info.value.status == 429
    assert "too many registrations" in str(info.value)


def test_refusal_is_an_acme_problem(acme_server) -> None:
    url, handler = acme_server
    handler.answer = (403, {"Content-Type": "application/problem+json"},
                      problem("unauthorized", "account is deactivated"))
    with pytest.raises(AcmeProblem) as info:
        session(url).connect()
    assert info.value.retry_after is None and info.value.code == "unauthorized"


def test_non_json_error_is_an_acme_error(acme_server) -> None:
    url, handler = acme_server
    handler.answer = (502, {"Content-Type": "text/html"}, b"<html>bad gateway</html>")
    with pytest.raises(AcmeError) as info:
        session(url).connect()
    assert not isinstance(info.value, AcmeProblem)
    assert "acme_url" in info.value.hint


def test_unreachable_server() -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(AcmeUnreachable, match="cannot reach"):
        session(f"http://127.0.0.1:{port}/dir").connect()


def test_key_authorization_uses_account_thumbprint() -> None:
    s = session("http://127.0.0.1:1/dir")
    ka = s.key_authorization("tokenTOKENtoken0123456789")
    token, thumb = ka.split(".")
    assert token == "tokenTOKENtoken0123456789" and len(thumb) == 43  # base64url SHA-256
