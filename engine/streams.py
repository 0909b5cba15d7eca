"""Streams declared in config, created or updated at start; running it twice changes nothing.

Replicas: a stream without its own `replicas` takes `nats.replicas` (engine/cluster.py: `auto` is
3 on a cluster). An existing stream with fewer replicas is raised; one with more (an operator made it
R3 or R5 by hand) keeps them: the hub never lowers a stream's copies.
"""

from __future__ import annotations

from typing import Any

import structlog
from nats.js.api import RetentionPolicy, StorageType
from nats.js.api import StreamConfig as JsStreamConfig
from nats.js.errors import NotFoundError

from engine.advisories import STREAM as ADVISORY_STREAM
from engine.advisories import SUBJECT as ADVISORY_SUBJECT
from engine.cluster import clustered, resolve_replicas, when_settled
from engine.config import HubConfig, StreamConfig
from engine.errors import ConfigError
from engine.sources import INGRESS_STREAM, INGRESS_SUBJECT_PREFIX, SCHEDULE_STREAM, SCHEDULE_SUBJECT_PREFIX

log = structlog.get_logger("hub.streams")


SCHEDULE_KEEP = 7 * 86400.0
INGRESS_KEEP = 14 * 86400.0
INGRESS_DEDUPE = 3600.0   # an outside item stored again within an hour (a crash before it was marked) is dropped
ADVISORY_KEEP = 7 * 86400.0


def declared_streams(config: HubConfig) -> list[StreamConfig]:
    """The config's streams plus the hub's own: the dead-letter stream every flow may write to, the
    stream of schedule ticks, the stream where ingress sources land what they receive and the one
    that keeps MAX_DELIVERIES advisories (engine/advisories.py). Replicas None: `nats.replicas`."""
    own = [StreamConfig.model_construct(  # values are already validated seconds, not YAML text
        name=name, subjects=[subjects], retention="limits", storage="file", replicas=None,
        max_age=keep, max_bytes=None, duplicate_window=dedupe)
        for name, subjects, keep, dedupe in (
            (config.dlq.stream, "dlq.>", config.dlq.max_age, 120.0),
            (SCHEDULE_STREAM, f"{SCHEDULE_SUBJECT_PREFIX}.>", SCHEDULE_KEEP, 120.0),
            (INGRESS_STREAM, f"{INGRESS_SUBJECT_PREFIX}.>", INGRESS_KEEP, INGRESS_DEDUPE),
            (ADVISORY_STREAM, ADVISORY_SUBJECT, ADVISORY_KEEP, 120.0))]
    return [*config.streams, *(s for s in own if not any(c.name == s.name for c in config.streams))]


def _to_js(s: StreamConfig, replicas: int) -> JsStreamConfig:
    return JsStreamConfig(
        name=s.name, subjects=list(s.subjects), retention=RetentionPolicy(s.retention),
        storage=StorageType(s.storage), num_replicas=replicas, max_age=s.max_age,
        max_bytes=s.max_bytes, duplicate_window=s.duplicate_window,
    )


def _differs(have: JsStreamConfig, want: JsStreamConfig) -> list[str]:
    fields = ["subjects", "retention", "storage", "num_replicas", "max_age", "max_bytes", "duplicate_window"]
    out = []
    for f in fields:
        a, b = getattr(have, f), getattr(want, f)
        if f == "subjects":
            a, b = sorted(a or []), sorted(b or [])
        if f == "max_bytes":
            a, b = (a if a and a > 0 else None), b
        if f == "max_age":
            a, b = (a or 0) or None, b or None
        if a != b:
            out.append(f)
    return out


async def ensure_streams(js: Any, config: HubConfig) -> dict[str, str]:
    """Create missing streams, update changed ones; returns name → created/updated/unchanged. Waits
    (up to a minute) while the cluster elects leaders: a runner started with a node down still starts."""
    replicas = resolve_replicas(js, config.nats.replicas)
    if not clustered(js) and (lone := [s.name for s in config.streams if (s.replicas or 1) > 1]):
        raise ConfigError([f"streams {', '.join(lone)}: replicas > 1 need a NATS cluster, and the server is "
                           "not part of one"])
    outcome: dict[str, str] = {}
    for stream in declared_streams(config):
        want = _to_js(stream, stream.replicas or replicas)
        outcome[stream.name] = await when_settled(lambda: _ensure(js, want), f"stream {stream.name}")
    return outcome


async def _ensure(js: Any, want: JsStreamConfig) -> str:
    try:
        info = await js.stream_info(want.name)
    except NotFoundError:
        await js.add_stream(want)
        log.info("stream_created", stream=want.name, subjects=want.subjects, replicas=want.num_replicas)
        return "created"
    have = info.config.num_replicas or 1
    if have > (want.num_replicas or 1):
        log.info("stream_replicas_kept", stream=want.name, replicas=have, configured=want.num_replicas,
                 reason="the hub never lowers a stream's replicas")
        want.num_replicas = have
    changed = _differs(info.config, want)
    if not changed:
        return "unchanged"
    await js.update_stream(want)
    log.info("stream_updated", stream=want.name, fields=changed, replicas=want.num_replicas)
    return "updated"
