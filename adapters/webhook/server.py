"""The runner's one HTTP server for every webhook flow (config `http_ingress`), kept in `Services.shared`.

aiohttp freezes its router when the server starts, so the server has one catch-all route and a dict of
path → handler that flows add to and remove from while it runs. The first flow to start opens the
listener; the last one to stop closes it. No access log: one line per request would cost more than
the request (MEASURED.md); refusals are logged by the ingress with their reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from engine.config import HttpIngressConfig
from engine.errors import ConfigError

log = structlog.get_logger("hub.webhook")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SHARED_KEY = "webhook_server"
_LOCK_KEY = "webhook_server_lock"


class IngressServer:
    """One aiohttp listener dispatching by exact path to the registered flows' handlers."""

    def __init__(self, config: HttpIngressConfig) -> None:
        self.config = config
        self.handlers: dict[str, Handler] = {}
        self._closing: set[str] = set()   # paths of flows that are stopping: 503, the sender comes back
        self.unknown_paths = 0
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "") else self.config.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=2 ** 31)  # each path enforces its own max_body while reading
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.config.host, self.config.port, reuse_address=True)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError([f"http_ingress: cannot listen on {self.config.host}:{self.config.port}: {exc}"]) from exc
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("webhook_server_started", host=self.config.host, port=self.port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info("webhook_server_stopped", port=self.port)

    def register(self, path: str, handler: Handler, flow: str) -> None:
        if path in self.handlers:
            raise ConfigError([f"flow {flow!r}: webhook path {path} is already served by another flow"])
        self._closing.discard(path)
        self.handlers[path] = handler

    def closing(self, path: str) -> None:
        """Stop dispatching to `path`; until it is released, requests get 503 with Retry-After."""
        if self.handlers.pop(path, None) is not None:
            self._closing.add(path)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        handler = self.handlers.get(request.path)
        if handler is None and request.path in self._closing:
            return web.json_response({"error": "stopping"}, status=503, headers={"Retry-After": "5"})
        if handler is None:
            self.unknown_paths += 1
            return web.json_response({"error": "no webhook at this path"}, status=404)
        return await handler(request)


async def acquire(services: Any, path: str, handler: Handler, flow: str) -> IngressServer:
    """The runner's server (started on first use) with `path` registered to `handler`."""
    shared: dict[str, Any] = services.shared
    lock = shared.setdefault(_LOCK_KEY, asyncio.Lock())
    async with lock:
        server: IngressServer | None = shared.get(SHARED_KEY)
        if server is None:
            config = getattr(services.config, "http_ingress", None) or HttpIngressConfig()
            server = IngressServer(config)
            await server.start()
            shared[SHARED_KEY] = server
        try:
            server.register(path, handler, flow)
        except ConfigError:
            if not server.handlers:  # we opened it for nothing
                del shared[SHARED_KEY]
                await server.stop()
            raise
        return server


async def release(services: Any, path: str) -> None:
    """Unregister `path`; the last path out stops the server."""
    shared: dict[str, Any] = services.shared
    lock = shared.setdefault(_LOCK_KEY, asyncio.Lock())
    async with lock:
        server: IngressServer | None = shared.get(SHARED_KEY)
        if server is None:
            return
        server.handlers.pop(path, None)
        server._closing.discard(path)
        if not server.handlers:
            del shared[SHARED_KEY]
            await server.stop()
