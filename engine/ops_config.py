"""The `ops:` section of an environment file: where a runner serves /metrics, /healthz and /readyz,
whether it exports traces, and the subject `runner.py status` asks the runners on.

Kept apart from engine/config.py so the operations surface can grow without touching the rest of
the environment model; HubConfig only names it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.secrets import SecretRef
from engine.subjects import Subject, SubjectPattern


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpsHttpConfig(_Strict):
    """The runner's operations listener: /metrics (Prometheus), /healthz (liveness), /readyz (readiness).
    A port of its own, not the webhook ingress server's: probes and scrapes stay off the interface
    vendors post to, and every runner has one even when no flow takes webhooks."""

    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 for a pod or another host).")
    port: int | None = Field(None, ge=0, le=65535, description="Port; 0 picks a free one (tests); unset: no listener "
                             "(two runners on one host each need their own).", examples=[9464])


class TracingConfig(_Strict):
    """OpenTelemetry traces: a span per message per flow, children per step and per outside call,
    joined across flows and runners by each message's `traceparent`. Off until an OTLP endpoint is set."""

    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP traces URL of a collector; unset: no traces are recorded.",
        examples=["http://otel-collector:4318/v1/traces"])
    otlp_headers: dict[str, SecretRef] = Field(
        default_factory=dict, description="Headers sent with every export (an API key of a hosted collector).",
        examples=[{"x-honeycomb-team": {"env": "HONEYCOMB_KEY"}}])
    sample_ratio: float = Field(
        0.001, ge=0.0, le=1.0, description="Share of traces recorded, decided on the trace id so that every flow "
        "and runner keeps or drops a trace whole. A recorded message costs the runner some 100-300 µs of CPU "
        "(its spans made and OTLP-encoded; bench/ops_overhead.py), so bulk flows sample and business flows "
        "get a `flow_ratios` entry; 1.0 records every message.", examples=[0.001, 1.0])
    flow_ratios: dict[str, float] = Field(
        default_factory=dict, description="A flow's own ratio, by flow-name pattern (`*` any run of characters; "
        "the first match wins): trace every contract, sample the meter storm. The same trace-id bits are "
        "compared, so what a low-ratio flow records, every higher-ratio flow on the path records too.",
        examples=[{"contract-*": 1.0, "meter-*": 0.001}])
    service_name: str = Field("plu-hub", description="`service.name` of the spans.")

    @field_validator("flow_ratios")
    @classmethod
    def _ratios(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [f"{k}: {r}" for k, r in v.items() if not 0.0 <= r <= 1.0]
        if bad:
            raise ValueError(f"a ratio is between 0 and 1 ({', '.join(bad)})")
        return v


class OutsideSystem(_Strict):
    """One of PLU's systems as the landscape in `runner.py docs` draws it: which endpoints (and webhook
    paths) reach it and which subjects it publishes or reads on the bus itself."""

    description: str = Field("", description="What the system is, in a few words.")
    endpoints: list[str] = Field(default_factory=list, description="Endpoint names in config or webhook paths; "
                                 "`*` matches any run of characters.", examples=[["erp_*"], ["/webhooks/vendor3/*"]])
    subjects: list[SubjectPattern] = Field(default_factory=list, description="Subjects it publishes or consumes "
                                           "itself.", examples=[["crm.>"]])


class OpsConfig(_Strict):
    http: OpsHttpConfig = Field(default_factory=OpsHttpConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    status_subject: Subject = Field(
        "hub.admin.status", description="Core-NATS subject every runner answers `runner.py status` on "
        "(no stream may capture it).")
    systems: dict[str, OutsideSystem] = Field(
        default_factory=dict, description="PLU's systems for the landscape diagram (`runner.py docs`), by name.",
        examples=[{"CRM (Salesforce)": {"endpoints": ["crm_*"], "subjects": ["crm.>"]}}])
