"""``python3 -m tests.realclient.socksfetch PROXY_PORT HOST PORT PATH``: an HTTP GET through a
SOCKS5 proxy (tailscaled's --socks5-server), printing the body's length and SHA-256.

Runs inside the test network namespace, so it is a separate process.
"""

import hashlib
import socket
import struct
import sys


def fetch(proxy_port: int, host: str, port: int, path: str, timeout: float = 20.0) -> bytes:
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
    try:
        s.sendall(b"\x05\x01\x00")
        if s.recv(2) != b"\x05\x00":
            raise SystemExit("socks: no-auth refused")
        addr = socket.inet_aton(host)
        s.sendall(b"\x05\x01\x00\x01" + addr + struct.pack(">H", port))
        reply = s.recv(10)
        if len(reply) < 2 or reply[1] != 0:
            raise SystemExit(f"socks: connect refused (reply {reply.hex()})")
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = bytearray()
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200") and not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"http: {head[:80]!r}")
    return body


if __name__ == "__main__":
    p, h, port, path = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 20.0
    try:
        body = fetch(p, h, port, path, timeout)
    except OSError as e:
        raise SystemExit(f"fetch failed: {e!r}")
    print(len(body), hashlib.sha256(body).hexdigest())
