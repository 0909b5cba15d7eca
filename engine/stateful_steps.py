"""The steps that keep state between deliveries, as the YAML says them: `until` (wait for something
outside), `pull` (page through an endpoint with a checkpoint) and `state` (a record per business key).
Their runtime is engine/waiting.py, engine/paged_pull.py and engine/keyed_state.py."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from engine.durations import Duration
from engine.sources import _Strict
from engine.subjects import SubjectTemplate


class UntilSpec(_Strict):
    done: str = Field(description="JMESPath over the payload; truthy means the wait is over.",
                      examples=["status != 'PENDING'"])
    every: list[Duration] = Field(min_length=1, description="Waits between checks; the last one repeats.",
                                  examples=[["30s", "2m", "10m", "30m", "1h"]])
    deadline: Duration | None = Field(None, description="Past this age an alert event `deadline` fires once "
                                      "(and `resolved` when it ends); the wait goes on. Age: elapsed time on the "
                                      "hub's clock since the first check found it not done.", examples=["48h"])
    give_up: Duration = Field(7 * 86400.0, description="Past this age the message goes to the DLQ "
                              "(DeadlineExceeded), its last payload kept. Same age as `deadline`.", examples=["7d"])
    track: str | None = Field(None, description="Key of the pending record (`runner.py pending`), from the "
                              "payload; default: the message id.", examples=["{contract_id}:v{version}"])

    @model_validator(mode="after")
    def _order(self) -> "UntilSpec":
        if self.deadline is not None and self.deadline > self.give_up:
            raise ValueError("deadline cannot exceed give_up")
        return self


class UntilStep(_Strict):
    """Wait for something outside to finish (a 48 h tariff switch): while `done` is false the message
    goes back to JetStream and comes again after the next `every` wait; the steps before it run again
    (e.g. a status call), the steps after it run once it is done. State survives restarts, one runner
    holds a message at a time (no parallel polls), and each wait is visible as a pending record."""

    until: UntilSpec


class PullSpec(_Strict):
    endpoint: str = Field(description="Endpoint name from config; `{field}` placeholders allowed.",
                          examples=["erp_{country}"])
    operation: str | None = Field(None, description="Adapter operation that returns one page.",
                                  examples=["list_invoices"])
    timeout: Duration | None = Field(None, description="Per-page timeout; default: the endpoint's.")
    request: str = Field(description="Transform building a page request from {…payload, since, cursor, "
                         "page_size}.", examples=["erp_soap.invoices_request"])
    page: str = Field(description="Transform reading an answer ({…, answer}) into {items, next, total}.",
                      examples=["erp_soap.invoices_page"])
    publish: SubjectTemplate = Field(description="Subject each item is published on (`{field}` from the item).",
                                     examples=["erp.invoice.updated"])
    item_id: str = Field(description="Template of an item's stable identity: its message id, so a page "
                         "published again after a crash is dropped as a duplicate.",
                         examples=["{invoice_id}:{changed_at}"])
    checkpoint: str = Field(description="Key of the watermark and progress (KV hub_checkpoints), from the "
                            "payload.", examples=["invoices:{country}"])
    watermark: str = Field(description="Item field (ISO time) whose highest value is the next run's `since`.",
                           examples=["changed_at"])
    start: str = Field("1970-01-01T00:00:00Z", description="`since` of the very first run (ISO time).",
                       examples=["2025-01-01T00:00:00Z"])
    page_size: int = Field(100, ge=1, le=10_000, description="Items asked for per page.")
    max_pages: int = Field(100_000, ge=1, description="Stop a run that pages on past this (a cursor loop).")
    retention: Duration | None = Field(
        None, description="How far back the endpoint keeps items. A new run whose `since` is older than now - "
        "retention starts at that edge instead of being refused: alert `retention` names the lost span once and "
        "the reconciliation record carries `gap: {from, until}`; on a scheduled flow, alert `retention_risk` "
        "fires when the next slot's run would miss items. `now` is the tick's slot time (Hub-Scheduled-For) "
        "when it is one, else the hub's clock. Elapsed time (88d is 88 x 24 h): set it a little under the "
        "endpoint's own, counting its shortest months and a DST hour.", examples=["88d"])


class PullStep(_Strict):
    """Page through an endpoint (since the last watermark), publish every item, checkpoint after each
    page's publishes are confirmed; a crash resumes at the next page. The payload becomes the run's
    reconciliation record; an ERP-reported total that differs from the count raises an alert."""

    pull: PullSpec


class StateSpec(_Strict):
    bucket: str = Field(pattern=r"^[a-z0-9_]{1,40}$", description="Name of the KV bucket (hub_state_<bucket>).",
                        examples=["be_requests"])
    key: str = Field(description="Template of the record's key from the payload.", examples=["{token}"])
    apply: str = Field(description="Pure transform: {state, message} -> {state, payload}.",
                       examples=["be_erp.apply_reply"])
    save: Literal["at_ack", "now"] = Field("at_ack", description="Write the record once the outputs are "
                                           "confirmed (at_ack), or before the next step (now).")
    keep: Duration | None = Field(None, description="Records expire after this long without a change.",
                                  examples=["30d"])


class StateStep(_Strict):
    """Keep a record per business key (a pending request, a site's monthly totals) in KV, changed by
    a pure function that also decides what the flow goes on with. The record is written
    compare-and-set, so one key's messages never overwrite each other's changes."""

    state: StateSpec
