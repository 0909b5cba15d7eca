"""Which subjects each flow consumes and publishes, which endpoints it calls and what feeds it from
outside: the one reading of the flows behind the AsyncAPI document and the landscape diagram."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.spec import CallStep, Flow, PublishStep, PullStep, UntilStep
from engine.sources import IngressSource, RequestSource, ScheduleSource, StreamSource
from engine.validation import Project, endpoint_candidates


@dataclass
class Published:
    subject: str          # may hold {field} placeholders
    how: str              # publish | item | dead-letter | alert | nats request | nats publish
    step: str = ""


@dataclass
class FlowSubjects:
    flow: Flow
    kind: str                        # subject | request | schedule | ingress
    consumes: str | None             # the subject its consumer (or request subscription) reads
    schema: str | None               # what the source payload must match
    publishes: list[Published] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)          # endpoint names it may call (templates expanded)
    outside: str | None = None       # ingress: the endpoint name, or the webhook path
    outside_kind: str | None = None  # imap | sftp | mqtt | webhook


def _alerts(flow: Flow) -> bool:
    """The flow may publish on ops.alert.<flow> (thresholds, an `until` deadline, a pull's findings)."""
    return flow.alerts is not None or any(
        (isinstance(s, UntilStep) and s.until.deadline is not None) or isinstance(s, PullStep) for s in flow.steps)


def read_flow(flow: Flow, project: Project) -> FlowSubjects:
    source: Any = flow.source
    if isinstance(source, RequestSource):
        kind, consumes = "request", source.request
    elif isinstance(source, ScheduleSource):
        kind, consumes = "schedule", flow.consumed_subject
    elif isinstance(source, IngressSource):
        kind, consumes = "ingress", flow.consumed_subject
    else:
        assert isinstance(source, StreamSource)
        kind, consumes = "subject", source.subject
    out = FlowSubjects(flow, kind, consumes, flow.schema_)
    names = list(project.endpoints)
    for i, step in enumerate(flow.steps):
        label = f"steps[{i}]"
        if isinstance(step, PublishStep):
            out.publishes.append(Published(step.publish.subject, "publish", label))
        elif isinstance(step, PullStep):
            out.publishes.append(Published(step.pull.publish, "item", label))
            out.calls += [n for n in endpoint_candidates(step.pull.endpoint, names) if n not in out.calls]
        elif isinstance(step, CallStep):
            out.calls += [n for n in endpoint_candidates(step.call.endpoint, names) if n not in out.calls]
    for name in out.calls:  # a `nats` endpoint is itself a subject the flow sends to
        cfg = project.endpoints.get(name)
        if cfg is not None and cfg.adapter == "nats":
            out.publishes.append(Published(getattr(cfg, "subject"), f"nats {getattr(cfg, 'mode', 'request')}",
                                           f"endpoint {name}"))
    if kind != "request" and flow.on_error.dead_letter:
        out.publishes.append(Published(f"dlq.{flow.name}", "dead-letter"))
    if _alerts(flow):
        out.publishes.append(Published(f"ops.alert.{flow.name}", "alert"))
    if isinstance(source, IngressSource):
        outside_kind = next(iter(type(source).model_fields))
        spec = getattr(source, outside_kind)
        out.outside_kind = outside_kind
        out.outside = source.endpoint_name() or getattr(spec, "path", None)
    return out


def read_project(project: Project) -> list[FlowSubjects]:
    return [read_flow(lf.flow, project) for lf in sorted(project.flows, key=lambda lf: lf.flow.name)]
