"""What every adapter provides: a config model (the YAML surface) and a call.

An endpoint in config names its adapter; the adapter's `Config` model validates the rest of the
endpoint's keys, and the same model feeds `runner.py docs` and the JSON Schema, so the reference can
never drift from the code.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from engine.breaker import BreakerSettings
from engine.errors import RoutingError


class EndpointConfig(BaseModel):
    """Keys common to every endpoint; adapters subclass it with their own fields."""

    model_config = ConfigDict(extra="forbid")

    adapter: str = Field(description="Adapter name, e.g. http or nats.")
    description: str = Field("", description="What this endpoint is, for humans.")
    circuit_breaker: BreakerSettings | None = Field(
        default_factory=BreakerSettings,
        description="Shared by every flow and runner calling this endpoint; `null` turns it off.")
    max_concurrency: int | None = Field(
        None, ge=1, le=4096, description="Calls in flight to this endpoint at once, per runner, over all flows; "
        "a call waits for a slot within its own timeout, then fails as Throttled (so a fallback can answer).")
    idempotent: bool | dict[str, bool] = Field(
        True, description="Whether calling an operation twice has the effect of calling it once. `false` (the "
        "whole endpoint) or `{operation: false}` (operations as flows name them) declares creates that the "
        "target does not deduplicate (SAP ignores the Idempotency-Key header the hub sends): after a timeout "
        "or a connection cut once the request was sent, such a call is not resent blindly; the call step's "
        "`verify` decides, else the message goes to the DLQ as OutcomeUnknown. A refused connection (nothing "
        "sent) is retried as usual. Default: idempotent (the hub sends an Idempotency-Key with every HTTP and "
        "SOAP call; targets that honour it, or that key creates by a business key, are).",
        examples=[{"submit_switch": False}, False])

    def is_idempotent(self, operation: str | None) -> bool:
        """What config declares for `operation` (an operation the map does not name is idempotent)."""
        if isinstance(self.idempotent, bool):
            return self.idempotent
        return self.idempotent.get(operation or "", True)


class CallContext:
    """What a call may read besides the payload: headers to forward and the message identity."""

    __slots__ = ("headers", "msg_id", "correlation_id", "timeout")

    FORWARDED = ("ce-id", "ce-correlationid", "traceparent", "tracestate")

    def __init__(self, headers: dict[str, str], msg_id: str, correlation_id: str, timeout: float):
        self.headers = headers
        self.msg_id = msg_id
        self.correlation_id = correlation_id
        self.timeout = timeout

    def http_headers(self) -> dict[str, str]:
        """What an HTTP-based target sees of the message: trace and event ids, the correlation id,
        and the idempotency key (a replay keeps it), so its logs join ours and it can dedupe."""
        headers: dict[str, str] = {}
        for name in self.FORWARDED if self.headers else ():
            if value := self.headers.get(name):
                headers[name] = value
        if self.correlation_id:
            headers["X-Correlation-Id"] = self.correlation_id
        if self.msg_id:
            headers["Idempotency-Key"] = self.msg_id
        return headers


class Adapter:
    """One live endpoint. Subclasses set `name` and `Config`, and implement `call`.

    `call` raises only errors of engine.errors (adapters map protocol failures onto them), ends
    within `ctx.timeout` (the engine adds no timer of its own: one per call is enough), and
    returns the answer as JSON-like data, or None when the target answers with no body.
    """

    name: ClassVar[str]
    Config: ClassVar[type[EndpointConfig]]
    operations_doc: ClassVar[str] = ""
    limits_itself: ClassVar[bool] = False  # True: the adapter enforces `max_concurrency` (raising SlotsBusy)

    def __init__(self, endpoint: str, config: EndpointConfig, services: "Services") -> None:
        self.endpoint = endpoint
        self.config = config
        self.services = services

    def check_operation(self, operation: str | None) -> str | None:
        """Validation hook: return an error text when `operation` makes no sense for this endpoint."""
        return None

    def check_settings_for(self, operation: str | None) -> list[tuple[tuple[str | int, ...], str]]:
        """Validation hook: problems of this endpoint's own settings that show only for `operation` (a
        SOAP business-error rule its answer can never match), each as (key path under the endpoint's
        entry in config, reason); validation reports them at the config file's line."""
        return []

    async def start(self) -> None:
        """Open pools, load WSDLs, resolve secrets. Called once before any flow runs."""

    async def call(self, operation: str | None, payload: Any, ctx: CallContext) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        """Release pools and connections."""


class SourceOnlyAdapter(Adapter):
    """An endpoint that only an ingress source reads (a mailbox, a broker, a drop directory): every
    operation is refused, with `check_operation`'s text saying how to use it instead."""

    async def call(self, operation: str | None, payload: Any, ctx: CallContext) -> Any:
        raise RoutingError(self.check_operation(operation) or f"{self.name} endpoints cannot be called")


class Services:
    """Shared runtime handles adapters may use: the NATS connection, JetStream, the hub's config, the
    hub's clock (engine/clock.py: what every date an adapter or ingress decides on is read from, so a
    test or `demo --at` moves them with the hub), and `shared`, one dict per runner for things its
    ingresses share (the webhook HTTP server)."""

    def __init__(self, nc: Any = None, js: Any = None, config: Any = None, clock: Any = None) -> None:
        from engine.clock import SYSTEM

        self.nc = nc
        self.js = js
        self.config = config
        self.clock = clock or SYSTEM
        self.shared: dict[str, Any] = {}
