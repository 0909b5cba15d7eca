"""sObject Collections upsert, one record per flow message, up to 200 records per request.

Every `upsert` call of a runner for one object joins a batch; the batch goes when it holds `size`
records or its first record has waited `linger`. Salesforce answers one result per record, in order
(`allOrNone: false`: each record stands alone), and each caller gets its own record's result, so
the engine settles each message by itself: 197 of 200 done, 3 dead-lettered, each with its own
error. A record's error maps onto the taxonomy:
    UNABLE_TO_LOCK_ROW (another transaction holds it) and the other "try again" codes: transient
    DUPLICATE_VALUE, REQUIRED_FIELD_MISSING, MISSING_ARGUMENT, ...: BusinessError, naming the fields
A failure of the whole request (a 5xx, an expired session that cannot be renewed, a field the org
does not have) is every caller's failure.
"""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

from adapters.salesforce.config import CollectionsSettings, UpsertOperation
from adapters.salesforce.rest import RestClient
from engine.errors import BusinessError, HubError, TargetServerError, UnparseableAnswer, ValidationFailed

TRANSIENT_CODES = frozenset({"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "REQUEST_RUNNING_TOO_LONG",
                             "TXN_SECURITY_METERING_ERROR"})


def record_error(sobject: str, ext_field: str, key: Any, errors: list[dict[str, Any]]) -> HubError:
    """One record's failure: transient for the codes that clear by themselves, else BusinessError with
    every error's code, message and fields."""
    parts = []
    for e in errors or [{"statusCode": "UNKNOWN_EXCEPTION", "message": "no error given", "fields": []}]:
        fields = ", ".join(e.get("fields") or [])
        parts.append(f"{e.get('statusCode')}: {e.get('message')}" + (f" (fields: {fields})" if fields else ""))
    text = f"{sobject} {ext_field}={key}: " + "; ".join(parts)
    codes = {e.get("statusCode") for e in errors or ()}
    if codes and codes <= TRANSIENT_CODES:
        return TargetServerError(text)
    return BusinessError(text)


class CollectionsBatcher:
    def __init__(self, rest: RestClient, op: UpsertOperation, settings: CollectionsSettings) -> None:
        self.rest = rest
        self.op = op
        self.size = settings.size
        self.linger = settings.linger
        self.requests = 0
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[Any], float]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def upsert(self, record: Any, timeout: float) -> dict[str, Any]:
        if not isinstance(record, dict):
            raise ValidationFailed(f"upsert {self.op.sobject}: the record must be a JSON object, got "
                                   f"{type(record).__name__}")
        body = {"attributes": {"type": self.op.sobject}, **{k: v for k, v in record.items() if k != "attributes"}}
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((body, future, time.monotonic() + timeout))
        if len(self._waiting) >= self.size:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.linger, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            batch, self._waiting = self._waiting[:self.size], self._waiting[self.size:]
            batch = [b for b in batch if not b[1].done()]  # a caller cancelled meanwhile: not sent
            if batch:
                task = asyncio.create_task(self._send(batch))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[dict[str, Any], asyncio.Future[Any], float]]) -> None:
        op = self.op
        timeout = max(0.1, min(deadline for _, _, deadline in batch) - time.monotonic())
        self.requests += 1
        try:
            results = await self.rest.request(
                "PATCH", f"/composite/sobjects/{op.sobject}/{op.external_id}", timeout=timeout,
                json={"allOrNone": False, "records": [record for record, _, _ in batch]})
            if not isinstance(results, list) or len(results) != len(batch):
                raise UnparseableAnswer(f"{self.rest.endpoint}: Collections answered "
                                        f"{len(results) if isinstance(results, list) else type(results).__name__} "
                                        f"results for {len(batch)} records")
        except HubError as exc:
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(copy.copy(exc))  # each message's error is its own object
            return
        except BaseException as exc:  # cancelled while sending (the runner stops): the callers decide
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(TargetServerError(f"{self.rest.endpoint}: request interrupted: {exc!r}"))
            raise
        for (record, future, _), result in zip(batch, results):
            if future.done():
                continue
            key = record.get(op.external_id)
            if isinstance(result, dict) and result.get("success"):
                future.set_result({"id": result.get("id"), "created": result.get("created"), "sobject": op.sobject,
                                   op.external_id: key})
            else:
                errors = result.get("errors") if isinstance(result, dict) else None
                future.set_exception(record_error(op.sobject, op.external_id, key, errors or []))

    async def close(self) -> None:
        self._flush()
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=5.0)
