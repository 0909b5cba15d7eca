"""Small real HTTP targets (aiohttp on a free loopback port) for the fault tests and the demo's fault
section (issue 12).

`CreateTarget` is strict where an ERP such as SAP is: a create is not idempotent (it ignores the
Idempotency-Key header the hub sends; every POST that reaches it makes a new record), and its answer
can be lost after the record is made (a stall longer than the caller's timeout). A lookup by business
key says whether a record exists. `PathTarget` answers 200 except for chosen paths (a message that
always fails next to good ones) and counts 2xx answers per Idempotency-Key (effects).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from aiohttp import web


class _Server:
    async def __aenter__(self) -> Any:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        await self._runner.cleanup()

    def app(self) -> web.Application:
        raise NotImplementedError


class CreateTarget(_Server):
    """POST /switches {key, ...} creates a record (a new one every time); GET /switches?key=K answers
    {found, switch}. `plan` says what the next POSTs do: "ok", "lost" (create, then stall past the
    caller's timeout: the answer is lost) or "unapplied" (stall, and never create)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.posts = 0
        self.lookups = 0
        self.plan: list[str] = []
        self.lookup_failures = 0  # the next lookups answer 500
        self._release = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/switches", self._create)
        app.router.add_get("/switches", self._find)
        return app

    def creates(self, key: str) -> int:
        return sum(1 for r in self.records if r["key"] == key)

    async def _create(self, request: web.Request) -> web.Response:
        self.posts += 1
        body = await request.json()
        mode = self.plan.pop(0) if self.plan else "ok"
        if mode != "unapplied":
            self.records.append({"id": f"SW-{len(self.records) + 1}", **body})
        if mode != "ok":
            try:
                await asyncio.wait_for(self._release.wait(), 30)  # the caller gives up long before
            except TimeoutError:
                pass
        return web.json_response({"id": self.records[-1]["id"] if self.records else None, "status": "CREATED"})

    async def _find(self, request: web.Request) -> web.Response:
        self.lookups += 1
        if self.lookup_failures:
            self.lookup_failures -= 1
            return web.json_response({"error": "lookup unavailable"}, status=500)
        key = request.query.get("key")
        found = [r for r in self.records if r["key"] == key]
        return web.json_response({"found": bool(found), "switch": found[-1] if found else None})


class PathTarget(_Server):
    """200 for every POST except those whose path is in `failing` (500, always)."""

    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        self.calls: Counter[str] = Counter()     # Idempotency-Key -> requests
        self.effects: Counter[str] = Counter()   # Idempotency-Key -> 2xx answers
        self.down = False
        self._changed = asyncio.Condition()
        self._release = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        self.calls[key] += 1
        if self.down or request.path in self.failing:
            return web.json_response({"fault": "SOAP Server fault: always the same"}, status=500)
        self.effects[key] += 1
        async with self._changed:
            self._changed.notify_all()
        return web.json_response({"ok": True})

    async def wait_for_effects(self, count: int, timeout: float = 30.0) -> Counter[str]:
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.effects) >= count)
        return self.effects
