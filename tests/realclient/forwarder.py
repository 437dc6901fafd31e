"""``python3 -m tests.realclient.forwarder PORT TARGET_FILE``: a TCP forwarder the tests move, as
a floating address or a DNS failover moves clients between servers.

Listens on 127.0.0.1:PORT and connects each client to 127.0.0.1:<the port in TARGET_FILE> (none
while the file is empty). When the file names another port, every forwarded connection is
closed, as a moved address would leave them, and new ones go to the new port.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

CHUNK = 65536


def _read(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


async def _pump(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
    try:
        while data := await src.receive_some(CHUNK):
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def main(port: int, target_file: Path) -> None:
    state: dict = {"target": _read(target_file), "open": set()}

    async def watch() -> None:
        while True:
            await trio.sleep(0.1)
            target = _read(target_file)
            if target != state["target"]:
                state["target"] = target
                for scope in list(state["open"]):
                    scope.cancel()

    async def handle(client: trio.SocketStream) -> None:
        target = state["target"]
        with trio.CancelScope() as scope:
            state["open"].add(scope)
            try:
                if target is None:
                    return
                try:
                    upstream = await trio.open_tcp_stream("127.0.0.1", target)
                except OSError:
                    return
                async with upstream:
                    async with trio.open_nursery() as nursery:
                        async def one_way(a, b):
                            await _pump(a, b)
                            nursery.cancel_scope.cancel()
                        nursery.start_soon(one_way, client, upstream)
                        nursery.start_soon(one_way, upstream, client)
            finally:
                state["open"].discard(scope)
        await trio.aclose_forcefully(client)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await trio.serve_tcp(handle, port, host="127.0.0.1")


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), Path(sys.argv[2]))
