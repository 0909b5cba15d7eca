"""OpenTelemetry traces: a span per message per flow, children per step and per outside call.

The span of a message is the child of the `traceparent` it arrived with, and whatever the flow
publishes carries the span of its publish step as parent (engine/messages.py asks
engine/trace_context.CURRENT), so a contract's trace runs from the CRM's event through the ERP
call, every later status check, to the notification, across flows and runners.

Which traces are recorded is decided on the trace id (`sample_ratio`, the rule of OpenTelemetry's
TraceIdRatioBased: the low 64 bits against a bound), so every flow and runner keeps or drops the
same traces whole. A flow may have a higher ratio of its own (`flow_ratios`: every contract traced,
one meter reading in a hundred): the same bits are compared against a higher bound, so a trace a
low-ratio flow records is recorded by every higher-ratio flow too. An unrecorded message costs a
header read and a comparison: no span object. Spans are exported by OTLP/HTTP in a background
thread (BatchSpanProcessor); tests give an exporter.
"""

from __future__ import annotations

import fnmatch
import os
import random
import socket
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from engine.ops_config import TracingConfig
from engine.trace_context import trace_kv_buckets

KINDS = {"internal": SpanKind.INTERNAL, "client": SpanKind.CLIENT, "producer": SpanKind.PRODUCER,
         "consumer": SpanKind.CONSUMER, "server": SpanKind.SERVER}
_LOW64 = (1 << 64) - 1
_HEX = frozenset("0123456789abcdef")


def parse_traceparent(value: str | None) -> SpanContext | None:
    """A W3C traceparent (version 00) as a remote span context; None when absent or malformed."""
    if not value or len(value) != 55 or value[:3] != "00-" or value[35] != "-" or value[52] != "-" \
            or not _HEX.issuperset(value[3:35] + value[36:52] + value[53:]):
        return None
    trace_id, span_id = int(value[3:35], 16), int(value[36:52], 16)
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(value[53:], 16)))


class SpanRef:
    """One recording span and the traceparent that names it as a parent."""

    __slots__ = ("span", "traceparent", "tracer")

    def __init__(self, tracer: "HubTracer", span: Any) -> None:
        ctx = span.get_span_context()
        self.span = span
        self.tracer = tracer
        self.traceparent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"

    def child(self, name: str, kind: str = "internal", attributes: dict[str, Any] | None = None) -> "SpanRef":
        return self.tracer.start(name, kind, attributes, parent=self)

    def fail(self, exc: BaseException) -> None:
        error_class = getattr(exc, "error_class", None) or type(exc).__name__
        self.span.set_attribute("error.type", error_class)
        self.span.set_status(Status(StatusCode.ERROR, f"{error_class}: {exc}"[:300]))

    def end(self) -> None:
        self.span.end()


class HubTracer:
    """The tracer of one runner: decides which messages are recorded and starts their spans."""

    def __init__(self, provider: TracerProvider, sample_ratio: float = 1.0,
                 flow_ratios: dict[str, float] | None = None) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("plu-hub")
        self.sample_ratio = sample_ratio
        self.flow_ratios = dict(flow_ratios or {})
        self.bound, self.bound_hex = _bounds(sample_ratio)
        trace_kv_buckets()

    def ratio_for(self, flow: str) -> float:
        """The flow's own ratio (the first `flow_ratios` pattern that matches its name), else sample_ratio."""
        return next((r for p, r in self.flow_ratios.items() if fnmatch.fnmatchcase(flow, p)), self.sample_ratio)

    def for_flow(self, flow: str) -> "HubTracer":
        """This tracer deciding with the flow's ratio (spans go to the same provider)."""
        ratio = self.ratio_for(flow)
        if ratio == self.sample_ratio:
            return self
        other = HubTracer.__new__(HubTracer)
        other.__dict__.update(self.__dict__)
        other.sample_ratio = ratio
        other.bound, other.bound_hex = _bounds(ratio)
        return other

    @classmethod
    def from_config(cls, config: TracingConfig, runner_id: str) -> "HubTracer | None":
        """An OTLP-exporting tracer when config names an endpoint; None (tracing off) otherwise."""
        if not config.otlp_endpoint:
            return None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        headers = {name: ref.resolve() for name, ref in config.otlp_headers.items()}
        exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint, headers=headers or None)
        return cls.exporting(exporter, sample_ratio=config.sample_ratio, service_name=config.service_name,
                             runner_id=runner_id, flow_ratios=config.flow_ratios)

    @classmethod
    def exporting(cls, exporter: SpanExporter, *, sample_ratio: float = 1.0, service_name: str = "plu-hub",
                  runner_id: str = "", batch: bool = True, flow_ratios: dict[str, float] | None = None) -> "HubTracer":
        """A tracer sending to `exporter`: batched in a background thread, or (`batch=False`, tests)
        exported as each span ends."""
        resource = Resource.create({"service.name": service_name, "service.instance.id": runner_id or _runner_id(),
                                    "host.name": socket.gethostname()})
        provider = TracerProvider(sampler=ALWAYS_ON, resource=resource)  # the decision is ours (sampled())
        provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
        return cls(provider, sample_ratio, flow_ratios)

    def start(self, name: str, kind: str = "internal", attributes: dict[str, Any] | None = None, *,
              parent: SpanRef | None = None, remote: SpanContext | None = None) -> SpanRef:
        if parent is not None:
            context = trace.set_span_in_context(parent.span)
        elif remote is not None:
            context = trace.set_span_in_context(NonRecordingSpan(remote))
        else:
            context = None
        return SpanRef(self, self._tracer.start_span(name, context=context, kind=KINDS[kind], attributes=attributes))

    def message_span(self, flow: str, msg: Any, kind: str = "consumer") -> SpanRef | None:
        """The span of one delivery of `msg` to `flow`, or None when its trace is not recorded."""
        headers = msg.headers or {}
        value = headers.get("traceparent")
        remote = None
        if value is not None and len(value) == 55 and value[:3] == "00-" and value[35] == "-" == value[52]:
            # the cheap test first (text, no number parsed): most messages of a busy hub stop here
            if value[19:35] >= self.bound_hex or value[54] not in "13579bdf":
                return None
            remote = parse_traceparent(value)  # None when malformed: a trace of its own, decided below
        if remote is None and random.random() * (1 << 64) >= self.bound:
            return None
        attributes: dict[str, Any] = {  # few: each attribute is checked by the SDK, per span
            "messaging.system": "nats", "messaging.destination.name": msg.subject, "hub.flow": flow,
            "messaging.message.id": headers.get("ce-id") or headers.get("Nats-Msg-Id") or "",
            "hub.correlation_id": headers.get("ce-correlationid") or ""}
        try:
            attributes["hub.delivery"] = msg.metadata.num_delivered
        except Exception:  # a core-NATS request has no JetStream metadata
            pass
        return self.start(flow, kind, attributes, remote=remote)

    def shutdown(self) -> None:
        """Export what is buffered, then stop the exporter."""
        self.provider.shutdown()


def finish_message(span: SpanRef, outcome: str, error: BaseException | None) -> None:
    span.span.set_attribute("hub.outcome", outcome)
    if error is not None and outcome == "failed":
        span.fail(error)
    span.end()


def _bounds(ratio: float) -> tuple[int, str]:
    """The bound on the trace id's low 64 bits, and the same as 16 lower-case hex digits: W3C trace ids
    are lower-case hex, so comparing the text orders like the number ("g" sorts after every digit)."""
    bound = round(ratio * (1 << 64))
    return bound, "g" if bound >= 1 << 64 else f"{bound:016x}"


def _runner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
