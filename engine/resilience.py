"""In-process retry of a call, on the flow's explicit schedule (tenacity).

Only transient errors are retried; a permanent one leaves at once. When the schedule is spent the
error goes back to the executor, which turns it into a delayed JetStream redelivery — long waits
never hold a worker. A target's Retry-After wins over a shorter scheduled wait.

Every failed attempt is visible: one log line (`call_attempt_failed`, saying whether it is tried
again) and one entry handed to `on_failure`, which the pipeline keeps for the message's failure history
(engine/failures.py). Not retried in-process: an open circuit (the message waits instead), the
broker's own outage (waited out by the executor), and an outcome a `verify` could not decide.
"""

from __future__ import annotations

import random
from typing import Any, Awaitable, Callable

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from engine.errors import BrokerUnavailable, CircuitOpen, HubError, SlotsBusy, VerifyPending, classify
from engine.ratelimit import RateLimiter
from engine.spec import Flow

log = structlog.get_logger("hub.call")

_NOT_RETRIED_HERE = (CircuitOpen, BrokerUnavailable, VerifyPending)
_NOT_A_CALL = (CircuitOpen, SlotsBusy, BrokerUnavailable)


def _is_transient(exc: BaseException) -> bool:
    # an open circuit is not retried in-process: the breaker already knows, the message waits instead
    return isinstance(exc, HubError) and exc.transient and not isinstance(exc, _NOT_RETRIED_HERE)


class CallGuard:
    """Wraps every `call` step of one flow with its retry schedule."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow.name
        self.schedule = list(flow.on_error.retry)
        self.jitter = flow.on_error.jitter
        self.limiter: RateLimiter | None = None  # the flow's `limits.rate`, set by its runner

    def _wait(self, state: RetryCallState) -> float:
        base = self.schedule[min(state.attempt_number, len(self.schedule)) - 1]
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None) or 0.0
        return max(base * (1 + random.uniform(-self.jitter, self.jitter)), retry_after)

    async def call(self, endpoint: str, attempt: Callable[[], Awaitable[Any]],
                   on_failure: Callable[[HubError, int], None] | None = None, msg_id: str | None = None,
                   step: str | None = None) -> Any:
        """`attempt()` until it succeeds, fails permanently or the schedule is spent. `on_failure(err,
        attempt_number)` hears of every failed attempt; its log line names the message and the step."""
        tries = 0
        last = len(self.schedule) + 1

        async def once() -> Any:
            nonlocal tries
            tries += 1
            if tries > 1 and self.limiter is not None:
                await self.limiter.acquire()  # a retry is a request too: the target's rate counts it
            try:
                return await attempt()
            except Exception as exc:
                err = classify(exc)
                again = tries < last and _is_transient(err)
                # no call was made (an open circuit, a busy slot, our broker): one line still, at info
                quiet = isinstance(err, _NOT_A_CALL)
                (log.info if quiet else log.warning)(
                    "call_attempt_failed", flow=self.flow, endpoint=endpoint, attempt=tries,
                    error_class=err.error_class, error=str(err)[:300], retried_in_process=again, msg_id=msg_id,
                    step=step)
                if on_failure is not None:
                    on_failure(err, tries)
                if err is exc:
                    raise
                raise err from exc

        if not self.schedule:
            return await once()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(last),
            wait=self._wait,
            retry=retry_if_exception(_is_transient),
            reraise=True,
        )
        return await retrying(once)
