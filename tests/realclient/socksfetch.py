"""``python3 -m tests.realclient.socksfetch PROXY_PORT HOST PORT PATH [TIMEOUT] [CA_FILE]``: an
HTTP GET through a SOCKS5 proxy (tailscaled's --socks5-server), printing the body's length and
SHA-256. HOST may be an IPv4 address or a name (the proxy resolves it: MagicDNS names work).
With CA_FILE it is HTTPS, verified against that CA file alone, for HOST.

Runs inside the test network namespace, so it is a separate process.
"""

import hashlib
import ipaddress
import socket
import ssl
import struct
import sys


def _socks_target(host: str, port: int) -> bytes:
    try:
        return b"\x01" + ipaddress.IPv4Address(host).packed + struct.pack(">H", port)
    except ValueError:
        name = host.encode()
        return b"\x03" + bytes([len(name)]) + name + struct.pack(">H", port)


def fetch(proxy_port: int, host: str, port: int, path: str, timeout: float = 20.0, ca_file: str | None = None) -> bytes:
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
    try:
        s.sendall(b"\x05\x01\x00")
        if s.recv(2) != b"\x05\x00":
            raise SystemExit("socks: no-auth refused")
        s.sendall(b"\x05\x01\x00" + _socks_target(host, port))
        reply = s.recv(10)
        if len(reply) < 2 or reply[1] != 0:
            raise SystemExit(f"socks: connect refused (reply {reply.hex()})")
        if ca_file:
            # Only this CA: the system's trust store must not be what makes it verify.
            s = ssl.create_default_context(cafile=ca_file).wrap_socket(s, server_hostname=host)
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
    ca = sys.argv[6] if len(sys.argv) > 6 else None
    try:
        body = fetch(p, h, port, path, timeout, ca)
    except (OSError, ssl.SSLError) as e:
        raise SystemExit(f"fetch failed: {e!r}")
    print(len(body), hashlib.sha256(body).hexdigest())
