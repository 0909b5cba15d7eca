"""The landscape as a Mermaid diagram: PLU's systems, the endpoints and webhook paths that reach them,
the flows, and the subjects between them. Generated from config (`ops.systems`, `endpoints`) and
flows/, so it is as current as they are; the hub's own subjects (dlq.*, ops.alert.*, schedule ticks,
ingress landings) are left out as noise.
"""

from __future__ import annotations

import fnmatch
import re
from engine.sources import INGRESS_SUBJECT_PREFIX, SCHEDULE_SUBJECT_PREFIX
from engine.subject_map import read_project
from engine.subjects import matches, pattern_covers, placeholders
from engine.validation import Project

_LANDINGS = (SCHEDULE_SUBJECT_PREFIX + ".", INGRESS_SUBJECT_PREFIX + ".")  # drawn as the source itself
_OWN = ("dlq.", "ops.alert.", *_LANDINGS)


def _id(prefix: str, name: str) -> str:
    return prefix + re.sub(r"[^A-Za-z0-9]", "_", name)


def _label(text: str) -> str:
    return text.replace('"', "#quot;")


def _as_pattern(template: str) -> str:
    """The subjects a template can render to: `*` per placeholder, `>` for a last one (a value may hold dots)."""
    pattern = re.sub(r"\{[^}]*\}$", ">", template)
    return re.sub(r"\{[^}]*\}", "*", pattern)


def landscape(project: Project) -> str:
    """Mermaid `flowchart LR` text (without the fence)."""
    flows = read_project(project)
    systems = project.config.ops.systems
    subjects: set[str] = set()
    edges: list[str] = []
    outside: dict[str, str] = {}  # node id -> label, for webhook paths and source endpoints
    read = {fs.consumes for fs in flows if fs.consumes}  # an alert a flow reacts to belongs in the picture
    for fs in flows:
        fid = _id("fl_", fs.flow.name)
        if fs.consumes and not fs.consumes.startswith(_LANDINGS):
            subjects.add(fs.consumes)
            edges.append(f"  {_id('su_', fs.consumes)} --> {fid}")
        if fs.outside:
            node = _id("ep_", fs.outside)
            if fs.outside not in project.endpoints:
                outside[node] = f"{fs.outside_kind} {fs.outside}"
            edges.append(f"  {node} -->|{fs.outside_kind}| {fid}")
        for name in fs.calls:
            edges.append(f"  {fid} -->|call| {_id('ep_', name)}")
        for pub in fs.publishes:
            if pub.subject.startswith(_OWN) and pub.subject not in read:
                continue
            subjects.add(pub.subject)
            edges.append(f"  {fid} --> {_id('su_', pub.subject)}")
    # a template (erp.contract.{outcome}) leads to the concrete subjects flows read
    for template in sorted(s for s in subjects if placeholders(s)):
        for concrete in sorted(s for s in subjects if not placeholders(s)):
            if matches(_as_pattern(template), concrete):
                edges.append(f"  {_id('su_', template)} -.-> {_id('su_', concrete)}")
    lines = ["flowchart LR"]
    if systems:
        lines.append('  subgraph systems["PLU systems"]')
        for name, system in systems.items():
            text = name + (f"<br/>{system.description}" if system.description else "")
            lines.append(f'    {_id("sy_", name)}["{_label(text)}"]')
        lines.append("  end")
    lines.append('  subgraph endpoints["endpoints and inbound paths"]')
    for name, cfg in sorted(project.endpoints.items()):
        lines.append(f'    {_id("ep_", name)}["{_label(name)}<br/>({cfg.adapter})"]')
    for node, text in sorted(outside.items()):
        lines.append(f'    {node}["{_label(text)}"]')
    lines.append("  end")
    lines.append('  subgraph flows["flows"]')
    for fs in flows:
        suffix = " (schedule)" if fs.kind == "schedule" else " (request/reply)" if fs.kind == "request" else ""
        lines.append(f'    {_id("fl_", fs.flow.name)}(["{_label(fs.flow.name + suffix)}"])')
    lines.append("  end")
    lines.append('  subgraph subjects["subjects"]')
    for subject in sorted(subjects):
        lines.append(f'    {_id("su_", subject)}[/"{_label(subject)}"/]')
    lines.append("  end")
    for name, system in systems.items():
        sid = _id("sy_", name)
        targets = sorted({*project.endpoints, *(fs.outside for fs in flows if fs.outside)})
        for target in targets:
            if any(fnmatch.fnmatchcase(target, p) for p in system.endpoints):
                edges.append(f"  {sid} --- {_id('ep_', target)}")
        for subject in sorted(subjects):
            if any(pattern_covers(p, _as_pattern(subject)) for p in system.subjects):
                edges.append(f"  {sid} -.- {_id('su_', subject)}")
    lines += list(dict.fromkeys(edges))
    return "\n".join(lines)


def unmatched(project: Project) -> list[str]:
    """Patterns in `ops.systems` that name nothing (a typo shows up in `runner.py docs`)."""
    flows = read_project(project)
    targets = {*project.endpoints, *(fs.outside for fs in flows if fs.outside)}
    out: list[str] = []
    for name, system in project.config.ops.systems.items():
        out += [f"ops.systems[{name!r}].endpoints: {p!r} matches no endpoint or webhook path"
                for p in system.endpoints if not any(fnmatch.fnmatchcase(t, p) for t in targets)]
    return out


def as_markdown(project: Project) -> list[str]:
    return ["## Landscape", "",
            "PLU's systems (config `ops.systems`), the endpoints and inbound paths that reach them, the flows and "
            "the subjects between them; dotted lines: a system on the bus itself, or a templated subject and the "
            "concrete ones flows read. Generated from config and flows/.", "",
            "```mermaid", landscape(project), "```", ""]

