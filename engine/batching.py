"""The `batch` source: messages of a subject gathered into batches, one flow message per batch (the
aggregator of integration patterns), for targets that take volume in one go (a Bulk API job).

A batch closes when it holds `size` items or `within` after its first item. Its items (each message's
payload, mapped by `transform` when given, with the message's stream sequence) go to the Object
Store as JSON lines (a batch is far larger than a message may be); then one message naming the
object is stored on `hub.ingress.<flow>`; only then are the source messages acked (store first).
A crash in between repeats the batch (a later one may group differently), so what a batch feeds
must be idempotent: an upsert by external id is. An item whose `transform` fails is dead-lettered
alone; with `key`, a later item with the same key replaces an earlier one in the batch (a month
total sent again). A replay meant for another flow (`Hub-Replay-For`) is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import weakref
from typing import Any

import orjson
import structlog
from nats.js.api import AckPolicy, ConsumerConfig, ObjectStoreConfig
from nats.js.errors import NotFoundError

from engine.errors import ConfigError, HubError, TransformFailed
from engine.ingress import Ingress
from engine.item_outcomes import Item, dead_letter_output
from engine.messages import REPLAY_FOR
from engine.subjects import render
from engine.tasks import cancel_and_wait

log = structlog.get_logger("hub.batch")
FETCH = 1000          # messages asked for per pull
IDLE_POLL = 5.0       # how long one pull waits when no batch is open


class BatchIngress(Ingress):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream = ""
        self.batches = 0
        self.items = 0
        self.dead_lettered = 0
        self._sub: Any = None
        self._objects: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._transform: Any = None
        self._storing = False

    @property
    def durable(self) -> str:
        return f"{self.flow.name}-batch"

    async def start(self) -> None:
        from engine.validation import resolve_transform

        js, spec = self.landing.js, self.spec
        try:
            self.stream = await js.find_stream_name_by_subject(spec.subject)
        except NotFoundError:
            raise ConfigError([f"flow {self.flow.name!r}: source.batch.subject: no stream captures "
                               f"{spec.subject!r}"]) from None
        if spec.transform:
            self._transform = resolve_transform(spec.transform)
        await js.add_consumer(self.stream, ConsumerConfig(
            durable_name=self.durable, filter_subject=spec.subject, ack_policy=AckPolicy.EXPLICIT,
            ack_wait=spec.within + 120.0, max_ack_pending=spec.size + FETCH,
            description=f"batches of {self.flow.name}"[:200]))
        self._sub = await js.pull_subscribe_bind(self.durable, self.stream)
        try:
            self._objects = await js.object_store(spec.bucket)
        except Exception:
            self._objects = await js.create_object_store(spec.bucket, ObjectStoreConfig(bucket=spec.bucket,
                                                                                         ttl=spec.keep))
        self._task = asyncio.create_task(self._run(), name=f"batch:{self.flow.name}")
        self._set_state("waiting")

    async def stop(self) -> None:
        """Finish a batch being stored; one still gathering is left unacked (it comes again)."""
        self._stop.set()
        if self._task is not None:
            if not self._storing:
                self._task.cancel()
            await asyncio.wait({self._task}, timeout=10.0)
            await cancel_and_wait([self._task])
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        self._set_state("stopped")

    async def _run(self) -> None:
        while not self._stop.is_set():
            msgs: list[Any] = []
            try:
                msgs = await self._gather()
                if msgs:
                    self._storing = True
                    try:
                        await self._close(msgs)
                    finally:
                        self._storing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker is away: what is unacked comes again after ack_wait
                if self._stop.is_set():
                    break
                log.warning("batch_failed", flow=self.flow.name, error=repr(exc), held=len(msgs))
                for m in msgs:
                    with contextlib.suppress(Exception):
                        await m.nak(delay=5.0)
                self._set_state("retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 2.0)

    async def _gather(self) -> list[Any]:
        """Messages of one batch: until `size`, or `within` after the first one arrived."""
        spec, msgs = self.spec, []
        opened: float | None = None
        while len(msgs) < spec.size and not self._stop.is_set():
            wait = IDLE_POLL if opened is None else spec.within - (time.monotonic() - opened)
            if wait <= 0:
                break
            try:
                got = await self._sub.fetch(min(FETCH, spec.size - len(msgs)), timeout=max(0.05, min(wait, IDLE_POLL)))
            except TimeoutError:  # nats-py's own and asyncio's: nothing came in that time
                continue
            if got and opened is None:
                opened = time.monotonic()
                self._set_state("gathering")
            msgs.extend(got)
        return msgs

    async def _close(self, msgs: list[Any]) -> None:
        """Store the batch (object, then its message), then ack every source message."""
        spec, flow = self.spec, self.flow.name
        items: dict[str, tuple[int, Any]] = {}
        dead: list[tuple[str, bytes, bytes]] = []
        for n, msg in enumerate(msgs):
            headers = msg.headers or {}
            if headers.get(REPLAY_FOR, flow) != flow:
                continue
            seq = msg.metadata.sequence.stream
            try:
                item = orjson.loads(msg.data)
                if self._transform is not None:
                    item = self._transform(item)
                key = render(spec.key, item, lower=False) if spec.key else f"#{n}"
            except Exception as exc:
                err = exc if isinstance(exc, HubError) else TransformFailed(
                    f"{spec.transform or 'JSON'}: {type(exc).__name__}: {exc}")
                dead.append(dead_letter_output(flow, Item(msg.data, headers, msg.subject, self.stream, seq), err,
                                               "source.batch"))
                continue
            items[key] = (seq, {"seq": seq, "subject": msg.subject, "item": item})
        if dead:
            for subject, data, header_block in dead:
                await self.landing.js.publish(subject, data, headers=_decoded(header_block),
                                              timeout=self.landing.publish_timeout)
            self.dead_lettered += len(dead)
        if items:
            await self._store([line for _, line in sorted(items.values(), key=lambda v: v[0])])
        for msg in msgs:
            await msg.ack()
        self._set_state("waiting")

    async def _store(self, lines: list[dict[str, Any]]) -> None:
        seqs = [line["seq"] for line in lines]
        digest = hashlib.blake2b(orjson.dumps(seqs), digest_size=8).hexdigest()
        name = f"{self.flow.name}/{seqs[0]}-{seqs[-1]}-{len(seqs)}-{digest}"
        body = b"\n".join(orjson.dumps(line) for line in lines) + b"\n"
        await self._objects.put(name, body)
        ref = {"batch": {"bucket": self.spec.bucket, "name": name}, "count": len(lines), "stream": self.stream,
               "subject": self.spec.subject, "flow": self.flow.name, "first_seq": seqs[0], "last_seq": seqs[-1]}
        await self.landing.store(orjson.dumps(ref), name, {"content-type": "application/json"})
        self.batches += 1
        self.items += len(lines)
        log.info("batch_stored", flow=self.flow.name, items=len(lines), object=name)


def _decoded(block: bytes) -> dict[str, str]:
    """A header block back as a dict (nats-py's plain client takes dicts)."""
    lines = block.decode().split("\r\n")[1:]
    return dict(line.split(": ", 1) for line in lines if ": " in line)


READS_AT_ONCE = 2   # the server pushes an object as fast as it can: more reads at once than this could
_reads: "weakref.WeakKeyDictionary[Any, asyncio.Semaphore]" = weakref.WeakKeyDictionary()  # overflow the
# connection's 64 MB pending limit (nats-server closes it as a slow consumer); one bound per event loop


async def read_batch(js: Any, ref: dict[str, Any]) -> list[dict[str, Any]]:
    """The items of a stored batch: [{"seq", "subject", "item"}], in stream order."""
    loop = asyncio.get_running_loop()
    reads = _reads.get(loop)
    if reads is None:
        reads = _reads[loop] = asyncio.Semaphore(READS_AT_ONCE)
    batch = ref.get("batch") or {}
    async with reads:
        store = await js.object_store(batch["bucket"])
        result = await store.get(batch["name"])
    return await asyncio.to_thread(_lines, result.data or b"")  # 20,000 lines: not on the event loop


def _lines(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]
