"""Broker operations the hub does not give up on: a claim, a done mark, a state write, an output, a
DLQ record, a history entry.

A broker fault (engine/errors.is_broker_fault: no responders, no stream response, a timeout, a
reconnecting connection) means "not confirmed yet", never "failed": the operation is tried again with
growing pauses for as long as the connection can come back. The message stays held meanwhile (the
pull feed keeps telling JetStream it is in progress), so no other runner repeats its effect. Only a
connection closed for good ends the wait, with the error; the runner then exits (engine/runtime.py)
and JetStream redelivers whatever was not acked.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, TypeVar

from engine.errors import BrokerUnavailable, classify, is_broker_fault

T = TypeVar("T")

FIRST_PAUSE = 0.05
MAX_PAUSE = 2.0
LOG_EVERY = 10  # a restart costs a few retries; a long outage logs every tenth, not every one


async def until_confirmed(op: Callable[[], Awaitable[T]], *, what: str, alive: Callable[[], bool], log: Any,
                          within: float | None = None, **fields: Any) -> T:
    """`await op()` until it succeeds. A broker fault waits and tries again while `alive()` (the
    connection is open or reconnecting) and, when given, for at most `within` seconds; any other error
    goes to the caller at once. Raises BrokerUnavailable when it stops trying."""
    pause, tries = FIRST_PAUSE, 0
    started = time.monotonic()
    while True:
        try:
            return await op()
        except Exception as exc:
            if not is_broker_fault(exc):
                raise
            tries += 1
            out_of_time = within is not None and time.monotonic() - started + pause > within
            if not alive() or out_of_time:
                log.error("broker_gave_up", what=what, tries=tries, error=repr(exc), **fields)
                err = classify(exc)
                raise err if isinstance(err, BrokerUnavailable) else BrokerUnavailable(str(err)) from exc
            if tries == 1 or tries % LOG_EVERY == 0:
                log.warning("broker_retry", what=what, tries=tries, error=repr(exc), **fields)
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)
