"""KV writes sent together: many creates, compare-and-sets or puts in flight at once, acks gathered.

A KV write is a JetStream publish to the bucket's subject `$KV.<bucket>.<key>`; `create` and
`update(last=rev)` add the header `Nats-Expected-Last-Subject-Sequence: <rev>` (0: absent), which is
all nats-py's KeyValue does, one request/reply waited alone each. Here the writes of a batch are
published at once with replies to our own inbox (`_Replies`), then their acks are awaited together: one round trip
for the batch (bench/hot_path.py, the call flow with claim + mark). Each write gets its own outcome:
its revision, KeyWrongLastSequenceError (the expected revision was not the key's), or the error the
broker gave (a broker fault, or a timeout when no ack came back: not confirmed, to be tried again).

`Marks` gathers the done marks of concurrent workers within one loop tick into such a batch.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Awaitable, Callable

import nats.errors
import orjson
from nats.js.errors import APIError, KeyWrongLastSequenceError, NoStreamResponseError

from engine import trace_context
from engine.nats_client import HubClient
from engine.tasks import cancel_and_wait

WRONG_LAST = (10071, 10164)  # JSStreamWrongLastSequenceErrF, JSStreamWrongLastSequenceConstantErr
_HEADER = "Nats-Expected-Last-Subject-Sequence"


class _Batch:
    """The writes of one `kv_writes` call: their outcomes, and one future for the last ack."""

    __slots__ = ("results", "left", "done")

    def __init__(self, n: int) -> None:
        self.results: list[Any] = [None] * n
        self.left = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def settle(self, i: int, outcome: Any) -> None:
        self.results[i] = outcome
        self.left -= 1
        if self.left == 0 and not self.done.done():
            self.done.set_result(None)


class _Replies:
    """One connection's inbox for the acks of pipelined KV writes. Not nats-py's `publish_async`:
    its reply handler raises an API error (a 400 such as "wrong last sequence") inside the
    subscription's callback instead of setting it on the future, which then never completes. On a
    HubClient the acks are handed over as they are parsed (no queue, no task per ack)."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.prefix = ""
        self.waiting: dict[str, tuple[_Batch, int]] = {}
        self._n = 0
        self._started: asyncio.Future[None] | None = None

    async def start(self) -> None:
        if self._started is None:
            started = self._started = asyncio.get_running_loop().create_future()
            try:
                self.prefix = self.nc.new_inbox() + "."
                if isinstance(self.nc, HubClient):
                    await self.nc.subscribe_direct(self.prefix + "*", self._on_raw)
                else:
                    await self.nc.subscribe(self.prefix + "*", cb=self._on_msg)
            except BaseException as exc:
                self._started = None
                started.set_exception(exc)
                started.exception()  # retrieved: raised below
                raise
            started.set_result(None)
        await self._started

    def expect(self, batch: _Batch, i: int) -> str:
        self._n += 1
        token = str(self._n)
        self.waiting[token] = (batch, i)
        batch.left += 1
        return self.prefix + token

    def forget(self, reply: str) -> None:
        self.waiting.pop(reply[len(self.prefix):], None)

    async def _on_msg(self, msg: Any) -> None:
        self._on_reply(msg.subject, msg.data, bool(msg.headers and msg.headers.get("Status") == "503"))

    def _on_raw(self, subject: bytes, data: bytes, headers: bytes | None) -> None:
        self._on_reply(subject.decode(), data, bool(headers and headers.startswith(b"NATS/1.0 503")))

    def _on_reply(self, subject: str, data: bytes, no_responders: bool) -> None:
        waiting = self.waiting.pop(subject[len(self.prefix):], None)
        if waiting is None:
            return
        batch, i = waiting
        if no_responders:
            batch.settle(i, NoStreamResponseError())
            return
        try:
            resp = orjson.loads(data)
            err = resp.get("error")
            if err is None:
                batch.settle(i, resp["seq"])
            elif err.get("err_code") in WRONG_LAST:
                batch.settle(i, KeyWrongLastSequenceError(description=err.get("description")))
            else:
                try:
                    APIError.from_error(err)  # raises the error class of its code
                except APIError as exc:
                    batch.settle(i, exc)
        except Exception as exc:  # noqa: BLE001 - an unreadable ack: not confirmed
            batch.settle(i, exc)


_replies: "weakref.WeakKeyDictionary[Any, _Replies]" = weakref.WeakKeyDictionary()


async def kv_writes(js: Any, kv: Any, writes: list[tuple[str, bytes, int | None]],
                    timeout: float | None = None) -> list[int | BaseException]:
    """Write (key, value, expected last revision or None for a plain put) to `kv`, all in flight at
    once: per write its revision or its error (never raised; a publish that could not be sent makes
    it and the rest of the batch errors; no ack within `timeout`: nats' TimeoutError)."""
    timeout = timeout if timeout is not None else getattr(js, "_timeout", 5.0)
    nc = js._nc
    replies = _replies.get(nc)
    if replies is None:
        replies = _replies[nc] = _Replies(nc)
    pre = kv._pre
    batch = _Batch(len(writes))
    replies_of: list[str] = []
    failed: BaseException | None = None
    try:
        await replies.start()
    except Exception as exc:  # noqa: BLE001 - reconnecting or closed: nothing confirmed
        failed = exc
    hub = isinstance(nc, HubClient)
    for i, (key, value, last) in enumerate(writes):
        if failed is None:
            reply = replies.expect(batch, i)
            headers = None if last is None else (f"NATS/1.0\r\n{_HEADER}: {last}\r\n\r\n".encode() if hub
                                                 else {_HEADER: str(last)})
            try:
                await nc.publish(pre + key, value, reply=reply, headers=headers)
            except Exception as exc:  # reconnecting, closed: this write and the rest are not confirmed
                replies.forget(reply)
                batch.left -= 1
                failed = exc
            else:
                replies_of.append(reply)
                continue
        batch.results[i] = failed
    if batch.left > 0:
        try:
            async with asyncio.timeout(timeout):
                await batch.done
        except TimeoutError:
            for reply in replies_of:
                replies.forget(reply)
            for i, result in enumerate(batch.results):
                if result is None:
                    batch.results[i] = nats.errors.TimeoutError()
    return batch.results


def kv_span(op: str, bucket: str, key: str) -> Any:
    """A `kv <op> <bucket>` span under the current message's span, as engine/trace_context.TracedKV
    reports a single write; None when tracing is off or the message is not traced."""
    if not trace_context._kv_traced[0]:
        return None
    parent = trace_context.CURRENT.get()
    if parent is None:
        return None
    return parent.child(f"kv {op} {bucket}", "client", {"db.system": "nats-kv", "db.operation.name": op,
                                                         "hub.kv.bucket": bucket, "hub.kv.key": key})


class TickBatch:
    """Items asked for within one loop tick, handed together to one `write(items)` call: `soon(item)`
    is a future of that item's own outcome. `write` answers one outcome per item (its value, or an
    exception for that item alone); an exception it raises reaches every item of its batch. Done marks
    (Marks) and idempotency claims (engine/claim_stage.py) go out this way."""

    def __init__(self, write: Callable[[list[Any]], Awaitable[list[Any]]]) -> None:
        self._write = write
        self._batch: list[tuple[Any, asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def soon(self, item: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not self._batch:
            loop.call_soon(self._send)
        self._batch.append((item, fut))
        return fut

    def _send(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        try:
            results = await self._write([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, fut in batch:
                fut.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - every item of the batch learns it
            results = [exc] * len(batch)
        for (_, fut), result in zip(batch, results):
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    async def close(self) -> None:
        await cancel_and_wait(list(self._tasks))  # not cancel + gather: a cancel can be lost (engine/tasks.py)


async def in_span(fut: "asyncio.Future[Any]", span: Any) -> Any:
    """The outcome of `fut`, recorded on `span` (from kv_span) when there is one."""
    if span is None:
        return await fut
    try:
        return await fut
    except BaseException as exc:
        span.fail(exc)
        raise
    finally:
        span.end()


class Marks:
    """Done marks of concurrent workers written together: `await marks.put(key, value)` returns the
    revision once the broker confirmed it, or raises its error (a broker fault: the caller waits it
    out and puts again, engine/confirm.py). Marks asked for in one loop tick share one batch."""

    def __init__(self, js: Any, kv: Any, bucket: str) -> None:
        self.js, self.kv, self.bucket = js, kv, bucket
        self._batch = TickBatch(self._write)

    async def put(self, key: str, value: bytes) -> int:
        return await in_span(self._batch.soon((key, value)), kv_span("put", self.bucket, key))  # type: ignore[no-any-return]

    async def _write(self, batch: list[tuple[str, bytes]]) -> list[Any]:
        return await kv_writes(self.js, self.kv, [(k, v, None) for k, v in batch])
