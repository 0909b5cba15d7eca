"""The emulator's event bus: one ordered stream per topic, replay ids, and the 72-hour retention.

As documented for the Pub/Sub API: a replay id is opaque (here 8 bytes, big-endian) and consecutive
events do not get consecutive ids (the emulator skips some on purpose, so a client that computes
with them fails here first); events older than the retention window are purged, and a subscription
that asks to resume after a purged replay id is refused. Time comes from the org's clock, so tests
move it past 72 hours instead of waiting.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import struct
from dataclasses import dataclass, field
from typing import Any

from engine.clock import SYSTEM, Clock

RETENTION = 72 * 3600.0


def encode_replay(n: int) -> bytes:
    return struct.pack(">q", n)


def decode_replay(raw: bytes) -> int | None:
    """The position a replay id names; None when it is not one of ours (a corrupted id)."""
    if len(raw) != 8:
        return None
    return struct.unpack(">q", raw)[0]


@dataclass
class StoredEvent:
    replay: int
    event_id: str
    schema_id: str
    payload: bytes
    at: float


@dataclass
class Topic:
    name: str
    schema: dict[str, Any]
    schema_id: str
    can_publish: bool
    events: list[StoredEvent] = field(default_factory=list)
    replays: list[int] = field(default_factory=list)   # parallel to events, for bisect
    latest: int = 0      # the newest replay id given (a keep-alive's latest_replay_id; survives purges)
    floor: int = 0       # the replay id of the newest purged event: resuming at or before it loses events
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


class EventBus:
    """Topics of one org. `publish` appends and wakes subscribers; reads purge what aged out."""

    def __init__(self, clock: Clock = SYSTEM, retention: float = RETENTION, seed: int = 7) -> None:
        self.clock = clock
        self.retention = retention
        self.topics: dict[str, Topic] = {}
        self._next = 1000 + seed
        self._rng = random.Random(seed)

    def add_topic(self, name: str, schema: dict[str, Any], schema_id: str, can_publish: bool) -> Topic:
        topic = self.topics[name] = Topic(name, schema, schema_id, can_publish, latest=self._next,
                                          floor=self._next - 1)
        return topic

    def publish(self, topic: Topic, payload: bytes, event_id: str, schema_id: str | None = None) -> int:
        self._next += self._rng.randint(1, 3)  # not contiguous, as documented
        event = StoredEvent(self._next, event_id, schema_id or topic.schema_id, payload, self.clock.time())
        topic.events.append(event)
        topic.replays.append(event.replay)
        topic.latest = event.replay
        topic.arrived.set()
        topic.arrived = asyncio.Event()
        return event.replay

    def purge(self, topic: Topic) -> None:
        """Drop what is older than the retention window (the clock may have jumped)."""
        edge = self.clock.time() - self.retention
        cut = 0
        while cut < len(topic.events) and topic.events[cut].at < edge:
            cut += 1
        if cut:
            topic.floor = topic.events[cut - 1].replay
            del topic.events[:cut]
            del topic.replays[:cut]

    def valid_start(self, topic: Topic, replay: int) -> bool:
        """A CUSTOM start is valid after an id the bus still knows: newer than every purged event and
        not newer than the latest id given."""
        self.purge(topic)
        return topic.floor < replay <= topic.latest

    def cursor_earliest(self, topic: Topic) -> int:
        self.purge(topic)
        return topic.floor

    def read(self, topic: Topic, after: int, limit: int) -> list[StoredEvent]:
        """Up to `limit` retained events with a replay id greater than `after`."""
        self.purge(topic)
        start = bisect.bisect_right(topic.replays, after)
        return topic.events[start:start + limit]
