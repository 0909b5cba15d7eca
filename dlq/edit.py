"""`dlq edit`: change a record's payload (--set paths, an RFC 6902 JSON patch, or a round trip
through $EDITOR), check it against its flow's schema, and replay it; a bad edit replays nothing."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from dlq import claims, store
from dlq.exits import FAILED, OK, USAGE, Stop
from dlq.format import payload_text
from dlq.selection import one
from dlq.store import Record


def check_edit(args: argparse.Namespace) -> None:
    if args.patch is not None:
        try:
            patch = json.loads(args.patch)
        except ValueError as exc:
            raise Stop(USAGE, f"--patch is not JSON ({exc}): give a JSON array like "
                       """'[{"op": "replace", "path": "/a", "value": 1}]'""") from None
        if not isinstance(patch, list):
            raise Stop(USAGE, "--patch must be a JSON array of operations (RFC 6902)")
        args.patch_ops = patch
    for item in args.sets or []:
        if "=" not in item or not item.partition("=")[0].strip():
            raise Stop(USAGE, f"--set {item!r} needs PATH=VALUE, e.g. --set 'sites[0].postcode=\"1000\"'")


async def cmd_edit(args: argparse.Namespace, js: Any, stream: str) -> int:
    from engine.messages import encode

    r = await one(js, stream, args.seq)
    if r.payload_omitted and (args.patch is not None or args.sets):
        raise Stop(USAGE, f"record {r.seq} holds no payload ({r.payload_omitted}): --patch/--set have nothing to "
                   "change; give the whole payload with $EDITOR (no --patch/--set)")
    if r.claim is not None:
        await claims.fetch(js, r.claim)
        if r.claim.problem:
            raise Stop(FAILED, f"record {r.seq}'s payload came by claim check and cannot be read: {r.claim.problem}; "
                       "nothing replayed")
    encoding, payload = r.payload()
    if args.patch is not None or args.sets:
        if encoding != "json":
            raise Stop(USAGE, f"record {r.seq}'s payload is not JSON ({encoding}): --patch/--set need JSON; "
                       "edit it by hand with $EDITOR (no --patch/--set)")
        edited = apply_edits(payload, getattr(args, "patch_ops", None), args.sets or [])
        if edited == payload:
            raise Stop(USAGE, f"the edit changes nothing: record {r.seq} not replayed")
    else:
        edited = await edit_in_editor(r, encoding, payload)
    model = None if args.no_validate else flow_schema(args, r.flow)
    if model is None and not args.no_validate:
        print(f"flow {r.flow} has no schema: the edited payload is not validated", file=sys.stderr)
    if model is not None:
        problems = schema_problems(model, edited)
        if problems:
            print(f"the edited payload does not match schema {model.__name__} of flow {r.flow}:", file=sys.stderr)
            for line in problems:
                print(f"  {line}", file=sys.stderr)
            raise Stop(USAGE, f"nothing replayed; record {r.seq} stays in the DLQ: fix these fields and run edit again")
    data = edited.encode() if isinstance(edited, str) and encoding != "json" else encode(edited)
    if args.dry_run:
        print(json.dumps(edited, ensure_ascii=False, indent=2) if not isinstance(edited, str) else edited)
        checked = f"matches {model.__name__}" if model is not None else "not validated"
        print(f"edited payload {checked}; would replay record {r.seq} to {r.summary.get('subject')}", file=sys.stderr)
        return OK
    try:
        done = await store.replay(js, r, keep=args.keep, payload=data)
    except store.ReplayRefused as exc:
        raise Stop(FAILED, f"{exc}: it cannot be replayed") from None
    except store.DeleteFailed as exc:
        raise Stop(FAILED, str(exc)) from None
    except Exception as exc:
        raise Stop(FAILED, f"replay of record {r.seq} failed ({store._why(exc)}); the record stays in the DLQ: "
                   "try again when the stream is reachable") from None
    kept = "kept in the DLQ" if args.keep else "deleted from the DLQ"
    print(f"replayed record {r.seq} with the edited payload to {done.subject} as {done.msg_id}; record {kept}")
    return OK


def apply_edits(payload: Any, patch: list[Any] | None, sets: list[str]) -> Any:
    import copy

    doc = copy.deepcopy(payload)
    if patch is not None:
        import jsonpatch

        try:
            doc = jsonpatch.apply_patch(doc, patch)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, KeyError, IndexError) as exc:
            raise Stop(USAGE, f"the patch does not apply: {exc}; check the paths with `dlq show SEQ`") from None
    for item in sets:
        path, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        doc = set_path(doc, path.strip(), value)
    return doc


def split_path(path: str) -> list[str | int]:
    """`sites[0].postcode` or `sites.0.postcode` → ['sites', 0, 'postcode']."""
    parts: list[str | int] = []
    for token in path.replace("[", ".").replace("]", "").split("."):
        if token == "":
            continue
        parts.append(int(token) if token.isdigit() else token)
    return parts


def set_path(doc: Any, path: str, value: Any) -> Any:
    parts = split_path(path)
    if not parts:
        raise Stop(USAGE, f"--set path {path!r} is empty: name a field like contract_id or sites[0].postcode")
    node = doc
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(str(p) for p in parts[:i + 1])
        if isinstance(node, dict):
            key = str(part)
            if last:
                node[key] = value
            else:
                node = node.setdefault(key, [] if isinstance(parts[i + 1], int) else {})
        elif isinstance(node, list) and isinstance(part, int):
            if part > len(node) or (not last and part == len(node)):
                raise Stop(USAGE, f"--set {path}: {where} is past the end of a list of {len(node)}")
            if last:
                node[part:part + 1] = [value]
            else:
                node = node[part]
        else:
            kind = "a list" if isinstance(node, list) else "a value" if not isinstance(node, dict) else "an object"
            raise Stop(USAGE, f"--set {path}: {where} cannot be set, its parent is {kind}; see `dlq show SEQ`")
    return doc


async def edit_in_editor(r: Record, encoding: str, payload: Any) -> Any:
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR")
    if not editor:
        raise Stop(USAGE, "no editor: set $EDITOR (e.g. EDITOR=nano) or give --patch / --set")
    before = payload_text(encoding, payload) + ("\n" if encoding == "json" else "")
    fd, path = tempfile.mkstemp(prefix=f"dlq-{r.seq}-", suffix=".json" if encoding == "json" else ".txt")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(before)
        code = await asyncio.to_thread(subprocess.call, [*shlex.split(editor), path])
        if code != 0:
            raise Stop(USAGE, f"the editor exited with {code}: nothing replayed (record {r.seq} stays in the DLQ)")
        after = Path(path).read_text(encoding="utf-8")
    finally:
        os.unlink(path)
    if after.strip() == before.strip():
        raise Stop(USAGE, f"payload unchanged: edit aborted, nothing replayed (record {r.seq} stays in the DLQ)")
    if encoding != "json":
        return after
    try:
        return json.loads(after)
    except ValueError as exc:
        raise Stop(USAGE, f"the edited payload is not JSON ({exc}): nothing replayed; run edit again") from None


def flow_schema(args: argparse.Namespace, flow_name: str) -> Any:
    """The pydantic model of the record's flow, from the loaded project (None: the flow has none)."""
    from engine.errors import ConfigError
    from engine.validation import flow_files, load_project, resolve_schema

    if not args.flows.is_dir():
        raise Stop(USAGE, f"flow directory {args.flows} not found: pass --flows DIR (or --no-validate)")
    try:
        project = load_project(args.config, flow_files(args.flows))
    except ConfigError as exc:
        raise Stop(USAGE, "\n".join(exc.issues) + "\nthe project does not load, so the flow's schema is unknown: "
                   "fix it (runner.py validate) or pass --no-validate") from None
    for lf in project.flows:
        if lf.flow.name == flow_name:
            return resolve_schema(lf.flow.schema_) if lf.flow.schema_ else None
    raise Stop(USAGE, f"flow {flow_name!r} is not defined in {args.flows}: pass --flows DIR where it is, "
               "or --no-validate to replay without a schema check")


def schema_problems(model: Any, payload: Any) -> list[str]:
    from pydantic import ValidationError

    from engine.yaml_lines import format_loc

    try:
        model.model_validate(payload)
    except ValidationError as exc:
        out = []
        for e in exc.errors(include_url=False):
            got = e.get("input")
            shown = f" (got {json.dumps(got, ensure_ascii=False, default=str)})" if isinstance(got, (str, int, float, bool)) or got is None else ""
            out.append(f"{format_loc(tuple(e['loc']))}: {e['msg']}{shown}")
        return out
    return []
