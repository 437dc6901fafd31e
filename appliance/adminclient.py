"""The CLI's side of the admin API (stdlib only): JSON over HTTP/1.1, on the admin unix socket
by default, or to a remote server over https with an API key (TRIOSCALE_CLI_ADDRESS and
TRIOSCALE_CLI_API_KEY, or Headscale's HEADSCALE_CLI_ADDRESS / HEADSCALE_CLI_API_KEY, or the
config file's cli.address / cli.api_key)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote, urlencode, urlsplit


class ServerUnreachable(Exception):
    pass


class APIError(Exception):
    """The server refused the call; the text is one line for the terminal."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def api_path(*segments: Any, query: Mapping[str, Any] | None = None) -> str:
    """``/api/v1/<seg>/<seg>?query``, every segment percent-encoded whole: a name with '?',
    '/', '%', spaces or emoji reaches the server as written."""
    path = "/api/v1/" + "/".join(quote(str(s), safe="") for s in segments)
    params = {k: str(v).lower() if isinstance(v, bool) else v for k, v in (query or {}).items() if v is not None}
    return path + ("?" + urlencode(params) if params else "")


def one_line(text: str) -> str:
    return " ".join(str(text).split())


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def _env(*names: str) -> str | None:
    for n in names:
        if os.environ.get(n):
            return os.environ[n]
    return None


class AdminClient:
    """``address`` None: the admin socket at ``socket_path`` (no key needed)."""

    def __init__(self, socket_path: Path | None = None, *, address: str | None = None,
                 api_key: str | None = None, insecure: bool = False, timeout: float = 30.0) -> None:
        self.socket_path = Path(socket_path) if socket_path else None
        self.address, self.api_key, self.insecure, self.timeout = address, api_key, insecure, timeout
        if address is not None:
            url = urlsplit(address if "://" in address else f"https://{address}")
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ServerUnreachable(f"the CLI address {address!r} is not host:port or an http(s) URL")
            self._url = url
            if not api_key:
                raise ServerUnreachable("a remote server needs an API key: set TRIOSCALE_CLI_API_KEY "
                                        "(`trioscale apikeys create` on the server)")

    @classmethod
    def from_config(cls, cfg: Any) -> "AdminClient":
        extras = getattr(cfg, "extras", {}) or {}
        address = _env("TRIOSCALE_CLI_ADDRESS", "HEADSCALE_CLI_ADDRESS") or extras.get("cli.address")
        timeout = extras.get("cli.timeout")
        kwargs = {"timeout": max(timeout.total_seconds(), 1.0) if timeout else 30.0}
        if not address:
            return cls(cfg.unix_socket, **kwargs)
        insecure_env = _env("TRIOSCALE_CLI_INSECURE", "HEADSCALE_CLI_INSECURE")
        insecure = (insecure_env.lower() in ("1", "true", "yes") if insecure_env is not None
                    else bool(extras.get("cli.insecure")))
        key = _env("TRIOSCALE_CLI_API_KEY", "HEADSCALE_CLI_API_KEY") or extras.get("cli.api_key")
        return cls(address=address, api_key=key, insecure=insecure, **kwargs)

    @property
    def where(self) -> str:
        return str(self.socket_path) if self.address is None else self._url.geturl()

    def _connection(self) -> http.client.HTTPConnection:
        if self.address is None:
            return _UnixConnection(self.socket_path, self.timeout)
        url = self._url
        if url.scheme == "http":
            return http.client.HTTPConnection(url.hostname, url.port or 80, timeout=self.timeout)
        ctx = ssl.create_default_context()
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(url.hostname, url.port or 443, timeout=self.timeout, context=ctx)

    def _exchange(self, method: str, path: str, body: Any = None) -> tuple[int, str, bytes]:
        """(status, content type, body) of one request; ServerUnreachable with a one-line
        message when there is no answer."""
        conn = self._connection()
        base = self._url.path.rstrip("/") if self.address is not None else ""
        payload = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if payload is not None else {}
        if self.address is not None:
            headers["authorization"] = f"Bearer {self.api_key}"
        try:
            conn.request(method, base + path, body=payload, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (FileNotFoundError, ConnectionRefusedError) as e:
            hint = ("is `trioscale serve` running with this config?" if self.address is None
                    else "is the server running, and the address right?")
            raise ServerUnreachable(f"cannot reach the trioscale server at {self.where} ({hint})") from e
        except ssl.SSLError as e:
            raise ServerUnreachable(f"TLS with {self.where} failed: {one_line(e.reason or e)}"
                                    " (TRIOSCALE_CLI_INSECURE=1 skips the certificate check)") from e
        except (OSError, http.client.HTTPException) as e:
            raise ServerUnreachable(f"talking to the trioscale server at {self.where} failed: "
                                    f"{one_line(e) or type(e).__name__}") from e
        finally:
            conn.close()
        return resp.status, resp.getheader("content-type") or "", data

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """``path`` from api_path(); returns the answer's JSON or raises APIError /
        ServerUnreachable, each with a one-line message."""
        status, _, data = self._exchange(method, path, body)
        doc = _decoded(data)
        if not 200 <= status < 300:
            raise APIError(status, _problem_text(status, doc))
        return doc

    def fetch(self, method: str, path: str) -> tuple[int, Any]:
        """(status, JSON) whatever the status (``/health`` answers 503 on a standby)."""
        status, _, data = self._exchange(method, path)
        return status, _decoded(data)

    def download(self, method: str, path: str) -> bytes:
        """A call whose answer is not JSON (a backup): its bytes. Errors as ``call``."""
        status, ctype, data = self._exchange(method, path)
        if not 200 <= status < 300 or ctype.startswith(("application/json", "application/problem+json")):
            raise APIError(status, _problem_text(status, _decoded(data)))
        return data


def _decoded(data: bytes) -> Any:
    try:
        return json.loads(data) if data else {}
    except (ValueError, UnicodeDecodeError):
        return {"detail": data.decode("utf-8", "replace")[:300]}


def _problem_text(status: int, doc: Any) -> str:
    """One line from a problem+json answer (or Headscale's older {"message"})."""
    if not isinstance(doc, dict):
        return f"HTTP {status}"
    text = doc.get("detail") or doc.get("message") or doc.get("title") or f"HTTP {status}"
    return one_line(text)
