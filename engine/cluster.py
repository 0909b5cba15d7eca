"""What the hub needs to know about the NATS cluster it runs on (DESIGN.md: nothing may assume a
single server): how many copies its streams and buckets keep, and which broker errors only mean
"JetStream is electing a leader or restarting, ask again in a moment".

Replicas are resolved once per connection (`ensure_streams` does it at start) and remembered for
that connection, so every KV bucket and Object Store created later through it gets the same count
without each caller passing it along.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any, Awaitable, Callable, TypeVar

import nats.errors
import structlog
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

from engine.errors import ConfigError

log = structlog.get_logger("hub.cluster")

T = TypeVar("T")
AUTO_REPLICAS = 3                 # survives the loss of one node; what `auto` picks on a cluster
SETTLE_PATIENCE = 60.0            # how long start-up waits for JetStream to elect its leaders
# "JetStream system temporarily unavailable", "cluster can not handle request", and "no suitable peers
# for placement": a new R3 stream or bucket while a node is down or not yet caught up after a restart
JS_NOT_READY_CODES = {10008, 10009, 10005}

_replicas: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()


def _client(js_or_nc: Any) -> Any:
    return getattr(js_or_nc, "_nc", js_or_nc)


def clustered(js_or_nc: Any) -> bool:
    """Whether the connection's server is part of a cluster (its INFO names one). The member count
    is not taken from INFO's `connect_urls`: right after a cluster starts, gossip may list only some
    of the nodes (measured: a fresh 3-node cluster advertised one), and `no_advertise` lists none."""
    info = getattr(_client(js_or_nc), "_server_info", None) or {}
    return bool(info.get("cluster"))


def resolve_replicas(js_or_nc: Any, configured: int | str) -> int:
    """`nats.replicas` as a number for this connection; remembered for buckets created through it."""
    if configured == "auto":
        replicas = AUTO_REPLICAS if clustered(js_or_nc) else 1
    else:
        replicas = int(configured)
        if replicas > 1 and not clustered(js_or_nc):
            raise ConfigError([f"nats.replicas: {replicas} needs a NATS cluster, but the server is not part of "
                               "one; set replicas: 1 (or auto) or connect to a cluster"])
    _replicas[_client(js_or_nc)] = replicas
    return replicas


def replicas_for(js_or_nc: Any) -> int:
    """The replicas resolved for this connection, or `auto`'s choice when nothing was resolved yet."""
    nc = _client(js_or_nc)
    known = _replicas.get(nc)
    return known if known is not None else resolve_replicas(nc, "auto")


def settling(exc: BaseException) -> bool:
    """True for the errors a healthy cluster gives while a stream, bucket or the meta group elects a
    leader, or while the client reconnects: asking again in a moment is right."""
    if isinstance(exc, (ServiceUnavailableError, NoStreamResponseError, nats.errors.NoRespondersError,
                        nats.errors.TimeoutError, asyncio.TimeoutError, nats.errors.ConnectionReconnectingError)):
        return True
    if isinstance(exc, APIError):
        return exc.code == 503 or exc.err_code in JS_NOT_READY_CODES
    return False


async def when_settled(op: Callable[[], Awaitable[T]], what: str, patience: float = SETTLE_PATIENCE) -> T:
    """Run a JetStream admin operation (bind or create a stream or bucket), asking again while the
    cluster settles; any other error, or settling for longer than `patience`, is raised."""
    deadline = time.monotonic() + patience
    pause = 0.1
    while True:
        try:
            return await op()
        except Exception as exc:
            if not settling(exc) or time.monotonic() + pause > deadline:
                raise
            log.warning("jetstream_settling", what=what, error=repr(exc), retry_in=pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)
