"""The CLI's side of the admin socket: JSON over HTTP/1.1 on a unix socket (stdlib only)."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any


class ServerUnreachable(Exception):
    pass


class APIError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class AdminClient:
    def __init__(self, socket_path: Path, timeout: float = 30.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> Any:
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"content-type": "application/json"} if payload is not None else {}
            try:
                conn.request(method, path, body=payload, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (FileNotFoundError, ConnectionRefusedError) as e:
                raise ServerUnreachable(
                    f"cannot reach the trioscale server at {self.socket_path} "
                    f"(is `trioscale serve` running with this config?)"
                ) from e
        finally:
            conn.close()
        try:
            doc = json.loads(data) if data else {}
        except json.JSONDecodeError:
            doc = {"message": data.decode(errors="replace")}
        if resp.status != 200:
            raise APIError(resp.status, doc.get("message") or f"HTTP {resp.status}")
        return doc
