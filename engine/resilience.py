"""In-process retry of a call, on the flow's explicit schedule (tenacity).

Only transient errors are retried; a permanent one leaves at once. When the schedule is spent the
error goes back to the executor, which turns it into a delayed JetStream redelivery — long waits
never hold a worker. A target's Retry-After wins over a shorter scheduled wait.
"""

from __future__ import annotations

import random
from typing import Any, Awaitable, Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from engine.errors import CircuitOpen, HubError, classify
from engine.ratelimit import RateLimiter
from engine.spec import Flow


def _is_transient(exc: BaseException) -> bool:
    # an open circuit is not retried in-process: the breaker already knows, the message waits instead
    return isinstance(exc, HubError) and exc.transient and not isinstance(exc, CircuitOpen)


class CallGuard:
    """Wraps every `call` step of one flow with its retry schedule."""

    def __init__(self, flow: Flow) -> None:
        self.schedule = list(flow.on_error.retry)
        self.jitter = flow.on_error.jitter
        self.limiter: RateLimiter | None = None  # the flow's `limits.rate`, set by its runner

    def _wait(self, state: RetryCallState) -> float:
        base = self.schedule[min(state.attempt_number, len(self.schedule)) - 1]
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None) or 0.0
        return max(base * (1 + random.uniform(-self.jitter, self.jitter)), retry_after)

    async def call(self, endpoint: str, attempt: Callable[[], Awaitable[Any]]) -> Any:
        tries = 0

        async def once() -> Any:
            nonlocal tries
            tries += 1
            if tries > 1 and self.limiter is not None:
                await self.limiter.acquire()  # a retry is a request too: the target's rate counts it
            try:
                return await attempt()
            except HubError:
                raise
            except Exception as exc:
                raise classify(exc) from exc

        if not self.schedule:
            return await once()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(len(self.schedule) + 1),
            wait=self._wait,
            retry=retry_if_exception(_is_transient),
            reraise=True,
        )
        return await retrying(once)
