"""Which span a piece of work belongs to, without importing OpenTelemetry.

`CURRENT` holds the recording span of the message being worked on in this task (or of its step),
None when the message is not traced: engine/messages.py asks it for the `traceparent` of what a
flow publishes, and the KV buckets report their operations under it. Cheap when tracing is off:
one context-variable read. The spans themselves are engine/tracing.py's.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

CURRENT: ContextVar[Any] = ContextVar("hub_span", default=None)
_kv_traced = [False]  # set once a tracer exists in this process: only then are buckets wrapped


def span_traceparent() -> str | None:
    """The W3C traceparent naming the current span as parent, or None outside a traced message."""
    span = CURRENT.get()
    return None if span is None else span.traceparent


def trace_kv_buckets() -> None:
    _kv_traced[0] = True


def traced_kv(kv: Any, bucket: str) -> Any:
    """The bucket as the engine uses it; once tracing is on, its reads and writes become child spans
    of the current message (a pass-through when no traced message is current)."""
    return TracedKV(kv, bucket) if _kv_traced[0] else kv


class TracedKV:
    """A KeyValue whose get/put/create/update/delete/purge report a `kv <op> <bucket>` span."""

    __slots__ = ("_kv", "_bucket")

    def __init__(self, kv: Any, bucket: str) -> None:
        self._kv = kv
        self._bucket = bucket

    def __getattr__(self, name: str) -> Any:  # watch, keys, status ... go straight through
        return getattr(self._kv, name)

    async def _op(self, op: str, key: str, call: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        parent = CURRENT.get()
        if parent is None:
            return await call(key, *args, **kwargs)
        span = parent.child(f"kv {op} {self._bucket}", "client",
                            {"db.system": "nats-kv", "db.operation.name": op, "hub.kv.bucket": self._bucket,
                             "hub.kv.key": key})
        try:
            return await call(key, *args, **kwargs)
        except BaseException as exc:
            span.fail(exc)
            raise
        finally:
            span.end()

    async def get(self, key: str, *args: Any, **kwargs: Any) -> Any:
        return await self._op("get", key, self._kv.get, args, kwargs)

    async def put(self, key: str, *args: Any, **kwargs: Any) -> Any:
        return await self._op("put", key, self._kv.put, args, kwargs)

    async def create(self, key: str, *args: Any, **kwargs: Any) -> Any:
        return await self._op("create", key, self._kv.create, args, kwargs)

    async def update(self, key: str, *args: Any, **kwargs: Any) -> Any:
        return await self._op("update", key, self._kv.update, args, kwargs)

    async def delete(self, key: str, *args: Any, **kwargs: Any) -> Any:
        return await self._op("delete", key, self._kv.delete, args, kwargs)

    async def purge(self, key: str, *args: Any, **kwargs: Any) -> Any:
        return await self._op("purge", key, self._kv.purge, args, kwargs)
