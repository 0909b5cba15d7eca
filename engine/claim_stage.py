"""The idempotency claims of a flow's workers, sent together.

Workers take their messages from the feed's buffer in the same loop tick; each used to wait alone for
its KV create (a request/reply). Here a worker's claim joins a batch that leaves at the end of the
tick: the creates go out pipelined (engine/kv_pipe.py, IdempotencyStore.claim_many), their acks are
gathered, and each worker gets its own outcome, exactly what `IdempotencyStore.claim` would give:
a revision (claimed), None (the done mark: skip), HeldElsewhere (a live claim elsewhere: wait), or
the broker's error (a broker fault: the worker waits it out and claims again, engine/confirm.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from engine.idempotency import BUCKET, IdempotencyStore
from engine.kv_pipe import TickBatch, in_span, kv_span


class ClaimStage:
    def __init__(self, store: IdempotencyStore, flow: str, lease: float) -> None:
        self.store, self.flow, self.lease = store, flow, lease
        self._batch = TickBatch(self._claim)

    def claim_soon(self, key: str, msg_id: str) -> asyncio.Future[Any]:
        """The claim on `key`, joining this tick's batch: a future of its outcome (no span; the claims
        of buffered messages sent ahead of their workers, engine/executor.py)."""
        return self._batch.soon((key, msg_id))

    async def claim(self, key: str, msg_id: str) -> int | None:
        """This message's claim on `key` (see the module docstring)."""
        span = kv_span("create", BUCKET, self.store.kv_key(self.flow, key))
        return await in_span(self.claim_soon(key, msg_id), span)  # type: ignore[no-any-return]

    async def _claim(self, batch: list[tuple[str, str]]) -> list[Any]:
        return await self.store.claim_many(self.flow, batch, self.lease)

    async def close(self) -> None:
        await self._batch.close()
