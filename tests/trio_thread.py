"""A Trio loop in a thread of its own, for tests whose driver is synchronous (hypothesis, or
subprocess-driven real-client tests) but whose subject is async.

``call(afn, *args)`` runs ``afn`` in the loop and returns its result; ``nursery`` holds tasks
that outlive one call (a server, a client's reader). With ``netns``, the thread joins that
network namespace first (setns applies to the calling thread only), so every socket the loop
opens is inside it: the test process can talk to a server that lives in the namespace.
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import Any, Awaitable, Callable

import trio

CLONE_NEWNET = 0x40000000


def _join_netns(name: str) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


class TrioThread:
    def __init__(self, name: str, *, netns: str | None = None) -> None:
        self._netns = netns
        self._ready = threading.Event()
        self.failure: BaseException | None = None
        self.nursery: trio.Nursery
        self.thread = threading.Thread(target=self._main, daemon=True, name=name)
        self.thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"{name}: the loop did not start: {self.failure!r}")

    def _main(self) -> None:
        try:
            if self._netns is not None:
                _join_netns(self._netns)
            trio.run(self._run)
        except BaseException as e:  # the test reads it: the loop must not end by itself
            self.failure = e
            self._ready.set()

    async def _run(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def call(self, afn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        if self.failure is not None:
            raise RuntimeError(f"the loop ended: {self.failure!r}")
        return trio.from_thread.run(afn, *args, trio_token=self.token)

    def close(self) -> None:
        if self.thread.is_alive() and self.failure is None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        self.thread.join(30)
