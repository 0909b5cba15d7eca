"""The `pull` step: page through an endpoint since the last watermark, publish every item, and keep
the progress in KV so a crash mid-batch resumes at the next page with exact counts.

Order per page: call → publish every item (stable ids) → wait for every publish ack → checkpoint.
A crash before the checkpoint repeats one page, whose items JetStream drops as duplicates and the
counts do not include twice. The checkpoint is written compare-and-set: two runs of the same
checkpoint (a manual trigger beside the nightly one) cannot interleave; the loser waits and retries.

With `retention` (how far back the endpoint keeps items), a new run whose `since` has fallen out of
the endpoint's window starts at the edge (now - retention) instead of being refused: the lost span
is raised once as alert `retention` (not for a first run) and kept in the run, so its reconciliation record shows the
`gap`. "now" is the tick's slot time (header Hub-Scheduled-For: the slot's ISO time, or
`manual:<ISO>` for a trigger), else the hub's `Clock` (the pipeline's), so a run's edge is the same
after a redelivery. The run's `started_at`/`finished_at` and its items' `ce-time` are read on that clock
too; `retention` is elapsed time (88d is 88 × 24 h, whatever DST does in between).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from engine.alerts import publish_alert
from engine.clock import SYSTEM, Clock
from engine.errors import HubError, PermanentError, PublishFailed, RoutingError, TransformFailed, TransientError
from engine.kv import bucket
from engine.messages import (CE_CORRELATION, CE_ID, CE_SOURCE, CE_SPEC, CE_TIME, CE_TYPE, MSG_ID, TRACEPARENT,
                             Envelope, child_traceparent, derived_id, encode)
from engine.trace_context import span_traceparent
from engine.nats_client import finish_headers, shared_header_lines
from engine.schedule import FIRED_AT, SCHEDULED_FOR, next_slot
from engine.spec import PullSpec
from engine.subjects import render, subject_problem
from engine.tasks import cancel_and_wait

log = structlog.get_logger("hub.pull")

BUCKET = "hub_checkpoints"


class CheckpointTaken(TransientError):
    """Another run moved the same checkpoint meanwhile; this one stops and comes back later."""


def checkpoint_key(flow: str, checkpoint: str) -> str:
    """The KV key of a flow's checkpoint (hashed: checkpoints may hold any character)."""
    return f"{flow}.{hashlib.blake2b(checkpoint.encode(), digest_size=12).hexdigest()}"


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def run_now(env: Envelope, clock: Clock = SYSTEM) -> datetime:
    """The run's "now": the tick's slot time when its Hub-Scheduled-For label is an ISO time (a
    scheduled slot, or `manual:<ISO>` from `runner.py trigger`), else `clock`'s now. A slot fired
    late (a catch-up after downtime) runs at the time it was fired: the vendor's window has moved."""
    headers = env.headers or {}
    moment = _aware_or_none(headers.get(SCHEDULED_FOR, "").removeprefix("manual:"))
    if moment is None:
        return clock.now()
    fired = _aware_or_none(headers.get(FIRED_AT, ""))
    return max(moment, fired) if fired is not None else moment


def _aware_or_none(value: str) -> datetime | None:
    """An ISO time with an offset, in UTC; None for anything else."""
    try:
        moment = _when(value)
    except ValueError:
        return None
    return moment.astimezone(timezone.utc) if moment.tzinfo is not None else None


def _aware(value: str) -> datetime:
    """An ISO time as an aware datetime (one without an offset is taken as UTC)."""
    moment = _when(value)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _span(start: datetime, end: datetime) -> dict[str, float]:
    seconds = (end - start).total_seconds()
    return {"lost_days": round(seconds / 86400, 2), "lost_hours": round(seconds / 3600, 1)}


class PagedPull:
    def __init__(self, spec: PullSpec, pipeline: Any, js: Any, label: str) -> None:
        from engine.validation import resolve_transform

        self.spec = spec
        self.pipeline = pipeline
        self.flow = pipeline.flow.name
        self.js = js
        self.label = label
        self.request = resolve_transform(spec.request)
        self.page = resolve_transform(spec.page)
        self.kv: Any = None
        self.publish_timeout = pipeline.publish_timeout
        self.clock: Clock = getattr(pipeline, "clock", SYSTEM)  # the hub's: run "now", stamps

    def _stamp(self) -> str:
        return self.clock.now().isoformat(timespec="milliseconds")

    # --- checkpoint --------------------------------------------------------------------------

    async def load(self, checkpoint: str) -> tuple[dict[str, Any], int | None]:
        """The checkpoint's state and KV revision (None when it was never written)."""
        if self.kv is None:
            self.kv = await bucket(self.js, BUCKET)
        try:
            entry = await self.kv.get(checkpoint_key(self.flow, checkpoint))
        except KeyNotFoundError:
            return {"checkpoint": checkpoint}, None
        return json.loads(entry.value), entry.revision

    async def _save(self, key: str, state: dict[str, Any], revision: int | None) -> int:
        value = json.dumps(state).encode()
        try:
            if revision is None:
                return await self.kv.create(key, value)
            return await self.kv.update(key, value, last=revision)
        except KeyWrongLastSequenceError:
            raise CheckpointTaken(f"checkpoint {state.get('checkpoint')!r} was moved by another run",
                                  step=self.label) from None

    # --- the run -----------------------------------------------------------------------------

    async def run(self, env: Envelope) -> None:
        payload = env.payload if isinstance(env.payload, dict) else {}
        try:
            checkpoint = render(self.spec.checkpoint, payload, lower=False)
        except KeyError as exc:
            raise RoutingError(f"checkpoint {self.spec.checkpoint!r} needs payload field {exc}") from None
        key = checkpoint_key(self.flow, checkpoint)
        state, revision = await self.load(checkpoint)
        last = state.get("last_run")
        if last and last.get("run_id") == env.msg_id:  # this tick finished before: report it again
            summary = last
        else:
            summary, revision = await self._pages(env, payload, key, state, revision)
            state = {"checkpoint": checkpoint, "watermark": summary["until"], "last_run": summary}
            await self._save(key, state, revision)
        # after the checkpoint, and again when a finished tick comes back: an alert whose publish
        # failed is raised by the redelivery (alerts are at least once, like the reconciliation one)
        await self._next_run_risk(env, summary)
        if summary["matched"] is False:
            await publish_alert(self.js, self.flow, "reconciliation", "firing", clock=self.clock,
                                checkpoint=checkpoint,
                                run_id=summary["run_id"], erp_total=summary["erp_total"], items=summary["items"])
        env.payload = {**payload, **summary}
        env.raw = None

    async def _pages(self, env: Envelope, payload: dict[str, Any], key: str, state: dict[str, Any],
                     revision: int | None) -> tuple[dict[str, Any], int]:
        spec = self.spec
        run = state.get("run")
        resumed = run is not None
        if run is None:
            since, gap = self._retention_edge(env, state.get("watermark", spec.start))
            run = {"run_id": env.msg_id, "since": since, "cursor": None, "pages": 0,
                   "items": 0, "published": 0, "duplicates": 0, "high_water": None, "erp_total": None,
                   "started_at": self._stamp()}
            if gap is not None:
                run["gap"] = {**gap, "first_run": "watermark" not in state, "alerted": False}
        else:
            log.warning("pull_resumed", flow=self.flow, checkpoint=state["checkpoint"], after_pages=run["pages"],
                        items=run["items"], run_id=run["run_id"])
        revision = await self._save(key, {**state, "run": run}, revision)  # claim it
        gap = run.get("gap")
        # after the claim: a run that lost the race says nothing. A first run lost nothing a run had
        # taken before (its `start`, or the tick's own `from`, is a choice): the log and the gap say it.
        if gap is not None and not gap["alerted"] and not gap["first_run"]:
            await publish_alert(self.js, self.flow, "retention", "firing", clock=self.clock,
                                checkpoint=state["checkpoint"],
                                run_id=run["run_id"], since=gap["from"], edge=gap["until"],
                                **_span(_aware(gap["from"]), _aware(gap["until"])))
            gap["alerted"] = True
            revision = await self._save(key, {**state, "run": run}, revision)
        # The next page is asked for while this one's items are published and checkpointed (its
        # cursor is known once this page is read): the endpoint's latency overlaps the hub's work. The
        # checkpoint still moves only after a page's items are confirmed; a crash drops the prefetch.
        if run["pages"] >= spec.max_pages:  # a resumed run that had reached the limit
            raise PermanentError(f"{state['checkpoint']}: still paging after {spec.max_pages} pages "
                                 "(max_pages); a cursor that never ends?", step=self.label)
        ahead = asyncio.create_task(self._fetch(run, payload, run["cursor"], run["pages"], env))
        try:
            while True:
                page = await ahead
                items = page.get("items") or []
                cursor = page.get("next")
                if cursor is not None and run["pages"] + 1 < spec.max_pages:
                    ahead = asyncio.create_task(self._fetch(run, payload, cursor, run["pages"] + 1, env))
                published, duplicates = await self._publish(env, items)
                run["pages"] += 1
                run["items"] += len(items)
                run["published"] += published
                run["duplicates"] += duplicates
                run["high_water"] = self._high_water(run["high_water"], items)
                if run["erp_total"] is None and page.get("total") is not None:
                    run["erp_total"] = int(page["total"])  # what the ERP said it had when the run began
                run["cursor"] = cursor
                log.info("pull_page", flow=self.flow, checkpoint=state["checkpoint"], page=run["pages"],
                         items=len(items), total_items=run["items"], duplicates=duplicates)
                if cursor is None:
                    break
                revision = await self._save(key, {**state, "run": run}, revision)
                if run["pages"] >= spec.max_pages:
                    raise PermanentError(f"{state['checkpoint']}: still paging after {spec.max_pages} pages "
                                         "(max_pages); a cursor that never ends?", step=self.label)
        finally:
            await cancel_and_wait([ahead])  # its failure, if any, is retrieved
        total = run["erp_total"]
        summary = {"flow": self.flow, "checkpoint": state["checkpoint"], "run_id": run["run_id"],
                   "since": run["since"], "until": run["high_water"] or run["since"], "pages": run["pages"],
                   "items": run["items"], "published": run["published"], "duplicates": run["duplicates"],
                   "erp_total": total, "matched": None if total is None else total == run["items"],
                   "resumed": resumed, "started_at": run["started_at"], "finished_at": self._stamp()}
        if run.get("gap") is not None:
            summary["gap"] = {"from": run["gap"]["from"], "until": run["gap"]["until"]}
        return summary, revision

    async def _fetch(self, run: dict[str, Any], payload: dict[str, Any], cursor: Any, number: int,
                     env: Envelope) -> dict[str, Any]:
        """Page `number` of the run: the request transform, the call, the page transform."""
        spec = self.spec
        ctx = {**payload, "since": run["since"], "cursor": cursor, "page_size": spec.page_size}
        body = self._transform(self.request, ctx, spec.request)
        answer = await self.pipeline.call_endpoint(env, spec.endpoint, spec.operation, spec.timeout, body,
                                                   idem_key=f"{run['run_id']}:page:{number}")
        return self._transform(self.page, {**ctx, "answer": answer}, spec.page)

    def _retention_edge(self, env: Envelope, since: str) -> tuple[str, dict[str, str] | None]:
        """A new run's `since`, moved up to the endpoint's retention edge when it fell out of it; and
        the gap {from, until} that leaves (None when since is inside the window)."""
        if self.spec.retention is None:
            return since, None
        edge = run_now(env, self.clock) - timedelta(seconds=self.spec.retention)
        if _aware(since) >= edge:
            return since, None
        edge_iso = edge.isoformat()
        log.warning("pull_retention_gap", flow=self.flow, since=since, edge=edge_iso)
        return edge_iso, {"from": since, "until": edge_iso}

    async def _next_run_risk(self, env: Envelope, summary: dict[str, Any]) -> None:
        """On a scheduled flow, warn (alert `retention_risk`) when the run's new watermark is already
        older than the next slot's retention edge: that run would lose items unless one catches up now."""
        flow = self.pipeline.flow
        if self.spec.retention is None or not getattr(flow, "is_scheduled", False):
            return
        nxt = next_slot(flow.source.schedule, run_now(env, self.clock))
        edge = nxt - timedelta(seconds=self.spec.retention)
        watermark = _aware(summary["until"])
        if watermark < edge:
            await publish_alert(self.js, self.flow, "retention_risk", "firing", clock=self.clock,
                                checkpoint=summary["checkpoint"],
                                run_id=summary["run_id"], watermark=summary["until"], next_run=nxt.isoformat(),
                                edge=edge.isoformat(), **_span(watermark, edge))

    def _transform(self, func: Any, data: dict[str, Any], ref: str) -> Any:
        try:
            return func(data)
        except HubError:
            raise
        except Exception as exc:
            raise TransformFailed(f"{ref}: {type(exc).__name__}: {exc}", step=self.label) from None

    def _high_water(self, current: str | None, items: list[dict[str, Any]]) -> str | None:
        field = self.spec.watermark
        best = _when(current) if current else None
        for item in items:
            value = item.get(field) if isinstance(item, dict) else None
            if value is None:
                raise TransformFailed(f"{self.spec.page}: an item has no watermark field {field!r}", step=self.label)
            moment = _when(str(value))
            if best is None or moment > best:
                best, current = moment, str(value)
        return current

    async def _publish(self, env: Envelope, items: list[Any]) -> tuple[int, int]:
        """Publish a page's items and wait for every ack; (stored, dropped as duplicates). The headers
        but the two ids are the same for a page's items on one subject: built once per subject."""
        spec = self.spec
        futures = []
        fixed: dict[str, str] = {}  # subject -> its CloudEvents header lines, checked once
        when = self._stamp()
        publish = self.js.publish_async
        for item in items:
            try:
                subject = render(spec.publish, item)
                item_id = render(spec.item_id, item, lower=False)
            except KeyError as exc:
                raise RoutingError(f"item needs field {exc} for the subject or item_id", step=self.label) from None
            lines = fixed.get(subject)
            if lines is None:
                if problem := subject_problem(subject):
                    raise RoutingError(problem, step=self.label)
                lines = fixed[subject] = shared_header_lines({
                    CE_SOURCE: f"/plu-hub/flows/{self.flow}", CE_TYPE: subject, CE_TIME: when, CE_SPEC: "1.0",
                    CE_CORRELATION: env.correlation_id, "content-type": "application/json",
                    TRACEPARENT: span_traceparent() or child_traceparent(env.headers.get(TRACEPARENT))})
            msg_id = derived_id(self.flow, "item", item_id)
            headers = finish_headers(lines, (CE_ID, msg_id), (MSG_ID, msg_id))
            futures.append(await publish(subject, encode(item), headers=headers))
        if not futures:
            return 0, 0
        done, late = await asyncio.wait(futures, timeout=self.publish_timeout)
        for f in late:
            f.cancel()
        if late or any(f.exception() for f in done):
            raise PublishFailed(f"{len(late) + sum(1 for f in done if f.exception())} of {len(futures)} items "
                                "not confirmed; the page is pulled again", step=self.label)
        duplicates = sum(1 for f in done if f.result().duplicate)
        return len(futures) - duplicates, duplicates
