"""Load and validate the config and every flow file before anything runs (principle 5).

Checks, each reported as `file:line: path: message`: YAML syntax and duplicate keys, the models
(unknown keys, durations, rates, subjects), endpoints against their adapter's model, and the
cross-references: adapters, endpoints, operations, transforms, schemas, filters, stream coverage
of every consumed, gathered (`batch:` sources) and published subject, and two flows on one durable.
"""

from __future__ import annotations

import importlib
import os
import re
from datetime import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jmespath
import jmespath.exceptions
from pydantic import BaseModel, ValidationError

from engine.adapter import EndpointConfig
from engine.config import HubConfig
from engine.errors import ConfigError
from engine.outcomes import check_declared, check_verify
from engine.registry import load_adapters
from engine.sources import (INGRESS_STREAM, INGRESS_SUBJECT_PREFIX, SCHEDULE_STREAM, SCHEDULE_SUBJECT_PREFIX,
                            BatchSource)
from engine.spec import (CallStep, FilterStep, Flow, PublishStep, PullStep,
                         ReplyStep, StateStep, TransformStep, UntilStep, ValidateStep)
from engine.subjects import matches, pattern_covers, patterns_overlap, placeholders, render
from engine.yaml_lines import Loc, YamlProblem, describe, format_loc, issue, line_of, load_with_lines


@dataclass
class LoadedFlow:
    flow: Flow
    file: Path
    lines: dict[Loc, int]


@dataclass
class Project:
    """Everything `run` needs, already validated."""

    config: HubConfig
    config_file: Path | None
    endpoints: dict[str, EndpointConfig] = field(default_factory=dict)
    flows: list[LoadedFlow] = field(default_factory=list)
    config_lines: dict[Loc, int] = field(default_factory=dict)
    settings_checked: set[tuple[str, str | None]] = field(default_factory=set)  # (endpoint, operation) judged


def resolve_transform(ref: str) -> Callable[[Any], Any]:
    """`contracts.to_switch_request` → transforms.contracts.to_switch_request; LookupError says why."""
    module_name, _, func_name = ref.rpartition(".")
    if not module_name or not func_name:
        raise LookupError(f"transform {ref!r} must be module.function inside transforms/")
    try:
        module = importlib.import_module(f"transforms.{module_name}")
    except ModuleNotFoundError:
        raise LookupError(f"unknown transform {ref!r}: no module transforms/{module_name.replace('.', '/')}.py") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        known = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        raise LookupError(f"unknown transform {ref!r}: transforms.{module_name} has {', '.join(known) or 'no functions'}")
    return func


def resolve_schema(name: str) -> type[BaseModel]:
    from schemas import SCHEMAS

    if name not in SCHEMAS:
        raise LookupError(f"unknown schema {name!r}; known: {', '.join(sorted(SCHEMAS))}")
    return SCHEMAS[name]


def endpoint_candidates(template: str, names: list[str]) -> list[str]:
    """Endpoint names a `{field}` template can resolve to."""
    if not placeholders(template):
        return [template] if template in names else []
    rx = re.compile("^" + re.sub(r"\\\{[^}]*\\\}", "[^.]+", re.escape(template)) + "$")
    return [n for n in names if rx.match(n)]


_ENV_REF = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, loc: Loc, path: Path, lines: dict[Loc, int], problems: list[str]) -> Any:
    """`${VAR}` / `${VAR:-default}` in config strings (addresses, not secrets: those are SecretRefs)."""
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            found = os.environ.get(m.group(1))
            if found is None and m.group(2) is None:
                problems.append(issue(path, lines, loc, f"environment variable {m.group(1)} is not set "
                                      "(and no default given as ${VAR:-default})"))
                return ""
            return found if found is not None else m.group(2)
        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, loc + (k,), path, lines, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, loc + (i,), path, lines, problems) for i, v in enumerate(value)]
    return value


def load_config(path: Path | None) -> tuple[HubConfig, dict[str, EndpointConfig]]:
    """Validate the environment file and its endpoints; ConfigError lists every problem."""
    config, endpoints, _ = load_config_with_lines(path)
    return config, endpoints


def load_config_with_lines(path: Path | None) -> tuple[HubConfig, dict[str, EndpointConfig], dict[Loc, int]]:
    """`load_config`, plus the line of every key (for problems found later, e.g. against a flow's call)."""
    if path is None:
        return HubConfig(), {}, {}
    if not path.is_file():
        raise ConfigError([f"{path}: config file not found"])
    try:
        data, lines = load_with_lines(path)
    except YamlProblem as exc:
        raise ConfigError(exc.issues) from None
    data = {} if data is None else data
    problems: list[str] = []
    data = expand_env(data, (), path, lines, problems)
    if problems:
        raise ConfigError(problems)
    if not isinstance(data, dict):
        raise ConfigError([f"{path}:1: (top): expected a mapping of nats, streams, endpoints, dlq, logging"])
    try:
        config = HubConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe(path, lines, exc)) from None
    adapters = load_adapters()
    endpoints: dict[str, EndpointConfig] = {}
    for name, raw in config.endpoints.items():
        loc: Loc = ("endpoints", name)
        adapter = raw.get("adapter") if isinstance(raw, dict) else None
        if adapter not in adapters:
            problems.append(issue(path, lines, loc + ("adapter",),
                                  f"unknown adapter {adapter!r}; known: {', '.join(sorted(adapters))}"))
            continue
        try:
            endpoints[name] = adapters[adapter].Config.model_validate(raw)
        except ValidationError as exc:
            problems.extend(describe(path, lines, exc, loc))
            continue
        check_declared(name, endpoints[name], lambda sub, text, loc=loc: problems.append(  # engine/outcomes.py
            issue(path, lines, loc + sub, text)))
    for i, stream in enumerate(config.streams):
        for j, other in enumerate(config.streams[:i]):
            for s in stream.subjects:
                for o in other.subjects:
                    if patterns_overlap(s, o):
                        problems.append(issue(path, lines, ("streams", i, "subjects"),
                                              f"subject {s!r} overlaps {o!r} of stream {other.name} (streams may not overlap)"))
    if problems:
        raise ConfigError(problems)
    return config, endpoints, lines


def stream_for(config: HubConfig, subject: str, *, pattern: bool) -> str | None:
    """The stream capturing a subject (or, for a pattern, covering all of it)."""
    for stream in config.streams:
        for s in stream.subjects:
            if (pattern_covers(s, subject) if pattern else matches(s, subject)):
                return stream.name
    if subject.startswith("dlq."):
        return config.dlq.stream
    if subject.startswith(SCHEDULE_SUBJECT_PREFIX + "."):
        return SCHEDULE_STREAM
    if subject.startswith(INGRESS_SUBJECT_PREFIX + "."):
        return INGRESS_STREAM
    return None


def load_flow_file(path: Path) -> tuple[Flow | None, dict[Loc, int], list[str]]:
    try:
        data, lines = load_with_lines(path)
    except YamlProblem as exc:
        return None, {}, exc.issues
    if not isinstance(data, dict):
        return None, lines, [f"{path}:1: (top): a flow file is a mapping with name, source, steps"]
    try:
        return Flow.model_validate(data), lines, []
    except ValidationError as exc:
        return None, lines, describe(path, lines, exc)


def check_flow(lf: LoadedFlow, project: Project) -> list[str]:
    """Cross-reference checks of one structurally valid flow."""
    flow, file, lines = lf.flow, lf.file, lf.lines
    problems: list[str] = []
    config = project.config

    def bad(loc: Loc, message: str) -> None:
        problems.append(issue(file, lines, loc, message))

    def caller(loc: Loc) -> str:
        line = line_of(lines, loc)
        return f"{file}{f':{line}' if line else ''} {format_loc(loc)}"

    if flow.is_request:
        if not any(isinstance(s, ReplyStep) for s in flow.steps):
            bad(("steps",), "a request source needs a `reply` step, or the requester waits in vain")
        captured_by = stream_for(config, flow.source.request, pattern=False)  # type: ignore[union-attr]
        if captured_by is not None:
            bad(("source", "request"), f"stream {captured_by} captures {flow.source.request!r}: JetStream "  # type: ignore[union-attr]
                "would store each request and answer the requester itself before this flow can; keep "
                "request subjects out of streams")
    elif flow.ingress is not None:
        endpoint = flow.ingress.endpoint_name()
        kind = next(iter(type(flow.ingress).model_fields))
        if endpoint is not None and endpoint not in project.endpoints:
            bad(("source", kind, "endpoint"),
                f"unknown endpoint {endpoint!r}; config has: {', '.join(sorted(project.endpoints)) or 'none'}")
        elif endpoint is not None and project.endpoints[endpoint].adapter != kind:
            bad(("source", kind, "endpoint"), f"endpoint {endpoint!r} is a {project.endpoints[endpoint].adapter} "
                f"endpoint; a {kind} source needs an {kind} endpoint")
        if isinstance(flow.ingress, BatchSource) and stream_for(config, flow.ingress.batch.subject, pattern=True) is None:
            bad(("source", "batch", "subject"), f"no stream in config captures {flow.ingress.batch.subject!r}; "
                "the batches would gather nothing (the hub refuses to start the flow)")
    elif not flow.is_scheduled:
        subject = flow.source.subject  # type: ignore[union-attr]
        if stream_for(config, subject, pattern=True) is None:
            bad(("source", "subject"), f"no stream in config captures {subject!r}")
    if flow.alerts is not None and stream_for(config, f"ops.alert.{flow.name}", pattern=False) is None:
        bad(("alerts",), f"no stream in config captures ops.alert.{flow.name}; alerts would be lost")
    if flow.schema_:
        try:
            resolve_schema(flow.schema_)
        except LookupError as exc:
            bad(("schema",), str(exc))
    for i, step in enumerate(flow.steps):
        loc: Loc = ("steps", i)
        if isinstance(step, FilterStep):
            try:
                jmespath.compile(step.filter)
            except jmespath.exceptions.JMESPathError as exc:
                bad(loc + ("filter",), f"not a valid JMESPath expression: {str(exc).splitlines()[0]}")
        elif isinstance(step, ValidateStep):
            try:
                resolve_schema(step.validate_)
            except LookupError as exc:
                bad(loc + ("validate",), str(exc))
        elif isinstance(step, TransformStep):
            try:
                resolve_transform(step.transform)
            except LookupError as exc:
                bad(loc + ("transform",), str(exc))
        elif isinstance(step, CallStep):
            check_endpoint(step.call.endpoint, step.call.operation, loc + ("call",), project, bad,
                           problems.append, caller(loc + ("call",)))
            check_verify(step, loc + ("call",), project, endpoint_candidates(step.call.endpoint, list(project.endpoints)),
                         bad)  # engine/outcomes.py (issue 12)
            if step.call.fallback is not None and step.call.fallback.refresh_when:
                try:
                    jmespath.compile(step.call.fallback.refresh_when)
                except jmespath.exceptions.JMESPathError as exc:
                    bad(loc + ("call", "fallback", "refresh_when"),
                        f"not a valid JMESPath expression: {str(exc).splitlines()[0]}")
        elif isinstance(step, PublishStep):
            check_published(step.publish.subject, loc + ("publish", "subject"), config, bad)
        elif isinstance(step, UntilStep):
            if flow.is_request:
                bad(loc + ("until",), "`until` waits in JetStream; a request source has a requester waiting now")
            try:
                jmespath.compile(step.until.done)
            except jmespath.exceptions.JMESPathError as exc:
                bad(loc + ("until", "done"), f"not a valid JMESPath expression: {str(exc).splitlines()[0]}")
            if flow.alerts is None and step.until.deadline is not None and \
                    stream_for(config, f"ops.alert.{flow.name}", pattern=False) is None:
                bad(loc + ("until", "deadline"), f"no stream in config captures ops.alert.{flow.name}; "
                    "the deadline alert would be lost")
        elif isinstance(step, StateStep):
            try:
                resolve_transform(step.state.apply)
            except LookupError as exc:
                bad(loc + ("state", "apply"), str(exc))
        elif isinstance(step, PullStep):
            pull = step.pull
            check_endpoint(pull.endpoint, pull.operation, loc + ("pull",), project, bad,
                           problems.append, caller(loc + ("pull",)))
            check_published(pull.publish, loc + ("pull", "publish"), config, bad)
            for key in ("request", "page"):
                try:
                    func = resolve_transform(getattr(pull, key))
                except LookupError as exc:
                    bad(loc + ("pull", key), str(exc))
                    continue
                tick_model = getattr(func, "tick_model", None)  # the request transform says what a tick holds
                if key == "request" and tick_model is not None and flow.is_scheduled:
                    for i, entry in enumerate(flow.source.each):  # type: ignore[union-attr]
                        try:
                            tick_model.model_validate(entry)
                        except ValidationError as exc:
                            problems.extend(describe(file, lines, exc, ("source", "each", i)))
            try:
                datetime.fromisoformat(pull.start.replace("Z", "+00:00"))
            except ValueError:
                bad(loc + ("pull", "start"), f"expected an ISO time like 2025-01-01T00:00:00Z, got {pull.start!r}")
            if stream_for(config, f"ops.alert.{flow.name}", pattern=False) is None:
                bad(loc + ("pull",), f"no stream in config captures ops.alert.{flow.name}; "
                    "a reconciliation alert would be lost")
        elif isinstance(step, ReplyStep) and not flow.is_request:
            bad(loc + ("reply",), "`reply` needs a request source (source: {request: ...}); "
                "a stream message has nobody waiting for an answer")
    return problems


def check_endpoint(template: str, operation: str | None, loc: Loc, project: Project,
                   bad: Callable[[Loc, str], None], report: Callable[[str], None] | None = None,
                   caller: str = "") -> None:
    """The endpoint template names endpoints in config, and each knows the operation; the endpoint's own
    settings that depend on the operation (a SOAP business-error rule) are judged once per operation and
    reported at their line in the config file, naming the first flow step that calls it."""
    names = list(project.endpoints)
    found = endpoint_candidates(template, names)
    if not found:
        bad(loc + ("endpoint",), f"unknown endpoint {template!r}; config has: {', '.join(sorted(names)) or 'none'}")
    for name in found:
        endpoint = project.endpoints[name]
        adapter = load_adapters()[endpoint.adapter](name, endpoint, None)  # type: ignore[arg-type]
        why = adapter.check_operation(operation)
        if why:
            bad(loc + ("operation",), f"endpoint {name}: {why}")
            continue
        if (name, operation) in project.settings_checked:
            continue
        project.settings_checked.add((name, operation))
        for key, reason in adapter.check_settings_for(operation):
            text = f"{reason} (called by {caller})" if caller else reason
            if report is None or project.config_file is None:
                bad(loc + ("operation",), f"endpoint {name}: {'.'.join(map(str, key))}: {text}")
            else:
                report(issue(project.config_file, project.config_lines, ("endpoints", name, *key), text))


def check_published(subject: str, loc: Loc, config: HubConfig, bad: Callable[[Loc, str], None]) -> None:
    if stream_for(config, render(subject, _Anything()), pattern=False) is None:
        bad(loc, f"no stream in config captures {subject!r}; the publish could never be confirmed")


class _Anything(dict):
    """Fills any template placeholder with a token, to test stream coverage of a template."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> "_Anything":
        return _Anything()

    def __str__(self) -> str:
        return "x"


def load_project(config_path: Path | None, flow_paths: list[Path]) -> Project:
    """Config plus every flow file; raises ConfigError with every problem found, in file order."""
    config, endpoints, config_lines = load_config_with_lines(config_path)
    project = Project(config=config, config_file=config_path, endpoints=endpoints, config_lines=config_lines)
    problems: list[str] = []
    by_name: dict[str, LoadedFlow] = {}
    by_webhook_path: dict[str, LoadedFlow] = {}
    for path in flow_paths:
        flow, lines, issues = load_flow_file(path)
        problems.extend(issues)
        if flow is None:
            continue
        lf = LoadedFlow(flow, path, lines)
        if flow.name in by_name:
            first = by_name[flow.name]
            problems.append(issue(path, lines, ("name",), f"flow name {flow.name!r} is already used by "
                                  f"{first.file}: two flows cannot share one durable consumer"))
            continue
        by_name[flow.name] = lf
        webhook = getattr(flow.source, "webhook", None)
        if webhook is not None:
            other = by_webhook_path.setdefault(webhook.path, lf)
            if other is not lf:
                problems.append(issue(path, lines, ("source", "webhook", "path"), f"{webhook.path} is already "
                                      f"served by flow {other.flow.name} ({other.file}): one path, one flow"))
        problems.extend(check_flow(lf, project))
        project.flows.append(lf)
    if problems:
        raise ConfigError(problems)
    return project


def flow_files(directory: Path) -> list[Path]:
    """Flow files of a directory, in a stable order."""
    return sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
