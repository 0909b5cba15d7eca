"""Pydantic models of a flow YAML file: the integration engineers' surface.

Every field has a description and an example; `runner.py docs` and the JSON Schema are generated
from these models, so the reference cannot drift from what the loader accepts.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Union

from pydantic import BaseModel, Discriminator, Field, Tag, field_validator, model_validator

from engine.durations import Duration, Rate
from engine.sources import (INGRESS_SUBJECT_PREFIX, SCHEDULE_STREAM, SCHEDULE_SUBJECT_PREFIX,  # noqa: F401
                            IngressSource, RequestSource, ScheduleSource, ScheduleSpec, Source, StreamSource, _Strict)
from engine.subjects import SubjectTemplate
from engine.stateful_steps import PullSpec, PullStep, StateSpec, StateStep, UntilSpec, UntilStep  # noqa: F401

_FLOW_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


# --- steps -------------------------------------------------------------------------------------


class FilterStep(_Strict):
    """Keep the message only when a JMESPath expression over the payload is truthy."""

    filter: str = Field(description="JMESPath expression; string literals in single quotes.",
                        examples=["country != 'BE'", "contains(['DE','FR'], country)"])


class ValidateStep(_Strict):
    """Check the payload against a model in schemas/; a mismatch is a permanent error."""

    validate_: str = Field(alias="validate", description="Schema name from schemas/.",
                           examples=["ContractSigned"])


class TransformStep(_Strict):
    """Replace the payload by a pure function of it: `module.function` in transforms/."""

    transform: str = Field(description="Dotted reference inside transforms/.",
                           examples=["contracts.to_switch_request"])


class Fallback(_Strict):
    """Every good answer is remembered (KV) under `key`; when the call fails transiently (down, slow,
    circuit open) the last one is used instead, with `stale: true` and `cached_at` added. With
    `fresh`, a remembered answer younger than that is used without calling at all."""

    key: str = Field(description="Cache key template from the payload.", examples=["{country}:{postcode}:{households}"])
    fresh: Duration | None = Field(None, description="Answer from the cache without calling while the last answer "
                                   "is younger than this (marked `cached: true`).", examples=["15m"])
    refresh_when: str | None = Field(None, description="JMESPath over the payload: when truthy, call even if a fresh "
                                     "answer is cached (a confirmation must see today's price).",
                                     examples=["confirm"])


class VerifySpec(_Strict):
    """How to find out whether a non-idempotent call took effect when its answer was lost (a timeout or a
    connection cut after the request went out): a call to another operation of the same endpoint (a
    status or search by business key) whose answer says done, not done, or neither. Done: its answer
    stands in for the lost one and the flow goes on, nothing is sent again. Not done: the call is sent
    again (the in-process retries, then the redeliver schedule). Neither, or the verify call fails: the
    message waits and verifies again on the redeliver schedule (VerifyPending), and is dead-lettered as
    OutcomeUnknown when the schedule is spent."""

    operation: str = Field(description="Operation of the same endpoint that looks the effect up.",
                           examples=["switch_status", "find_switch"])
    input: str | None = Field(None, description="Send this payload key's value (e.g. a lookup a transform built "
                              "next to the request); default: what the call itself sends.",
                              examples=["erp_lookup"])
    done: str = Field(description="JMESPath over the verify answer; truthy means the call took effect.",
                      examples=["found", "status != 'UNKNOWN'"])
    not_done: str = Field(description="JMESPath over the verify answer; truthy means it did not (safe to send "
                          "again). Neither truthy: still unknown.", examples=["!found", "status == 'UNKNOWN'"])
    timeout: Duration | None = Field(None, description="Timeout of the verify call; default: the call's.",
                                     examples=["5s"])


class CallSpec(_Strict):
    endpoint: str = Field(description="Endpoint name from config; `{field}` placeholders allowed.",
                          examples=["erp_{country}", "crm_readings"])
    operation: str | None = Field(None, description="Adapter operation (SOAP operation, HTTP operation name).")
    timeout: Duration | None = Field(None, description="Per-call timeout; default: the endpoint's.",
                                     examples=["5s"])
    input: str | None = Field(
        None, description="Send only this payload key's value (e.g. a request a transform built) "
        "instead of the whole payload.", examples=["erp_request"])
    into: str | None = Field(
        None, description="Store the answer under this payload key instead of replacing the payload.",
        examples=["erp_answer"])
    fallback: "Fallback | None" = Field(
        None, description="When the endpoint is down, answer with its last answer for the same key, "
        "marked possibly stale.")
    capture_errors: bool = Field(False, description="A permanent failure (a refusal) becomes data under `into` "
                                 "(`{error: {class, message}}`) and the flow goes on; transient ones still retry.")
    verify: "VerifySpec | None" = Field(
        None, description="For an operation the endpoint declares `idempotent: false` (a create): what decides, "
        "after a timeout or a cut connection, whether it took effect. Without it such a call is never sent "
        "again blindly: the message goes to the DLQ as OutcomeUnknown for ops to reconcile.",
        examples=[{"operation": "find_switch", "input": "erp_lookup", "done": "found", "not_done": "!found"}])

    @model_validator(mode="after")
    def _capture_needs_into(self) -> "CallSpec":
        if self.capture_errors and not self.into:
            raise ValueError("capture_errors needs `into`: the key the answer or the error goes to")
        return self


class CallStep(_Strict):
    """Call an endpoint through its adapter; the answer becomes the payload (or goes `into` a key)."""

    call: CallSpec


class PublishSpec(_Strict):
    subject: SubjectTemplate = Field(description="Subject captured by a stream; `{field}` placeholders allowed.",
                                     examples=["erp.contract.switch-requested"])
    id: str | None = Field(None, description="Template of a business identity for the message id: the same fact "
                           "reached twice (a reply mailed twice) is stored once. Default: derived from the input's id.",
                           examples=["{token}:{record}:{status}"])
    each: bool = Field(False, description="The payload is a list: publish every element (an empty list publishes "
                       "nothing).")


class PublishStep(_Strict):
    """Publish the current payload (JetStream, confirmed before the source is acked)."""

    publish: PublishSpec

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("publish"), str):
            return {**data, "publish": {"subject": data["publish"]}}
        return data


class ReplyStep(_Strict):
    """Answer the requester with the current payload (request sources only)."""

    reply: dict[str, Any] | None = Field(None, description="`reply` alone, or `reply: {}`.")

    @model_validator(mode="before")
    @classmethod
    def _bare(cls, data: Any) -> Any:
        return {"reply": None} if data == "reply" else data


STEP_KINDS = ("filter", "validate", "transform", "call", "publish", "reply", "until", "pull", "state")


def _step_kind(v: Any) -> str | None:
    if v == "reply":
        return "reply"
    if isinstance(v, dict):
        kinds = [k for k in STEP_KINDS if k in v]
        return kinds[0] if len(kinds) == 1 else None
    for kind, model in _STEP_MODELS.items():
        if isinstance(v, model):
            return kind
    return None


_STEP_MODELS: dict[str, type[BaseModel]] = {
    "filter": FilterStep, "validate": ValidateStep, "transform": TransformStep,
    "call": CallStep, "publish": PublishStep, "reply": ReplyStep, "until": UntilStep, "pull": PullStep,
    "state": StateStep,
}

Step = Annotated[
    Union[tuple(Annotated[m, Tag(k)] for k, m in _STEP_MODELS.items())],  # type: ignore[misc]
    Discriminator(_step_kind, custom_error_type="step_kind",
                  custom_error_message="a step is exactly one of: " + ", ".join(STEP_KINDS)),
]


# --- policies ----------------------------------------------------------------------------------


class OnError(_Strict):
    """What happens when a step fails. Transient errors retry, then redeliver; permanent ones and
    exhausted schedules go to the dead-letter queue. Every failed attempt is a log line and an entry in
    the message's history; a DLQ record says its deliveries and the calls the target received.

    Outages use none of this schedule. An endpoint whose circuit is open: the message is parked in the
    runner and runs again as soon as the circuit lets calls through. The hub's own broker restarting,
    electing a leader or out of reach (BrokerUnavailable): never dead-lettered; once the message's effect
    happened, its outputs, state records and done mark are retried until the broker confirms them,
    and only then is the source acked, so a lost ack never repeats an effect."""

    retry: list[Duration] = Field(default_factory=list, description="In-process waits between attempts of a call.",
                                  examples=[["200ms", "1s"]])
    redeliver: list[Duration] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0],
        description="Then JetStream redelivers after these delays (survives restarts, holds no worker).",
        examples=[["1m", "5m", "30m", "2h"]])
    dead_letter: bool = Field(True, description="Send permanent failures and exhausted schedules to dlq.<flow>.")
    jitter: float = Field(0.1, ge=0, le=1, description="Each wait varies by up to this fraction, so retries "
                          "of many messages do not arrive in step; 0 turns it off.")


class Idempotency(_Strict):
    """A flow's effects happen once per key: a redelivery or a DLQ replay of a message whose effect
    is done is skipped and logged. On by default for flows with steps that do I/O (`call`, `state`,
    `until`, `pull`); a flow whose state function is idempotent itself may turn it off (two KV
    round trips a message). Two messages with one key never run at once, in one runner or across
    runners: the second waits for the first to settle, then finds its mark. A claim names its holder
    (runner and message) and is refreshed with the message's in-progress acks, so even a redelivery of
    the same message to another runner waits while the holder lives; a runner that died holding a key
    frees it about an ack_wait after its last sign of life (engine/idempotency.py)."""

    key: str | None = Field(
        None, description="Business key template from the payload; default: the message's "
        "Hub-Idempotency-Key header (kept by replays), else its id.", examples=["{contract_id}:v{version}"])
    enabled: bool = Field(True, description="false turns the check off (the target is idempotent itself).")


class Alerts(_Strict):
    """Thresholds that raise an alert event on `ops.alert.<flow>` (and a log line) when crossed, and
    a `resolved` event when the flow is back under them."""

    lag: Duration | None = Field(None, description="Oldest message waiting longer than this.", examples=["30m"])
    pending: int | None = Field(None, ge=1, description="More messages than this waiting in the stream.")
    dead_letters: int | None = Field(None, ge=1, description="At least this many records in dlq.<flow>.")
    latency: Duration | None = Field(None, description="Average call latency over the last check interval.",
                                     examples=["500ms"])
    every: Duration = Field(30.0, description="How often the thresholds are checked.")


class Limits(_Strict):
    """Bounds that keep a backlog from overrunning a target or the runner's memory."""

    rate: Rate | None = Field(None, description="Most messages per second the flow starts, and calls it retries, per runner (N "
                             "runners: up to N times it).", examples=["50/s"])
    concurrency: int = Field(16, ge=1, le=1024, description="Messages whose steps run at once (calls).")
    batch: int = Field(256, ge=1, le=4096, description="Messages pulled per request and acked per batch.")
    max_in_flight: int = Field(2048, ge=1, le=100_000,
                               description="Unacked messages held by this flow (JetStream max_ack_pending).")

    @model_validator(mode="after")
    def _batch_fits(self) -> "Limits":
        if self.batch > self.max_in_flight:
            raise ValueError("batch cannot exceed max_in_flight")
        return self


class Flow(_Strict):
    """One integration: a source, steps, and the policies around them."""

    name: str = Field(description="Unique flow name; also the durable consumer's name.",
                      examples=["contract-switch-soap"])
    description: str = Field("", description="What the flow is for, in a sentence.")
    source: Source
    schema_: str | None = Field(None, alias="schema",
                                description="Schema the source payload must match (checked first).",
                                examples=["ContractSigned"])
    steps: list[Step] = Field(min_length=1)
    on_error: OnError = Field(default_factory=OnError)
    limits: Limits = Field(default_factory=Limits)
    idempotency: Idempotency = Field(default_factory=Idempotency)
    alerts: Alerts | None = None
    ack_wait: Duration = Field(8.0, description="How long JetStream waits for an ack or a sign of life before "
                               "giving a message to another runner. A live runner keeps what it holds (in-progress "
                               "acks every quarter of it, at once after a reconnect), so this is what a dead "
                               "runner's messages wait (docs/deploy.md).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _FLOW_NAME.match(v):
            raise ValueError("a flow name is lower-case letters, digits, '-' or '_' (at most 63)")
        return v

    @property
    def is_request(self) -> bool:
        return isinstance(self.source, RequestSource)

    @property
    def is_scheduled(self) -> bool:
        return isinstance(self.source, ScheduleSource)

    @property
    def ingress(self) -> "IngressSource | None":
        """The source that lands outside messages in JetStream first (IMAP, …), or None."""
        return self.source if isinstance(self.source, IngressSource) else None

    @property
    def consumed_subject(self) -> str | None:
        """The JetStream subject the flow's durable consumer reads (None for request sources)."""
        if isinstance(self.source, StreamSource):
            return self.source.subject
        if isinstance(self.source, ScheduleSource):
            return f"{SCHEDULE_SUBJECT_PREFIX}.{self.name}"
        if isinstance(self.source, IngressSource):
            return f"{INGRESS_SUBJECT_PREFIX}.{self.name}"
        return None
