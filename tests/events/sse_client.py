"""A server-sent-events reader for the tests: one GET over a socket (the admin unix socket, or
TCP), h11 as the client, the stream parsed into events in a thread."""

from __future__ import annotations

import json
import socket
import threading
import time

import h11


class SSEReader:
    def __init__(self, sock: socket.socket, path: str = "/api/v1/events", headers: dict[str, str] | None = None) -> None:
        self.sock = sock
        self.events: list[dict] = []  # {"id", "event", "data"} (data parsed as JSON)
        self.comments = 0
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.ended = threading.Event()
        self._conn = h11.Connection(h11.CLIENT)
        head = [("host", "trioscale"), ("accept", "text/event-stream"), *(headers or {}).items()]
        self.sock.sendall(self._conn.send(h11.Request(method="GET", target=path, headers=head))
                          + self._conn.send(h11.EndOfMessage()))
        threading.Thread(target=self._read, daemon=True).start()

    @classmethod
    def unix(cls, path, target: str = "/api/v1/events", headers: dict[str, str] | None = None) -> "SSEReader":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))
        return cls(s, target, headers)

    def _read(self) -> None:
        buf = ""
        try:
            while True:
                ev = self._conn.next_event()
                if ev is h11.NEED_DATA:
                    data = self.sock.recv(65536)
                    self._conn.receive_data(data)
                    if not data:
                        continue
                elif isinstance(ev, h11.Response):
                    self.status = ev.status_code
                    self.headers = {k.decode(): v.decode() for k, v in ev.headers}
                elif isinstance(ev, h11.Data):
                    buf += ev.data.decode()
                    while "\n\n" in buf:
                        block, buf = buf.split("\n\n", 1)
                        self._block(block)
                else:  # EndOfMessage, ConnectionClosed
                    return
        except (OSError, h11.ProtocolError):
            return
        finally:
            self.ended.set()

    def _block(self, block: str) -> None:
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        if "data" in fields:
            self.events.append({"id": fields.get("id"), "event": fields.get("event"), "data": json.loads(fields["data"])})

    def wait_for(self, pred, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in list(self.events):
                if pred(e):
                    return e
            time.sleep(0.05)
        raise AssertionError(f"no such event in {timeout}s; got {[e['event'] for e in self.events]}")

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
