"""The hub's KV buckets (idempotency keys, failure history, fallback answers, breaker state, schedule
ticks, pull checkpoints, `state` records, pending correlations)."""

from __future__ import annotations

import json
from typing import Any

import structlog
from nats.js.api import KeyValueConfig
from nats.js.errors import APIError, BadRequestError, NotFoundError
from nats.js.client import KV_PRE_TEMPLATE, KV_STREAM_TEMPLATE
from nats.js.kv import KeyValue

from engine.cluster import replicas_for, when_settled

from engine.trace_context import traced_kv

log = structlog.get_logger("hub.kv")

async def bucket(js: Any, name: str, ttl: float | None = None, *, leader_reads: bool = True) -> Any:
    """Bind the bucket, creating it on first use (history 1; `ttl` expires keys), with the replicas
    resolved for this connection (engine/cluster.py); an existing bucket with fewer is raised to
    them, one with more is left as it is.

    `leader_reads` (the default): `get` asks the stream leader (`$JS.API.STREAM.MSG.GET`), even when
    the bucket was made with `allow_direct` by someone else. A direct get may be answered by any
    replica, and one that lags (a node that came back behind) would answer a claim, a breaker's
    compare-and-set, a `state` record, a schedule tick or a pull checkpoint as it was before the
    write just made. Only caches that tolerate a stale answer pass False (faster, any replica).
    No limit_marker_ttl: nats-py 2.16 would then return expiry markers from get() (MEASURED.md)."""
    replicas = replicas_for(js)
    stream = KV_STREAM_TEMPLATE.format(bucket=name)

    async def bind_or_create() -> Any:
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            try:
                return await js.create_key_value(KeyValueConfig(bucket=name, history=1, ttl=ttl, replicas=replicas))
            except BadRequestError as race:  # another runner created it meanwhile (10058): bind it
                if race.err_code != 10058:
                    raise
                info = await js.stream_info(stream)
        if (info.config.num_replicas or 1) < replicas:
            info.config.num_replicas = replicas
            await js.update_stream(info.config)
            log.warning("bucket_replicas_raised", bucket=name, replicas=replicas)
        return KeyValue(name=name, stream=stream, pre=KV_PRE_TEMPLATE.format(bucket=name), js=js,
                        direct=bool(info.config.allow_direct) and not leader_reads)

    kv = await when_settled(bind_or_create, f"KV bucket {name}")
    if leader_reads and kv._direct:  # a bucket created just now with the server's allow_direct default
        kv._direct = False
    return traced_kv(kv, name)  # once tracing is on: its operations are spans of the current message


async def stored_keys(js: Any, name: str, prefix: str = "") -> list[str]:
    """The keys with a message in bucket `name` (deleted ones included: their marker is a message; a
    `get` then says KeyNotFound), read from the stream's subject counts (`STREAM.INFO` with a
    subjects filter, paged: the server answers at most 100,000 subjects at a time).

    Not nats-py's `kv.keys()`: its watcher decides "no more keys" from consumer info taken after the
    consumer exists, so a key rewritten in that instant is missed and a one-key bucket reads as
    empty (a pending wait vanished from `runner.py pending` in a test), and each miss leaves its
    consumer behind."""
    api = getattr(js, "_prefix", "$JS.API")
    stream = KV_STREAM_TEMPLATE.format(bucket=name)
    pre = f"$KV.{name}."
    keys: list[str] = []
    while True:
        request = json.dumps({"subjects_filter": f"{pre}{prefix}>", "offset": len(keys)}).encode()
        answer = json.loads((await js._nc.request(f"{api}.STREAM.INFO.{stream}", request,
                                                  timeout=getattr(js, "_timeout", 5.0))).data)
        if "error" in answer:
            APIError.from_error(answer["error"])  # raises the error class of its code
        page = (answer.get("state") or {}).get("subjects") or {}
        keys.extend(subject.removeprefix(pre) for subject in page)
        if not page or len(keys) >= answer.get("total", 0):
            return sorted(keys)
