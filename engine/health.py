"""/healthz, /readyz and /metrics: what a Kubernetes probe, a load balancer and Prometheus ask a runner.

- /healthz (liveness): 200 while the process answers and its NATS connection is not closed for
  good. A broker outage is *not* a liveness failure: restarting every runner at once while NATS is
  away brings nothing back and costs the in-flight work. A runner whose connection closed for good
  exits by itself (principle 9); until it does, /healthz says 503.
- /readyz (readiness): 200 once streams are ensured and every flow of the project is consuming, while
  NATS is connected; 503 otherwise, with the reason per check. A circuit that is open pauses a
  flow's pulls on purpose: that flow still counts as consuming (its messages wait in JetStream).
- /metrics: the Prometheus exposition (OpenMetrics when the scraper asks for it).

Served on a listener of its own (`ops.http` in config), not on the webhook ingress server.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web
from prometheus_client.exposition import choose_encoder

from engine.errors import ConfigError
from engine.metrics import consuming

log = structlog.get_logger("hub.ops")


def nats_state(hub: Any) -> str:
    """The Hub's own account of its connection (engine/runtime.py `broker_state`)."""
    return hub.broker_state


def liveness(hub: Any) -> tuple[bool, dict[str, Any]]:
    state = nats_state(hub)
    return state != "closed", {"status": "ok" if state != "closed" else "failing", "nats": state}


def readiness(hub: Any) -> tuple[bool, dict[str, Any]]:
    """Ready, and the checks that say why (each `ok` or a reason)."""
    state = nats_state(hub)
    expected = [lf.flow.name for lf in hub.project.flows]
    missing = [name for name in expected if name not in hub.runners]
    idle = [name for name, runner in hub.runners.items() if not consuming(runner)]
    checks = {
        "nats": "ok" if state == "connected" else state,
        "streams": "ok" if hub.runners or not expected else "not ensured yet",
        "flows": "ok" if not missing and not idle else
                 "; ".join(filter(None, [f"not started: {', '.join(missing)}" if missing else "",
                                          f"not consuming: {', '.join(idle)}" if idle else ""])),
    }
    paused = sorted(name for name, r in hub.runners.items()
                    if getattr(getattr(r, "feed", None), "_window", None) == 0)
    ready = all(v == "ok" for v in checks.values())
    body: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": checks}
    if paused:
        body["paused_by_open_circuit"] = paused
    return ready, body


class OpsServer:
    """The runner's operations listener; `url` is known once started (port 0 picks one)."""

    def __init__(self, ops: Any, host: str, port: int) -> None:
        self.ops = ops
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)  # a probe every few s: no log line each
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError([f"ops.http: cannot listen on {self.host}:{self.port}: {exc}"]) from exc
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("ops_http_listening", url=self.url, paths=["/metrics", "/healthz", "/readyz"])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        ok, body = liveness(self.ops.hub)
        return web.json_response(body, status=200 if ok else 503)

    async def _readyz(self, request: web.Request) -> web.Response:
        ok, body = readiness(self.ops.hub)
        return web.json_response(body, status=200 if ok else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        await self.ops.store.refresh()
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self.ops.registry), headers={"Content-Type": content_type})
