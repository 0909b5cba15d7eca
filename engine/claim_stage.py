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
from engine.kv_pipe import kv_span
from engine.tasks import cancel_and_wait


class ClaimStage:
    def __init__(self, store: IdempotencyStore, flow: str, lease: float) -> None:
        self.store, self.flow, self.lease = store, flow, lease
        self._batch: list[tuple[str, str, asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def claim_soon(self, key: str, msg_id: str) -> asyncio.Future[Any]:
        """The claim on `key`, joining this tick's batch: a future of its outcome (no span; the claims
        of buffered messages sent ahead of their workers, engine/executor.py)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not self._batch:
            loop.call_soon(self._send)
        self._batch.append((key, msg_id, fut))
        return fut

    async def claim(self, key: str, msg_id: str) -> int | None:
        """This message's claim on `key` (see the module docstring)."""
        fut = self.claim_soon(key, msg_id)
        span = kv_span("create", BUCKET, self.store.kv_key(self.flow, key))
        try:
            return await fut  # type: ignore[no-any-return]
        except BaseException as exc:
            if span is not None:
                span.fail(exc)
            raise
        finally:
            if span is not None:
                span.end()

    def _send(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.get_running_loop().create_task(self._claim(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _claim(self, batch: list[tuple[str, str, asyncio.Future[Any]]]) -> None:
        try:
            results = await self.store.claim_many(self.flow, [(k, m) for k, m, _ in batch], self.lease)
        except asyncio.CancelledError:
            for _, _, fut in batch:
                fut.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - every claim of the batch learns it
            results = [exc] * len(batch)
        for (_, _, fut), result in zip(batch, results):
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    async def close(self) -> None:
        await cancel_and_wait(list(self._tasks))  # not cancel + gather: a cancel can be lost (engine/tasks.py)
