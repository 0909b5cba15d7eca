"""YAML loading that remembers where every key and item came from, so that a validation error
can say `flows/x.yaml:12: steps[2].call.timeout: …` instead of just the message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

Loc = tuple[str | int, ...]


class YamlProblem(Exception):
    """A file that is not valid YAML or has duplicate keys; `issues` are ready to print."""

    def __init__(self, issues: list[str]) -> None:
        super().__init__("\n".join(issues))
        self.issues = issues


def load_with_lines(path: Path) -> tuple[Any, dict[Loc, int]]:
    """Parse one YAML document; return the data and a map from path to 1-based line."""
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise YamlProblem([f"{where}: not valid YAML: {exc.problem or exc.context}"]) from None
    lines: dict[Loc, int] = {}
    dupes: list[str] = []
    if node is not None:
        _walk(node, (), lines, dupes, path)
    if dupes:
        raise YamlProblem(dupes)
    return data, lines


def _walk(node: yaml.Node, loc: Loc, lines: dict[Loc, int], dupes: list[str], path: Path) -> None:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                dupes.append(f"{path}:{key_node.start_mark.line + 1}: {format_loc(loc + (key,))}: "
                             "duplicate key (YAML would silently keep only the last one)")
            seen.add(key)
            lines[loc + (key,)] = key_node.start_mark.line + 1
            _walk(value_node, loc + (key,), lines, dupes, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, loc + (i,), lines, dupes, path)


def format_loc(loc: Loc) -> str:
    """`steps[2].call.timeout` from ('steps', 2, 'call', 'timeout')."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top)"


def line_of(lines: dict[Loc, int], loc: Loc) -> int | None:
    """Line of the deepest known prefix of `loc` (a missing key points at its parent)."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _clean_loc(loc: tuple[Any, ...]) -> Loc:
    """Drop pydantic's union tags (`steps.0.call.call.timeout` → `steps.0.call.timeout`) and
    function-validator markers."""
    out: list[Any] = []
    for part in loc:
        if isinstance(part, str) and ("[" in part or part.startswith("function-")):
            continue
        if out and part == out[-1] and isinstance(part, str):
            continue
        out.append(part)
    return tuple(out)


def describe(file: Path, lines: dict[Loc, int], exc: ValidationError, base: Loc = ()) -> list[str]:
    """One `file:line: path: message` string per pydantic error."""
    issues = []
    for err in exc.errors(include_url=False):
        loc = base + _clean_loc(err["loc"])
        line = line_of(lines, loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        got = err.get("input")
        if err["type"] not in ("extra_forbidden", "missing", "value_error") and not isinstance(got, dict | list):
            msg += f" (got {got!r})"
        where = f"{file}:{line}" if line else f"{file}"
        issues.append(f"{where}: {format_loc(loc)}: {msg}")
    return issues


def issue(file: Path, lines: dict[Loc, int], loc: Loc, message: str) -> str:
    """A semantic (cross-reference) error in the same format."""
    line = line_of(lines, loc)
    where = f"{file}:{line}" if line else f"{file}"
    return f"{where}: {format_loc(loc)}: {message}"
