"""A webhook receiver for the tests: a real HTTP server on 127.0.0.1 that keeps every request
(headers and raw body) and answers 500 to the first attempts of the event types it is told to
fail. In a thread of the test (``Receiver``), or as a process in a network namespace:
``python -m tests.events.receiver PORT LOGFILE [TYPE=N ...]`` appends one JSON line a request."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Receiver:
    def __init__(self, port: int = 0, fail_first: dict[str, int] | None = None, log: Path | None = None,
                 delay: float = 0.0) -> None:
        self.requests: list[dict] = []
        self.fail_first = dict(fail_first or {})
        self.log = log
        self.delay = delay
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                doc = json.loads(body)
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver._lock:
                    left = receiver.fail_first.get(doc["type"], 0)
                    status = 500 if left else 200
                    if left:
                        receiver.fail_first[doc["type"]] = left - 1
                    seen = {"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body.decode(),
                            "status": status, "at": time.time()}
                    receiver.requests.append(seen)
                    if receiver.log is not None:
                        with receiver.log.open("a") as f:
                            f.write(json.dumps(seen) + "\n")
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"

    def __enter__(self) -> "Receiver":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def delivered(self) -> list[dict]:
        """The events answered 200, in the order they arrived."""
        with self._lock:
            return [json.loads(r["body"]) for r in self.requests if r["status"] == 200]


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    port, log_path, *rules = sys.argv[1:]
    fails = {t: int(n) for t, _, n in (r.partition("=") for r in rules)}
    r = Receiver(int(port), fails, Path(log_path))
    print("listening", flush=True)
    r.server.serve_forever()
