"""`nats` endpoints: request/reply to another service, or a confirmed JetStream publish, as a
`call` step. Use it when the target is itself on the bus (another hub service, a CRM bridge). The
request or message carries the correlation id, the event id and the W3C trace context, so the other
side's logs and spans join the caller's."""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

import nats.errors
from pydantic import Field

from engine.adapter import Adapter, CallContext, EndpointConfig
from engine.durations import Duration
from engine.errors import PublishFailed, RoutingError, TargetRejected, TargetTimeout, TargetUnavailable
from engine.messages import CE_CORRELATION, MSG_ID, TRACEPARENT, encode
from engine.registry import register
from engine.subjects import SubjectTemplate, render

TRACESTATE = "tracestate"


class NatsEndpointConfig(EndpointConfig):
    mode: Literal["request", "publish"] = Field(
        "request", description="request: wait for a reply (core NATS); publish: JetStream publish, confirmed.")
    subject: SubjectTemplate = Field(description="Subject; `{field}` placeholders are filled from the payload.",
                                     examples=["powersales.quote.request", "crm.bridge.reading"])
    timeout: Duration = Field(5.0, description="How long to wait for the reply or the publish ack.")


def trace_headers(ctx: CallContext) -> dict[str, str]:
    """The W3C trace context the call carries (`traceparent`: the call's span when the message is
    traced, engine/probes.py; else the message's own), so the service or flow on the other side of
    the request or publish continues the trace, as an HTTP target does (CallContext.http_headers)."""
    return {name: value for name in (TRACEPARENT, TRACESTATE) if (value := (ctx.headers or {}).get(name))}


@register
class NatsAdapter(Adapter):
    name: ClassVar[str] = "nats"
    Config: ClassVar[type[EndpointConfig]] = NatsEndpointConfig
    config: NatsEndpointConfig

    def check_operation(self, operation: str | None) -> str | None:
        if operation is not None:
            return "nats endpoints have no operations; put the subject in the endpoint"
        return None

    async def call(self, operation: str | None, payload: Any, ctx: CallContext) -> Any:
        try:
            subject = render(self.config.subject, payload)
        except KeyError as exc:
            raise RoutingError(f"subject {self.config.subject!r} needs payload field {exc}") from None
        headers = {CE_CORRELATION: ctx.correlation_id, "ce-id": ctx.msg_id, **trace_headers(ctx)}
        data = encode(payload)
        if self.config.mode == "publish":
            headers[MSG_ID] = f"{ctx.msg_id}:{subject}"
            try:
                await self.services.js.publish(subject, data, headers=headers, timeout=ctx.timeout)
            except Exception as exc:
                raise PublishFailed(f"publish to {subject} not confirmed: {exc!r}") from exc
            return None
        try:
            reply = await self.services.nc.request(subject, data, timeout=ctx.timeout, headers=headers)
        except nats.errors.NoRespondersError:
            raise TargetUnavailable(f"no service answers on {subject}") from None
        except nats.errors.TimeoutError:
            raise TargetTimeout(f"no reply on {subject} within {ctx.timeout}s") from None
        try:
            answer = json.loads(reply.data) if reply.data else None
        except ValueError:
            return reply.data.decode("utf-8", "replace")
        if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
            err = answer["error"]
            cls = TargetUnavailable if err.get("transient") else TargetRejected
            raise cls(f"{subject}: {err.get('class', 'error')}: {err.get('message', '')}")
        return answer
