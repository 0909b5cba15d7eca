"""Environment configuration (config/*.yaml): where NATS is, which streams exist, named endpoints.

Flows name endpoints; config says what they are. Each endpoint's keys are validated by its
adapter's own Config model (engine/validation.py), so this file keeps them as raw mappings.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.durations import Duration
from engine.ops_config import OpsConfig
from engine.secrets import SecretRef
from engine.subjects import SubjectPattern


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmbeddedNatsConfig(_Strict):
    data_dir: str = Field(".hub/nats", description="JetStream store of the embedded server (kept across runs).")
    port: int = Field(-1, description="Client port; -1 picks a free one.")
    monitor_port: int = Field(-1, description="Monitoring port (/healthz); -1 picks a free one.")


class NatsConfig(_Strict):
    urls: list[str] = Field(default_factory=list,
                            description="Servers to connect to (list every node of a cluster: the client "
                            "reconnects to another when one fails); empty starts an embedded nats-server.",
                            examples=[["nats://10.0.0.5:4222", "nats://10.0.0.6:4222", "nats://10.0.0.7:4222"]])
    replicas: int | Literal["auto"] = Field(
        "auto", description="Copies JetStream keeps of each stream without its own `replicas`, of the hub's "
        "own streams (DLQ, schedule ticks, ingress, advisories), KV buckets and Object Stores. `auto`: 3 "
        "when the server is part of a cluster (run three or more JetStream nodes), else 1. The hub raises an existing stream or bucket to "
        "this and never lowers one an operator set higher.", examples=[3])
    ping_interval: Duration = Field(1.0, description="How often the client pings its server. A frozen or "
                                    "partitioned server (TCP still open, nothing answered) is left for "
                                    "another node after `max_outstanding_pings` unanswered pings: within "
                                    "ping_interval x (max_outstanding_pings + 1), 3 s by default, well inside "
                                    "a flow's ack_wait, so what the runner holds is not given to another meanwhile.")
    max_outstanding_pings: int = Field(2, ge=1, le=10, description="Unanswered pings before the connection "
                                       "counts as stale and the client reconnects elsewhere.")
    user: str | None = None
    password: SecretRef | None = None
    token: SecretRef | None = None
    creds_file: str | None = Field(None, description="NATS credentials file (JWT + nkey).")
    embedded: EmbeddedNatsConfig = Field(default_factory=EmbeddedNatsConfig)
    publish_timeout: Duration = Field(10.0, description="How long a publish may wait for its ack; longer "
                                      "than a leader election (~5 s) so failovers are not errors.")


class StreamConfig(_Strict):
    name: str = Field(description="Stream name (upper-case by convention).", examples=["CRM"])
    subjects: list[SubjectPattern] = Field(min_length=1, examples=[["crm.>"]])
    retention: Literal["limits", "interest", "workqueue"] = "limits"
    storage: Literal["file", "memory"] = "file"
    replicas: int | None = Field(None, ge=1, le=5, description="Copies in a cluster (3 survives one node's "
                                 "loss); default `nats.replicas`. Never lowered below what the stream has.")
    max_age: Duration | None = Field(None, description="Drop messages older than this.", examples=["7d"])
    max_bytes: int | None = Field(None, ge=1)
    duplicate_window: Duration = Field(120.0, description="Nats-Msg-Id de-duplication window.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or any(c in v for c in " .*>/\\"):
            raise ValueError(f"stream name {v!r} may not contain spaces, '.', '*', '>', '/'")
        return v



class DlqConfig(_Strict):
    stream: str = Field("DLQ", description="Stream that keeps dead-letter records.")
    max_age: Duration = Field(14 * 86400.0, description="How long records stay for ops to act.")


class StateConfig(_Strict):
    idempotency_keep: Duration = Field(14 * 86400.0, description="How long done-effect keys are remembered "
                                       "(longer than any redelivery schedule and DLQ retention).")


class LoggingConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class HttpIngressConfig(_Strict):
    """The runner's HTTP server for `webhook` sources (one server, a route per flow)."""

    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 for all interfaces).")
    port: int = Field(8080, ge=0, le=65535, description="Port; 0 picks a free one (tests).")


class HubConfig(_Strict):
    nats: NatsConfig = Field(default_factory=NatsConfig)
    streams: list[StreamConfig] = Field(default_factory=list)
    endpoints: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Named endpoints: `adapter:` plus that adapter's keys.")
    http_ingress: HttpIngressConfig = Field(default_factory=HttpIngressConfig)
    dlq: DlqConfig = Field(default_factory=DlqConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    ops: OpsConfig = Field(default_factory=OpsConfig)
