"""Test helpers: a DERP server on loopback, and clients built on our codec."""

from __future__ import annotations

import trio

from derp import frames as fr
from derp.client import DerpClient, connect
from derp.httpd import serve_http
from derp.server import DerpServer


async def start_server(nursery: trio.Nursery, server: DerpServer | None = None, **kw) -> tuple[DerpServer, int]:
    server = server or DerpServer(fr.generate_private_key(), **kw)
    listeners = await nursery.start(serve_http, server, "127.0.0.1", 0)
    await nursery.start(server.run)
    return server, listeners[0].socket.getsockname()[1]


async def dial(port: int, priv: bytes | None = None, **kw) -> DerpClient:
    priv = priv or fr.generate_private_key()
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        return await connect(stream, priv, host="127.0.0.1", **kw)


async def recv_type(client: DerpClient, cls, timeout: float = 5.0):
    """The next frame of type ``cls``, skipping others (keepalives, pings, health)."""
    with trio.fail_after(timeout):
        while True:
            ev = await client.receive()
            if isinstance(ev, cls):
                return ev


async def relayed(src, dst, packet: bytes) -> fr.RecvPacket:
    """The packet as ``dst`` receives it. Sent again now and then, as a client's WireGuard
    would: one worker learns of a client on another a moment after that client is in."""
    with trio.fail_after(10):
        while True:
            await src.send_packet(dst.public_key, packet)
            with trio.move_on_after(0.5):
                while not isinstance(ev := await dst.receive(), fr.RecvPacket):
                    pass
                return ev


async def wait_until(pred, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.01)


async def http_get(port: int, target: str, headers: dict[str, str] | None = None,
                   method: str = "GET") -> tuple[int, dict[bytes, bytes], bytes]:
    lines = ["%s %s HTTP/1.1" % (method, target), "Host: 127.0.0.1", "Connection: close"]
    lines += ["%s: %s" % kv for kv in (headers or {}).items()]
    with trio.fail_after(5):
        s = await trio.open_tcp_stream("127.0.0.1", port)
        async with s:
            await s.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
            buf = b""
            while True:
                d = await s.receive_some(65536)
                if not d:
                    break
                buf += d
                if b"\r\n\r\n" in buf and method == "HEAD":
                    break
    head, _, body = buf.partition(b"\r\n\r\n")
    lines_ = head.split(b"\r\n")
    status = int(lines_[0].split()[1])
    hdrs = {}
    for l in lines_[1:]:
        k, _, v = l.partition(b":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, body
