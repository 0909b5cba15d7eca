"""Stopping background tasks so that they do stop.

On Python 3.11 (and 3.10) a cancel that reaches a task in the loop tick where the future it waits
on inside `asyncio.wait_for` completes is lost: wait_for returns the result and the task runs on
to its next await (python/cpython#86296, fixed by the 3.12 rewrite). nats-py's request path uses
wait_for, so a schedule or pull loop cancelled as a reply lands kept running, and `gather`ing it
waited for ever (a CI run hung in a test's `hub.stop()`). A task still running a moment after its
cancel is cancelled again, until it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

RECANCEL_AFTER = 0.5  # s: long enough for a task's own clean-up on cancel, short for a stop


async def cancel_and_wait(tasks: Iterable[asyncio.Future | None]) -> None:
    """Cancel the tasks and return when every one has ended; their results and errors are dropped
    (read them before, if they matter)."""
    given = [t for t in tasks if t is not None]
    pending = {t for t in given if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_AFTER)
    for task in given:
        if not task.cancelled():
            task.exception()  # retrieved: asyncio logs no "exception was never retrieved"
