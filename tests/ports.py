"""A free loopback port for a server a test starts (and must name before it binds).

Taken at random below the kernel's ephemeral range (32768 and up on Linux): a port the kernel
hands out for binding to port 0 is just as likely to be the next outgoing connection's local
port (a client, pebble, tailscaled), and then the server's bind fails with EADDRINUSE.
"""

from __future__ import annotations

import random
import socket

LOW, HIGH = 10_000, 32_000  # below ip_local_port_range's default start, above common services


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing holds now, for TCP and UDP alike."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(200):
        port = random.randint(LOW, HIGH)
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(family, kind) as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free port between {LOW} and {HIGH} on {host}")
