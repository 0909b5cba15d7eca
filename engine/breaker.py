"""Circuit breakers per endpoint, shared by every flow and every runner process.

An outage is not a poison message (principle 3): when a target keeps failing, its breaker opens, the
flows that call it stop pulling and their messages wait in JetStream. The state lives in one KV key
per endpoint so every runner acts on the same decision; writes are compare-and-set so concurrent
failures from several runners are all counted. Each process keeps a local copy fed by a KV watch,
so `allow()` costs no round trip on the hot path and successes while closed write nothing.

Poison is not an outage either: the circuit opens on `failures` *different messages* failing in a row
(within `window`). A message counts once however often it is retried, and a success in between
starts the count again, so one message whose own calls keep failing while the endpoint serves the
others never opens it: it follows its own schedule to the DLQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import socket
import time
import uuid
from typing import Any, Awaitable, Callable, TypeVar

import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_PURGE
from pydantic import BaseModel, ConfigDict, Field

from engine.durations import Duration, format_duration
from engine.errors import BrokerUnavailable, CircuitOpen, SlotsBusy, classify
from engine.kv import bucket
from engine.tasks import cancel_and_wait

log = structlog.get_logger("hub.breaker")
T = TypeVar("T")
_ANY = object()        # epoch of a record() made outside call(): counts in whatever state it lands
_NO_PROBE = object()   # epoch of a call that started while closed: ignored if it ends in half-open
_CAS_ATTEMPTS = 20


class BreakerSettings(BaseModel):
    """An endpoint's `circuit_breaker` in config: when it counts as down and how it recovers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    failures: int = Field(5, ge=1, description="Different messages failing in a row within `window` that open "
                          "the circuit. A message counts once, however often it is retried; a success starts "
                          "the count again (a message that fails alone while others pass is poison, not an outage).")
    window: Duration = Field(30.0, description="How far back failures are counted.", examples=["30s"])
    slow_call: Duration | None = Field(
        None, description="A call slower than this counts as a failure even if it succeeded.", examples=["2s"])
    reset: Duration = Field(30.0, description="An open circuit lets probe calls through after this.",
                            examples=["30s"])
    half_open_probes: int = Field(1, ge=1, description="Successful probe calls that close the circuit again.")


def kv_key(endpoint: str) -> str:
    """A KV-safe key; names that had to change get a hash suffix so two endpoints never share one."""
    safe = re.sub(r"[^-_a-zA-Z0-9]", "_", endpoint)
    return safe if safe == endpoint else f"{safe}_{hashlib.blake2b(endpoint.encode(), digest_size=4).hexdigest()}"


def _closed(reason: str = "") -> dict[str, Any]:
    return {"state": "closed", "failures": [], "opened_at": None, "probe_ok": 0, "reason": reason}


def _failure_entries(doc: dict[str, Any], since: float) -> list[list[Any]]:
    """The closed state's counted failures as [time, message key] (older states stored times only)."""
    entries = [f if isinstance(f, list) else [f, None] for f in doc["failures"]]
    return [e for e in entries if e[0] > since]


def _next(doc: dict[str, Any], failed: bool, reason: str, epoch: Any, s: BreakerSettings,
          now: float, key: str | None = None) -> dict[str, Any] | None:
    """The new shared state after one call outcome, or None when nothing changes (no write)."""
    state = doc["state"]
    if state == "closed":
        if not failed:  # the endpoint served a call: the failures before it were not an outage
            return {**doc, "failures": []} if doc["failures"] else None
        fails = _failure_entries(doc, now - s.window)
        if key is not None and any(k == key for _, k in fails):
            return None  # this message already counts: its retries are not more evidence
        fails.append([now, key])
        if len(fails) >= s.failures:
            return {**doc, "state": "open", "failures": [], "opened_at": now, "probe_ok": 0,
                    "reason": f"{len(fails)} failures in a row within {format_duration(s.window)} (each a "
                              f"different message); last: {reason}"}
        return {**doc, "failures": fails}
    if state == "open":  # outcomes of calls that began before it opened say nothing new
        return None
    if epoch is not _ANY and epoch != doc["opened_at"]:  # not a probe of this half-open period
        return None
    if failed:
        return {**doc, "state": "open", "opened_at": now, "probe_ok": 0, "reason": f"probe failed: {reason}"}
    if doc["probe_ok"] + 1 >= s.half_open_probes:
        return _closed(f"{s.half_open_probes} probe(s) succeeded")
    return {**doc, "probe_ok": doc["probe_ok"] + 1}


class Breaker:
    """One endpoint's circuit as this process sees it; decisions are made on the shared KV state.

    Half-open admits `half_open_probes` concurrent probe calls *per process* (no cross-process
    lease: simpler, survives a dead runner, and N runners probing at once is a small load). Probe
    successes from any process add up in the KV; one probe failure reopens the circuit.
    """

    def __init__(self, board: BreakerBoard, endpoint: str, settings: BreakerSettings) -> None:
        self.endpoint = endpoint
        self.key = kv_key(endpoint)
        self.settings = settings
        self._board = board
        self._doc: dict[str, Any] = _closed()
        self._rev = 0  # last KV revision seen; 0 = no key yet (first write uses create)
        self._probes = 0  # probe calls in flight in this process
        self._listeners: list[Callable[[str], None]] = []
        self._timer: asyncio.TimerHandle | None = None

    @property
    def state(self) -> str:
        """"closed", "open" or "half_open"."""
        return self._doc["state"]

    @property
    def reason(self) -> str:
        return self._doc.get("reason", "")

    def allow(self) -> bool:
        """May a call go out now? Local and cheap: the hot path asks for every message."""
        state = self._doc["state"]
        return state == "closed" or (state == "half_open" and self._probes < self.settings.half_open_probes)

    def retry_after(self) -> float:
        """Seconds until a call may be worth trying (0 when allowed now)."""
        if self.allow():
            return 0.0
        if self.state == "open":
            return max(0.0, self._doc["opened_at"] + self.settings.reset - time.time())
        return self.settings.reset  # half-open, probe slots taken: the probe decides within a call

    def on_change(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call `callback(new_state)` whenever this endpoint's state changes; returns an unsubscribe."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    async def record(self, ok: bool, latency: float, key: str | None = None) -> None:
        """Count one call outcome. Never raises: a KV hiccup must not fail the caller's message."""
        await self._count(ok, latency, _ANY, "call failed", key)

    async def call(self, factory: Callable[[], Awaitable[T]], key: str | None = None) -> T:
        """Run one call through the breaker: refuse while open, count transient failures and slow calls.
        `key` names the message the call is for: its failures count once (engine/breaker.py docstring)."""
        if not self.allow():
            err = CircuitOpen(f"circuit for {self.endpoint} is open ({self.reason})", retry_after=self.retry_after())
            err.endpoint = self.endpoint
            raise err
        probe = self.state == "half_open"
        epoch = self._doc["opened_at"] if probe else _NO_PROBE
        self._probes += probe
        started = time.monotonic()
        try:
            result = await factory()
        except Exception as exc:
            err = classify(exc)
            # a permanent error (4xx, fault) proves the target answered; a CircuitOpen from deeper, a
            # local queue (SlotsBusy) or the hub's own broker (BrokerUnavailable) prove nothing about it
            if not isinstance(err, CircuitOpen | SlotsBusy | BrokerUnavailable):
                await self._count(not err.transient, time.monotonic() - started, epoch,
                                  f"{err.error_class}: {err}"[:200], key)
            raise
        else:
            await self._count(True, time.monotonic() - started, epoch)
            return result
        finally:  # after the outcome is recorded, so a second probe cannot slip in before it lands
            self._probes -= probe

    async def _count(self, ok: bool, latency: float, epoch: Any, error: str = "", key: str | None = None) -> None:
        limit = self.settings.slow_call
        slow = ok and limit is not None and latency > limit
        if ok and not slow and self._doc["state"] == "closed" and not self._doc["failures"]:
            return  # the hot path: nothing to share
        reason = f"slow call {latency:.3f}s > {format_duration(limit or 0)}" if slow else error
        failed = slow or not ok
        try:
            await self._board._cas(self, lambda doc, now: _next(doc, failed, reason, epoch, self.settings, now, key))
        except Exception as exc:  # noqa: BLE001 - never into the caller's path
            log.error("breaker_record_failed", endpoint=self.endpoint, error=repr(exc))

    async def _half_open(self, opened_at: float) -> None:
        def to_half_open(doc: dict[str, Any], now: float) -> dict[str, Any] | None:
            if doc["state"] != "open" or doc["opened_at"] != opened_at:
                return None  # another runner moved it already
            return {**doc, "state": "half_open", "probe_ok": 0,
                    "reason": f"reset {format_duration(self.settings.reset)} elapsed; probing"}
        await self._board._cas(self, to_half_open)

    def _apply(self, doc: dict[str, Any], rev: int, *, force: bool = False) -> None:
        """Adopt a state (from the KV, or decided locally while the KV is unreachable)."""
        if not force and rev <= self._rev:
            return
        before, opened_before = self.state, self._doc.get("opened_at")
        self._doc, self._rev = doc, rev
        if doc["state"] != "open":
            self._cancel_timer()
        elif self._timer is None or doc["opened_at"] != opened_before:
            self._cancel_timer()
            delay = max(0.0, doc["opened_at"] + self.settings.reset - time.time())
            self._timer = asyncio.get_running_loop().call_later(
                delay, self._board._spawn, self._half_open, doc["opened_at"])
        if doc["state"] != before:
            log.info("breaker_state", endpoint=self.endpoint, state=doc["state"], previous=before,
                     reason=doc.get("reason"), by=doc.get("by"))
            for callback in list(self._listeners):
                try:
                    callback(doc["state"])
                except Exception as exc:  # noqa: BLE001 - one bad listener must not starve the others
                    log.error("breaker_listener_failed", endpoint=self.endpoint, error=repr(exc))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class BreakerBoard:
    """All breakers of one runner process, bound to the shared KV bucket and watching it."""

    def __init__(self, js: Any, bucket: str = "hub_breakers", *, op_timeout: float = 2.0) -> None:
        self.js = js
        self.bucket = bucket
        self.op_timeout = op_timeout  # a KV write slower than this counts as unreachable
        self.ident = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.kv: Any = None
        self._breakers: dict[str, Breaker] = {}  # by KV key
        self._seen: dict[str, tuple[dict[str, Any], int]] = {}  # key -> latest (doc, revision) from the watch
        self._watcher: Any = None
        self._watch_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ready = asyncio.Event()

    async def start(self) -> None:
        """Bind (or create) the bucket and load every endpoint's current state before returning."""
        self.kv = await bucket(self.js, self.bucket)  # no TTL: an open circuit must not silently expire
        self._watcher = await self.kv.watchall()
        self._watch_task = asyncio.create_task(self._watch())
        await asyncio.wait_for(self._ready.wait(), timeout=10)

    async def stop(self) -> None:
        for b in self._breakers.values():
            b._cancel_timer()
        with contextlib.suppress(Exception):  # the connection may already be gone
            await self._watcher.stop()
        await cancel_and_wait([self._watch_task, *self._tasks])

    def breaker(self, endpoint: str, settings: BreakerSettings) -> Breaker:
        """The process's one breaker for `endpoint`; the first settings given win (flows share it)."""
        key = kv_key(endpoint)
        b = self._breakers.get(key)
        if b is not None:
            if b.settings != settings:
                log.warning("breaker_settings_differ", endpoint=endpoint, kept=b.settings.model_dump(mode="json"))
            return b
        b = self._breakers[key] = Breaker(self, endpoint, settings)
        if key in self._seen:
            b._apply(*self._seen[b.key])
        return b

    def wait(self, endpoint: str) -> float | None:
        """Seconds until `endpoint` may take calls again; None when it takes calls now (or is unknown)."""
        b = self._breakers.get(kv_key(endpoint))
        return None if b is None or b.allow() else b.retry_after()

    async def resync(self) -> None:
        """Re-read every known breaker from the KV (e.g. after a reconnect, should the watch miss a write)."""
        for b in list(self._breakers.values()):
            try:
                b._apply(*await self._read(b.key))
            except Exception as exc:  # noqa: BLE001
                log.warning("breaker_resync_failed", endpoint=b.endpoint, error=repr(exc))

    async def _watch(self) -> None:
        async for entry in self._watcher:
            if entry is None:
                self._ready.set()
                continue
            try:
                deleted = entry.operation in (KV_DEL, KV_PURGE)
                doc = _closed("key deleted") if deleted else json.loads(entry.value)
                rev = 0 if deleted else entry.revision
                self._seen[entry.key] = (doc, rev)
                b = self._breakers.get(entry.key)
                if b is not None and (entry.revision > b._rev or deleted):
                    b._apply(doc, rev, force=True)
            except Exception as exc:  # noqa: BLE001 - a bad value must not kill the watch
                log.error("breaker_watch_entry_failed", key=entry.key, error=repr(exc))

    async def _read(self, key: str) -> tuple[dict[str, Any], int]:
        try:
            entry = await asyncio.wait_for(self.kv.get(key), self.op_timeout)
        except KeyNotFoundError:  # also a deleted key: create() takes over its tombstone
            return _closed(), 0
        return json.loads(entry.value), entry.revision

    async def _cas(self, b: Breaker, change: Callable[[dict[str, Any], float], dict[str, Any] | None]) -> None:
        """Apply `change` to the shared state with compare-and-set, re-reading on a lost race.
        When the KV cannot be reached the change is applied locally: the process protects itself."""
        doc, rev, fresh = b._doc, b._rev, False
        for _ in range(_CAS_ATTEMPTS):
            new = change(doc, time.time())
            if new is None:
                if fresh:
                    b._apply(doc, rev)
                return
            new = {**new, "by": self.ident, "at": time.time()}
            data = json.dumps(new).encode()
            try:
                try:
                    op = self.kv.update(b.key, data, last=rev) if rev else self.kv.create(b.key, data)
                    b._apply(new, await asyncio.wait_for(op, self.op_timeout))
                    return
                except KeyWrongLastSequenceError:  # another runner wrote first: decide again on its state
                    (doc, rev), fresh = await self._read(b.key), True
            except Exception as exc:  # noqa: BLE001 - unreachable KV: keep deciding locally
                log.warning("breaker_kv_unreachable", endpoint=b.endpoint, error=repr(exc))
                b._apply(new, b._rev, force=True)
                return
        log.error("breaker_cas_gave_up", endpoint=b.endpoint, attempts=_CAS_ATTEMPTS)

    def _spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        task = asyncio.get_running_loop().create_task(fn(*args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
