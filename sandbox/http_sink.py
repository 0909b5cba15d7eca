"""A real HTTP server standing in for an HTTP target (Power Sales, a vendor API, a CRM callback).

Tests, the demo and the benchmarks point the `http` adapter at it: it records what arrives, answers
200 with a small JSON body, echoes on `/echo`, and can be told to fail, throttle or stall so the
error mapping and the retry policies meet real sockets, not mocks.

Run alone: `python -m sandbox.http_sink --port 8099 [--no-record]` (prints its URL, stops on Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict


@dataclass
class ReceivedRequest:
    """One request as the sink saw it; `body` is parsed JSON, else text, else None.

    `path` is decoded, `raw_path` is as sent (with its query); `headers` look up case-insensitively.
    """

    method: str
    path: str
    raw_path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    body: Any = None
    raw: bytes = field(default=b"", repr=False)


@dataclass
class _Failure:
    status: int
    retry_after: str | None
    body: str


class HttpSink:
    """An aiohttp web server on a free port that records requests and injects faults on demand."""

    def __init__(self, *, record: bool = True) -> None:
        self.record = record
        self.received: list[ReceivedRequest] = []
        self.count = 0
        self.applied: dict[str, int] = {}  # Idempotency-Key -> 2xx answers (an effect, then repeats)
        self.url = ""
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Condition()
        self._failures: list[_Failure] = []
        self._sticky: _Failure | None = None
        self._delay = 0.0
        self._waiters = 0
        self._wake = asyncio.Event()  # cuts injected delays short on reset() and stop()
        self._records: dict[str, dict[str, Any]] = {}  # path prefix -> {id: JSON answered to GET prefix/id}

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> "HttpSink":
        """Listen on host:port (0 = a free port, read back from the socket) and set `.url`."""
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/echo", self._echo)
        app.router.add_route("*", "/{tail:.*}", self._default)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the socket's real port, also when port=0
        self.url = f"http://{host}:{self.port}"
        return self

    async def stop(self) -> None:
        self._release_delayed()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "HttpSink":
        return await self.start() if self._runner is None else self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def serve(self, prefix: str, records: dict[str, Any]) -> None:
        """Answer `GET <prefix>/<id>` with records[id] (JSON), and 404 for an id it does not hold: a
        read-only resource such as the CRM's sites. Other paths answer as before."""
        self._records[prefix.rstrip("/")] = records

    # --- fault controls ----------------------------------------------------------------------

    def fail_next(
        self, n: int = 1, status: int = 503, retry_after: str | float | None = None,
        body: str = "sink: injected failure",
    ) -> None:
        """Answer the next `n` requests with `status` (and a Retry-After header when given)."""
        ra = None if retry_after is None else str(retry_after)
        self._failures.extend(_Failure(status, ra, body) for _ in range(n))

    def set_status(
        self, status: int, *, retry_after: str | float | None = None, body: str | None = None,
    ) -> None:
        """Answer every request with `status` until `reset()`."""
        text = body if body is not None else json.dumps({"ok": False, "status": status})
        self._sticky = _Failure(status, None if retry_after is None else str(retry_after), text)

    def set_delay(self, seconds: float) -> None:
        """Wait this long before answering each request (a slow or stalled target)."""
        self._delay = seconds

    def recover(self) -> None:
        """The target is healthy again: injected faults and delays end, records are kept."""
        self._release_delayed()
        self._failures.clear()
        self._sticky = None
        self._delay = 0.0

    def reset(self) -> None:
        """Forget injected faults and recorded requests; delayed answers go out at once."""
        self._release_delayed()
        self._failures.clear()
        self._sticky = None
        self._delay = 0.0
        self.received.clear()
        self.count = 0
        self.applied.clear()

    def _release_delayed(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    # --- observation -------------------------------------------------------------------------

    async def wait_for(self, count: int, timeout: float = 10) -> list[ReceivedRequest]:
        """Return once at least `count` requests have arrived; TimeoutError otherwise."""
        self._waiters += 1
        try:
            async with asyncio.timeout(timeout):
                async with self._arrived:
                    await self._arrived.wait_for(lambda: self.count >= count)
        finally:
            self._waiters -= 1
        return self.received

    # --- handlers ----------------------------------------------------------------------------

    async def _note(self, request: web.Request) -> ReceivedRequest | None:
        self.count += 1
        entry = None
        if self.record:
            raw = await request.read()
            entry = ReceivedRequest(
                method=request.method, path=request.path, raw_path=request.raw_path,
                query=dict(request.query), headers=CIMultiDict(request.headers), body=_parse(raw), raw=raw,
            )
            self.received.append(entry)
        if self._waiters:
            async with self._arrived:
                self._arrived.notify_all()
        return entry

    async def _answer_fault(self) -> web.Response | None:
        if self._delay:
            try:
                await asyncio.wait_for(self._wake.wait(), self._delay)
            except TimeoutError:
                pass
        fault = self._failures.pop(0) if self._failures else self._sticky
        if fault is None:
            return None
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
        ctype = "application/json" if fault.body[:1] in ("{", "[") else "text/plain"
        return web.Response(status=fault.status, text=fault.body, headers=headers, content_type=ctype)

    async def _default(self, request: web.Request) -> web.Response:
        if not self.record:
            await request.read()
        await self._note(request)
        fault = await self._answer_fault()
        if fault is not None:
            return fault
        prefix, _, ident = request.path.rpartition("/")
        if request.method == "GET" and prefix in self._records:
            record = self._records[prefix].get(ident)
            if record is None:
                return web.json_response({"error": f"{ident} not found"}, status=404)
            return web.json_response(record)
        await self._applied(request)
        return web.json_response({"ok": True, "received": self.count})

    async def _applied(self, request: web.Request) -> None:
        """As an idempotent target: the first success per key is the effect, later ones are repeats."""
        key = request.headers.get("Idempotency-Key")
        if key is not None:
            self.applied[key] = self.applied.get(key, 0) + 1
            async with self._arrived:
                self._arrived.notify_all()

    async def wait_for_effects(self, count: int, timeout: float = 30) -> dict[str, int]:
        """Return once `count` distinct Idempotency-Keys were answered 2xx; TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.applied) >= count)
        return self.applied

    async def _echo(self, request: web.Request) -> web.Response:
        entry = await self._note(request)
        raw = entry.raw if entry is not None else await request.read()
        fault = await self._answer_fault()
        if fault is not None:
            return fault
        await self._applied(request)
        return web.Response(body=raw, content_type=request.content_type or "application/json")


def _parse(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


async def _serve(host: str, port: int, record: bool) -> None:
    sink = await HttpSink(record=record).start(host, port)
    print(sink.url, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sink.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-record", action="store_true", help="count requests only")
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args.host, args.port, not args.no_record))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
