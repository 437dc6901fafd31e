"""Supervision: every long-running task of the server has an owner that keeps it running.

A supervised task that fails is logged with its name and the error, and started again after a
backoff that doubles while it keeps failing (``MIN_BACKOFF`` up to ``MAX_BACKOFF``) and starts
over once it has run ``HEALTHY_AFTER`` seconds without failing. So a runtime fault in the policy
recompiler, the HA prober, an accept loop or any other task costs that task a restart, never the
process (issue 10).

What is not restarted:

- a failure before the task's *first* ``task_status.started()``: the server cannot start, and
  the error reaches ``serve``'s caller, which tells the operator what to fix;
- the ``fatal`` exception types (an unrecoverable store error): the process must stop and say
  why, since serving on without its database would acknowledge what it cannot keep;
- cancellation, and anything that is not an ``Exception`` (KeyboardInterrupt, SystemExit).

A task that returns has nothing more to do (a watcher with nothing to watch) and is not
restarted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import trio

log = logging.getLogger(__name__)

MIN_BACKOFF = 0.5
MAX_BACKOFF = 30.0
# A task that ran this long before failing was healthy: its next failure waits MIN_BACKOFF again.
HEALTHY_AFTER = 60.0


@dataclass
class TaskState:
    """What the supervisor knows of one task (for metrics, logs and tests)."""

    name: str
    restarts: int = 0
    failures: int = 0
    last_error: str = ""
    running: bool = False


def _split(exc: BaseException) -> tuple[BaseException | None, BaseException | None]:
    """(the part that is not an Exception or is fatal-worthy to re-raise, the Exception part)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(lambda e: not isinstance(e, Exception))
    return (exc, None) if not isinstance(exc, Exception) else (None, exc)


def _unwrapped(exc: BaseException) -> BaseException:
    """The one exception inside nested one-member groups (the nursery's wrapping), else ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> str:
    exc = _unwrapped(exc)
    return f"{type(exc).__name__}: {exc}"


class Supervisor:
    """Owns the restart policy of a server's tasks; one per ``serve``.

    Args:
        fatal: exception types that end supervision (re-raised, with their group unwrapped).
        min_backoff, max_backoff, healthy_after: the restart policy (seconds).
    """

    def __init__(
        self, *, fatal: tuple[type[BaseException], ...] = (), min_backoff: float = MIN_BACKOFF,
        max_backoff: float = MAX_BACKOFF, healthy_after: float = HEALTHY_AFTER,
    ) -> None:
        self.fatal = fatal
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.healthy_after = healthy_after
        self.tasks: dict[str, TaskState] = {}

    def start(self, nursery: trio.Nursery, name: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> Awaitable[Any]:
        """``await supervisor.start(nursery, "name", fn, *args)``: like ``nursery.start(fn, *args)``
        (returns what ``fn`` passed to ``task_status.started``), then keeps ``fn`` running."""
        return nursery.start(self.run, name, fn, *args)

    async def run(self, name: str, fn: Callable[..., Awaitable[Any]], *args: Any,
                  task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run ``fn(*args, task_status=...)`` until it returns, restarting it on failure.

        Raises what ``fn`` raises before its first ``started()`` (the caller cannot start), the
        ``fatal`` types, and whatever is not an ``Exception``.
        """
        state = self.tasks.setdefault(name, TaskState(name))
        status = task_status
        backoff = self.min_backoff
        while True:
            began = trio.current_time()
            try:
                async with trio.open_nursery() as inner:
                    state.running = True
                    value = await inner.start(fn, *args)
                    if status is not trio.TASK_STATUS_IGNORED:
                        status.started(value)
                        status = trio.TASK_STATUS_IGNORED
                state.running = False
                log.debug("task %s finished", name)
                return
            except BaseException as exc:
                state.running = False
                if status is not trio.TASK_STATUS_IGNORED:  # before the first start: cannot start
                    raise _unwrapped(exc) from None
                other, errors = _split(exc)
                if other is not None:
                    raise
                fatal, _ = errors.split(self.fatal) if isinstance(errors, BaseExceptionGroup) else (
                    (errors, None) if isinstance(errors, self.fatal) else (None, errors))
                if fatal is not None:
                    raise _unwrapped(fatal) from None
                error = errors
            ran = trio.current_time() - began
            if ran >= self.healthy_after:
                backoff = self.min_backoff
            state.failures += 1
            state.last_error = _describe(error)
            # The whole traceback for the first failure of a streak; one line for each repeat,
            # so a task failing for good writes a line per MAX_BACKOFF, not a traceback each time.
            log.error("task %s failed after %.1fs: %s; restarting it in %.1fs", name, ran, state.last_error,
                      backoff, exc_info=_unwrapped(error) if backoff == self.min_backoff else None)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)
            state.restarts += 1
            log.info("task %s restarted (restart %d)", name, state.restarts)
