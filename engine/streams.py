"""Streams declared in config, created or updated at start; running it twice changes nothing."""

from __future__ import annotations

from typing import Any

import structlog
from nats.js.api import RetentionPolicy, StorageType
from nats.js.api import StreamConfig as JsStreamConfig
from nats.js.errors import NotFoundError

from engine.config import HubConfig, StreamConfig
from engine.sources import INGRESS_STREAM, INGRESS_SUBJECT_PREFIX, SCHEDULE_STREAM, SCHEDULE_SUBJECT_PREFIX

log = structlog.get_logger("hub.streams")


SCHEDULE_KEEP = 7 * 86400.0
INGRESS_KEEP = 14 * 86400.0
INGRESS_DEDUPE = 3600.0   # an outside item stored again within an hour (a crash before it was marked) is dropped


def declared_streams(config: HubConfig) -> list[StreamConfig]:
    """The config's streams plus the hub's own: the dead-letter stream every flow may write to, the
    stream of schedule ticks and the stream where ingress sources land what they receive."""
    replicas = max((s.replicas for s in config.streams), default=1)
    own = [StreamConfig.model_construct(  # values are already validated seconds, not YAML text
        name=name, subjects=[subjects], retention="limits", storage="file", replicas=replicas,
        max_age=keep, max_bytes=None, duplicate_window=dedupe)
        for name, subjects, keep, dedupe in (
            (config.dlq.stream, "dlq.>", config.dlq.max_age, 120.0),
            (SCHEDULE_STREAM, f"{SCHEDULE_SUBJECT_PREFIX}.>", SCHEDULE_KEEP, 120.0),
            (INGRESS_STREAM, f"{INGRESS_SUBJECT_PREFIX}.>", INGRESS_KEEP, INGRESS_DEDUPE))]
    return [*config.streams, *(s for s in own if not any(c.name == s.name for c in config.streams))]


def _to_js(s: StreamConfig) -> JsStreamConfig:
    return JsStreamConfig(
        name=s.name, subjects=list(s.subjects), retention=RetentionPolicy(s.retention),
        storage=StorageType(s.storage), num_replicas=s.replicas, max_age=s.max_age,
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
    """Create missing streams, update changed ones; returns name → created/updated/unchanged."""
    outcome: dict[str, str] = {}
    for stream in declared_streams(config):
        want = _to_js(stream)
        try:
            info = await js.stream_info(stream.name)
        except NotFoundError:
            await js.add_stream(want)
            outcome[stream.name] = "created"
            log.info("stream_created", stream=stream.name, subjects=stream.subjects)
            continue
        changed = _differs(info.config, want)
        if changed:
            await js.update_stream(want)
            outcome[stream.name] = "updated"
            log.info("stream_updated", stream=stream.name, fields=changed)
        else:
            outcome[stream.name] = "unchanged"
    return outcome
