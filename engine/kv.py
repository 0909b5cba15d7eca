"""The hub's KV buckets (idempotency keys, failure history, fallback answers, breaker state)."""

from __future__ import annotations

from typing import Any

from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError


async def bucket(js: Any, name: str, ttl: float | None = None, direct: bool = False) -> Any:
    """Bind the bucket, creating it on first use (history 1; `ttl` expires keys). No
    limit_marker_ttl: nats-py 2.16 would then return expiry markers from get() (MEASURED.md).

    `direct` (allow_direct, the Go client's default) makes get() a direct get: ~1.5x the
    idempotency check's throughput, but in a cluster any replica answers, so a read right after a
    write may be stale (nats-server#6557). Only for buckets read long after they are written, or
    whose writer does not read back (the idempotency marks); CAS buckets keep leader reads."""
    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        return await js.create_key_value(KeyValueConfig(bucket=name, history=1, ttl=ttl, direct=direct or None))
