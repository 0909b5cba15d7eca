"""The `fallback` of a call step: the last good answer per key in KV, served marked as possibly
stale while the target is down — a website keeps answering when Power Sales does not.

A fresh answer (`fresh`) is served from a copy in this runner when it has one that is still fresh:
the KV round trip was most of a warm lookup's cost. The copy is never wrong, only possibly not the
newest: another runner may have stored a newer answer, which is asked for once ours is not fresh.

Freshness is an answer's `cached_at` (written on the storing runner's `Clock`) against this runner's
clock: runner clocks only, so `fresh: 15m` means fifteen minutes of the hub's time, settable by tests.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
from collections import OrderedDict
from datetime import datetime
from typing import Any, Awaitable, Callable

import structlog
from nats.js.errors import KeyNotFoundError

from engine.clock import SYSTEM, Clock
from engine.errors import HubError, RoutingError, TransientError
from engine.kv import bucket
from engine.spec import Fallback
from engine.subjects import render

log = structlog.get_logger("hub.fallback")

BUCKET = "hub_fallback"
KEEP = 30 * 86400.0
LOCAL_ENTRIES = 50_000  # answers kept in the runner (least recently used go first)


class FallbackCache:
    def __init__(self, js: Any, clock: Clock = SYSTEM) -> None:
        self.js = js
        self.clock = clock
        self.kv: Any = None
        self._local: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._running: dict[str, asyncio.Future[Any]] = {}  # key -> the call in flight for it

    async def once(self, endpoint: str, spec: Fallback, payload: Any, *, refresh: bool,
                   call: Callable[[], Awaitable[Any]]) -> Any:
        """Run `call` and remember its answer, unless the same key's call is already running in this
        runner: then wait for its answer (a burst of one cold lookup costs the target one call, not one
        each, and none of them waits for a slot). A refresh always calls; a failure is each waiter's."""
        key = self._key(endpoint, spec, payload)
        running = None if refresh else self._running.get(key)
        if running is not None:
            try:
                return json.loads(json.dumps(await asyncio.shield(running)))  # its own copy to change
            except HubError as exc:
                raise copy.copy(exc) from None  # its own error object: steps and tracebacks are per message
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._running.setdefault(key, future)
        try:
            answer = await call()
            await self.remember(endpoint, spec, payload, answer)
            future.set_result(answer)
            return answer
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else
                                 TransientError(f"{endpoint}: the shared call was cancelled"))
            future.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        finally:
            if self._running.get(key) is future:
                del self._running[key]

    def _keep(self, key: str, cached: dict[str, Any]) -> None:
        # as text: every hit gets its own answer, not the object a flow went on to change
        self._local[key] = {"cached_at": cached["cached_at"], "text": json.dumps(cached["answer"])}
        self._local.move_to_end(key)
        if len(self._local) > LOCAL_ENTRIES:
            self._local.popitem(last=False)

    async def start(self) -> None:
        self.kv = await bucket(self.js, BUCKET, KEEP)

    @staticmethod
    def _key(endpoint: str, spec: Fallback, payload: Any) -> str:
        try:
            raw = render(spec.key, payload)
        except KeyError as exc:
            raise RoutingError(f"fallback key {spec.key!r} needs payload field {exc}") from None
        return f"{endpoint}.{hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()}"

    async def remember(self, endpoint: str, spec: Fallback, payload: Any, answer: Any) -> None:
        try:
            key, cached = self._key(endpoint, spec, payload), {"answer": answer, "cached_at": self._stamp()}
            await self.kv.put(key, json.dumps(cached).encode())
            self._keep(key, cached)
        except HubError:
            raise
        except Exception as exc:  # a cache write must not fail a call that succeeded
            log.warning("fallback_not_saved", endpoint=endpoint, error=repr(exc))

    async def fresh_answer(self, endpoint: str, spec: Fallback, payload: Any) -> Any:
        """The remembered answer when younger than `spec.fresh` (marked `cached: true`), else None."""
        if spec.fresh is None:
            return None
        key = self._key(endpoint, spec, payload)
        cached = self._local.get(key)
        if cached is not None:
            self._local.move_to_end(key)
        if cached is None or not self._younger(cached, spec.fresh):
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:
                return None
            self._keep(key, json.loads(entry.value))
            cached = self._local[key]
            if not self._younger(cached, spec.fresh):
                return None
        answer = json.loads(cached["text"])
        marks = {"stale": False, "cached": True, "cached_at": cached["cached_at"]}
        return {**answer, **marks} if isinstance(answer, dict) else {"answer": answer, **marks}

    def _stamp(self) -> str:
        return self.clock.now().isoformat(timespec="milliseconds")

    def _younger(self, cached: dict[str, Any], seconds: float) -> bool:
        return (self.clock.now() - datetime.fromisoformat(cached["cached_at"])).total_seconds() < seconds

    async def stale_answer(self, endpoint: str, spec: Fallback, payload: Any, error: HubError) -> Any:
        """The last answer marked stale, or the original error when there is none."""
        try:
            entry = await self.kv.get(self._key(endpoint, spec, payload))
        except KeyNotFoundError:
            raise error from None
        cached = json.loads(entry.value)
        answer = cached["answer"]
        log.warning("fallback_answer", endpoint=endpoint, cached_at=cached["cached_at"],
                    error_class=error.error_class, error=str(error))
        if isinstance(answer, dict):
            return {**answer, "stale": True, "cached_at": cached["cached_at"]}
        return {"answer": answer, "stale": True, "cached_at": cached["cached_at"]}
