"""Test helpers: build a project from YAML text and run a Hub against the session's nats-server."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

from engine.runtime import Hub
from engine.validation import Project, load_project


def project_from(tmp: Path, config: str, *flows: str) -> Project:
    """Write a config and flow files under tmp and load them exactly as `runner.py` does."""
    (tmp / "flows").mkdir(exist_ok=True)
    cfg = tmp / "config.yaml"
    cfg.write_text(textwrap.dedent(config))
    paths = []
    for i, text in enumerate(flows):
        path = tmp / "flows" / f"flow{i}.yaml"
        path.write_text(textwrap.dedent(text))
        paths.append(path)
    return load_project(cfg, paths)


async def started_hub(project: Project, url: str) -> Hub:
    hub = Hub(project, servers=[url])
    await hub.start()
    return hub


class StreamReader:
    """Collects what a stream holds on a subject, through an ordered consumer (each stored message once)."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self._changed = asyncio.Event()

    @classmethod
    async def open(cls, js: Any, subject: str) -> "StreamReader":
        reader = cls()
        reader.sub = await js.subscribe(subject, cb=reader._cb, ordered_consumer=True)
        return reader

    async def _cb(self, msg: Any) -> None:
        self.messages.append(msg)
        self._changed.set()

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[Any]:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.messages

    def payloads(self) -> list[Any]:
        return [json.loads(m.data) for m in self.messages]


async def settled(js: Any, stream: str, *durables: str) -> bool:
    """Each durable consumer has nothing left to deliver and nothing unacknowledged (a consumer-info query)."""
    for durable in durables:
        info = await js.consumer_info(stream, durable)
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def wait_until(predicate, timeout: float = 15.0, interval: float = 0.02) -> None:
    """For state that only a server query can show (consumer info): poll until true or fail."""
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(interval)
