"""The supervisor (appliance/supervise.py): restart with backoff, what it does not restart."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from appliance.supervise import Supervisor


class Fatal(Exception):
    pass


def flaky(fail_times: int, log: list, *, before_started: bool = False):
    """A task that fails ``fail_times`` times (after or before started()), then runs on."""
    runs = {"n": 0}

    async def task(*, task_status=trio.TASK_STATUS_IGNORED):
        runs["n"] += 1
        log.append(("start", trio.current_time()))
        if not before_started:
            task_status.started(runs["n"])
        if runs["n"] <= fail_times:
            await trio.sleep(1)
            raise RuntimeError(f"injected fault {runs['n']}")
        if before_started:
            task_status.started(runs["n"])
        await trio.sleep_forever()

    return task


async def test_a_failing_task_is_restarted_with_doubling_backoff(autojump_clock, caplog):
    sup = Supervisor(min_backoff=0.5, max_backoff=2.0, healthy_after=60)
    starts: list = []
    async with trio.open_nursery() as nursery:
        first = await sup.start(nursery, "flaky thing", flaky(4, starts))
        assert first == 1
        await trio.sleep(100)
        state = sup.tasks["flaky thing"]
        assert state.restarts == 4 and state.failures == 4 and state.running
        nursery.cancel_scope.cancel()
    times = [t for _, t in starts]
    assert len(times) == 5
    # each run lasts 1 s before failing; the waits between runs are 0.5, 1, 2, 2 (capped)
    gaps = [round(b - a - 1, 3) for a, b in zip(times, times[1:])]
    assert gaps == [0.5, 1.0, 2.0, 2.0]
    assert state.last_error == "RuntimeError: injected fault 4"
    lines = [r for r in caplog.records if r.name == "appliance.supervise" and r.levelno == logging.ERROR]
    assert len(lines) == 4 and all("flaky thing" in r.getMessage() for r in lines)
    assert "injected fault 1" in lines[0].getMessage() and "restarting it in 0.5s" in lines[0].getMessage()
    assert lines[0].exc_info is not None  # the first of a streak has its traceback...
    assert lines[2].exc_info is None  # ...repeats are one line each


async def test_backoff_starts_over_after_a_healthy_run(autojump_clock):
    sup = Supervisor(min_backoff=0.5, max_backoff=30, healthy_after=10)
    starts: list = []
    n = {"runs": 0}

    async def task(*, task_status=trio.TASK_STATUS_IGNORED):
        n["runs"] += 1
        starts.append(trio.current_time())
        task_status.started()
        # runs 1-3 fail at once, run 4 is healthy for 20 s then fails, run 5 lives
        if n["runs"] <= 3:
            raise RuntimeError("quick")
        if n["runs"] == 4:
            await trio.sleep(20)
            raise RuntimeError("after a healthy while")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await sup.start(nursery, "t", task)
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    gaps = [round(b - a, 3) for a, b in zip(starts, starts[1:])]
    assert gaps == [0.5, 1.0, 2.0, 20.5]


async def test_a_failure_before_the_first_start_is_raised(autojump_clock):
    sup = Supervisor()
    async with trio.open_nursery() as nursery:
        with pytest.raises(RuntimeError, match="injected fault 1"):  # bare, not in a group
            await sup.start(nursery, "cannot start", flaky(1, [], before_started=True))
    assert sup.tasks["cannot start"].restarts == 0


async def test_a_failure_before_started_on_a_restart_is_retried(autojump_clock):
    sup = Supervisor(min_backoff=0.5)
    runs = {"n": 0}

    async def task(*, task_status=trio.TASK_STATUS_IGNORED):
        runs["n"] += 1
        if runs["n"] in (2, 3):
            raise OSError("port busy for a while")
        task_status.started()
        if runs["n"] == 1:
            raise RuntimeError("runtime fault")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await sup.start(nursery, "listener", task)
        await trio.sleep(30)
        assert runs["n"] == 4 and sup.tasks["listener"].running
        nursery.cancel_scope.cancel()


async def test_fatal_errors_end_supervision_unwrapped(autojump_clock):
    sup = Supervisor(fatal=(Fatal,))

    async def task(*, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        await trio.sleep(1)
        raise Fatal("the database failed")

    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            await sup.start(nursery, "writer", task)
    assert [type(e) for e in info.value.exceptions] == [Fatal]
    assert sup.tasks["writer"].restarts == 0


async def test_a_task_that_returns_is_not_restarted(autojump_clock):
    sup = Supervisor()
    runs = []

    async def task(*, task_status=trio.TASK_STATUS_IGNORED):
        runs.append(1)
        task_status.started()

    async with trio.open_nursery() as nursery:
        await sup.start(nursery, "nothing to watch", task)
        await trio.sleep(10)
    assert runs == [1] and not sup.tasks["nothing to watch"].running


async def test_cancellation_is_not_a_failure(autojump_clock):
    sup = Supervisor()
    async with trio.open_nursery() as nursery:
        await sup.start(nursery, "sleeper", flaky(0, []))
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert sup.tasks["sleeper"].failures == 0


async def test_keyboard_interrupt_is_not_swallowed():
    sup = Supervisor()

    async def task(*, task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        raise KeyboardInterrupt

    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            await sup.start(nursery, "t", task)
    assert info.value.subgroup(KeyboardInterrupt) is not None
