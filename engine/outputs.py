"""What the broker must confirm before a message's source is acked: its outputs and its `state`
records. Both are waited for in place while the broker restarts (engine/confirm.py): the message's
effect has happened, so it must not fail now; only a connection closed for good gives up.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

from nats.js.errors import KeyNotFoundError

from engine.confirm import FIRST_PAUSE, LOG_EVERY, MAX_PAUSE, until_confirmed
from engine.errors import HubError, PayloadTooLarge, PublishFailed, classify, is_broker_fault
from engine.keyed_state import StateConflict, commit


def too_large(subject: str, data: bytes, headers: bytes, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"{subject}: {len(data)} bytes + {len(headers)} bytes of headers exceed the server's "
                           f"max_payload of {limit} bytes (publishing it would cut the connection)", step="publish")


def check_sizes(outputs: list[tuple[str, bytes, bytes]], limit: int) -> None:
    """nats-server cuts a connection that sends more than max_payload (headers count): refuse first."""
    for s, d, h in outputs:
        if len(d) + len(h) > limit:
            raise too_large(s, d, h, limit)


async def store_outputs(js: Any, outputs: list[tuple[str, bytes, bytes]], timeout: float,
                        alive: Callable[[], bool], log: Any, msg_id: str) -> int:
    """Publish `outputs` and wait until JetStream stored every one. A broker fault is waited out and
    the missing ones are sent again under the same ids (a repeat is dropped as a duplicate). Raises
    PublishFailed once the connection is closed for good, the error itself for anything else."""
    pending, pause, tries = outputs, FIRST_PAUSE, 0
    while True:
        failed: list[tuple[str, bytes, bytes]] = []
        last: BaseException | None = None
        sent = []
        for out in pending:
            try:
                sent.append((out, await js.publish_async(out[0], out[1], headers=out[2])))
            except Exception as exc:
                if not is_broker_fault(exc):
                    raise
                failed.append(out)
                last = exc
        if sent:
            _, late = await asyncio.wait([f for _, f in sent], timeout=timeout)
            for out, f in sent:
                if f in late:
                    f.cancel()
                    failed.append(out)
                    last = TimeoutError(f"no publish ack within {timeout:g}s")
                elif (exc := f.exception()) is not None:
                    if not is_broker_fault(exc):
                        raise refusal(out[0], exc)  # a stream said no: named, on the flow's schedule
                    failed.append(out)
                    last = exc
        if not failed:
            return len(outputs)
        tries += 1
        if not alive():
            raise PublishFailed(f"{failed[0][0]}: output not confirmed, connection closed: {last!r}", step="publish")
        if tries == 1 or tries % LOG_EVERY == 0:
            log.warning("broker_retry", what="output publish", tries=tries, outputs=len(failed), msg_id=msg_id,
                        error=repr(last))
        await asyncio.sleep(pause)
        pause = min(pause * 2, MAX_PAUSE)
        pending = failed


def unconfirmed(futures: list[Any], outputs: list[tuple[str, bytes, bytes]]) -> HubError | None:
    """Pure flows: why an output was not stored, or None. Whether a stream captures a subject is decided
    by validation and the publish step: a publish JetStream did not confirm is the broker's outage."""
    for f, (subject, _, _) in zip(futures, outputs):
        if f.cancelled():
            return PublishFailed(f"{subject}: no publish ack in time", step="publish")
        exc = f.exception()
        if exc is not None:
            if is_broker_fault(exc):
                return PublishFailed(f"{subject}: output not confirmed: {exc!r}", step="publish")
            return refusal(subject, exc)
    return None


def refusal(subject: str, exc: BaseException) -> HubError:
    """Why JetStream did not store an output on `subject`, not being an outage: StreamFull (retried on
    the flow's schedule), PublishRefused (dead-lettered), named with the subject (engine/errors.py)."""
    err = classify(exc)
    if err is not exc:
        err.args = (f"{subject}: {err}",)
    err.step = "publish"
    return err


async def commit_confirmed(write: tuple[Any, str, int | None, Any], alive: Callable[[], bool], log: Any,
                           msg_id: str) -> None:
    """One `state` record, compare-and-set, confirmed. A write whose answer was lost in a broker restart
    and that then meets its own revision has landed, not conflicted (StateConflict otherwise)."""
    tries = 0

    async def once() -> None:
        nonlocal tries
        tries += 1
        try:
            await commit(write)
        except StateConflict:
            if tries > 1 and await landed(write):
                return
            raise

    await until_confirmed(once, what="state write", alive=alive, log=log, msg_id=msg_id)


async def landed(write: tuple[Any, str, int | None, Any]) -> bool:
    """Whether a `state` record holds what `write` wrote (its compare-and-set succeeded unanswered)."""
    kv, key, _, new = write
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return new is None
    return new is not None and json.loads(entry.value or b"null") == json.loads(json.dumps(new, default=str))
