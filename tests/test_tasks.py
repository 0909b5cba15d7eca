"""cancel_and_wait: a stop returns even when a task loses its cancel (Python 3.11's wait_for race)."""

from __future__ import annotations

import asyncio

from engine.tasks import cancel_and_wait


async def test_a_task_that_loses_its_cancel_is_cancelled_again_until_it_ends():
    """The loop swallows the first CancelledError, as asyncio.wait_for does on 3.11 when the awaited
    reply lands in the same tick (python/cpython#86296); a plain cancel-and-gather waits for ever."""
    lost = 0

    async def loop_that_loses_one_cancel() -> None:
        nonlocal lost
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost += 1

    task = asyncio.create_task(loop_that_loses_one_cancel())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_and_wait([task])
    assert task.cancelled() and lost == 1


async def test_ended_failed_and_missing_tasks_are_fine():
    async def fails() -> None:
        raise RuntimeError("boom")

    failed = asyncio.create_task(fails())
    await asyncio.wait({failed})
    await cancel_and_wait([failed, None])
    assert isinstance(failed.exception(), RuntimeError)
