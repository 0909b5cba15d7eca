"""Bulk API 2.0 ingest jobs for a batch of items (engine/batching.py): submit, follow, read results.

`submit` turns a stored batch into a CSV (the operation's `fields`, in order), creates an upsert job,
uploads the CSV once and closes it with UploadComplete; the flow then follows the job with `until`
on `status`. `results` reads a finished job's `failedResults` and `unprocessedrecords` and answers
`ItemOutcomes` (engine/item_outcomes.py): a failed row becomes a dead-letter record of the message
it came from, with the row's error ("CODE:message:fields --"); a row that failed transiently
(UNABLE_TO_LOCK_ROW) or was never processed goes back for a later job, up to the operation's
`retries`. Rows are matched to items by external id: result order is not the upload's.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import time
from typing import Any

from adapters.salesforce.collections import TRANSIENT_CODES
from adapters.salesforce.config import BulkUpsertOperation
from adapters.salesforce.rest import RestClient
from engine.batching import read_batch
from engine.errors import BusinessError, RoutingError, TargetServerError, UnparseableAnswer
from engine.item_outcomes import Item, ItemOutcomes

FINISHED = ("JobComplete", "Failed", "Aborted")


def csv_value(value: Any) -> str:
    """A value as Bulk API 2.0 CSV wants it: empty leaves a field as it is, #N/A sets it to null."""
    if value is None:
        return "#N/A"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def to_csv(fields: list[str], rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(fields)
    for row in rows:
        writer.writerow([csv_value(row[f]) if f in row else "" for f in fields])
    return out.getvalue().encode("utf-8")


def parse_results(text: str) -> list[dict[str, str]]:
    """A result CSV as dicts; UnparseableAnswer when it has no header."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None and text.strip():
        raise UnparseableAnswer(f"a Bulk API result without a header: {text[:80]!r}")
    return list(reader)


def parse_error(text: str) -> tuple[str, str, list[str]]:
    """`sf__Error` "CODE:message:field1,field2 --" as (code, message, fields)."""
    body = text.strip().removesuffix("--").strip()
    code, _, rest = body.partition(":")
    message, sep, fields = rest.rpartition(":")
    if not sep:  # no field part at all
        message, fields = rest, ""
    return code.strip(), message.strip(), [f for f in (x.strip() for x in fields.split(",")) if f]


class BulkJobs:
    def __init__(self, rest: RestClient, js: Any) -> None:
        self.rest = rest
        self.js = js

    async def submit(self, name: str, op: BulkUpsertOperation, batch: dict[str, Any], timeout: float) -> dict[str, Any]:
        if not isinstance(batch, dict) or "batch" not in batch:
            raise RoutingError(f"{name}: the payload must be a stored batch (a `batch` source's message)")
        deadline = time.monotonic() + timeout
        lines = await read_batch(self.js, batch)
        rows = [line["item"] for line in lines]
        missing = sum(1 for row in rows if op.external_id not in row or row[op.external_id] in (None, ""))
        body = await asyncio.to_thread(to_csv, op.fields, rows)  # 100,000 rows: not on the event loop
        job = await self.rest.request("POST", "/jobs/ingest", timeout=timeout, json={
            "object": op.sobject, "operation": "upsert", "externalIdFieldName": op.external_id,
            "contentType": "CSV", "lineEnding": "LF", "columnDelimiter": "COMMA"})
        job_id = job["id"]
        try:
            await self.rest.request("PUT", f"/jobs/ingest/{job_id}/batches", data=body, content_type="text/csv",
                                    timeout=max(1.0, deadline - time.monotonic()), expect="none")
            info = await self.rest.request("PATCH", f"/jobs/ingest/{job_id}", json={"state": "UploadComplete"},
                                           timeout=max(1.0, deadline - time.monotonic()))
        except Exception:
            with contextlib.suppress(Exception):  # an open job holds nothing yet: abort it, never leave it open
                await self.rest.request("PATCH", f"/jobs/ingest/{job_id}", json={"state": "Aborted"}, timeout=5.0)
            raise
        return {"job_id": job_id, "operation": name, "object": op.sobject, "rows": len(rows), "bytes": len(body),
                "rows_without_key": missing, "state": info.get("state", "UploadComplete"), "batch": batch["batch"],
                "stream": batch.get("stream"), "flow": batch.get("flow"), "subject": batch.get("subject")}

    async def status(self, job: dict[str, Any], timeout: float) -> dict[str, Any]:
        info = await self.rest.request("GET", f"/jobs/ingest/{_job_id(job)}", timeout=timeout)
        return {"state": info.get("state"), "processed": info.get("numberRecordsProcessed", 0),
                "failed": info.get("numberRecordsFailed", 0), "error": info.get("errorMessage")}

    async def results(self, op: BulkUpsertOperation, job: dict[str, Any], timeout: float) -> ItemOutcomes:
        job_id = _job_id(job)
        deadline = time.monotonic() + timeout
        info = await self.rest.request("GET", f"/jobs/ingest/{job_id}", timeout=timeout)
        state = info.get("state")
        if state not in FINISHED:
            raise TargetServerError(f"job {job_id} is still {state}: follow it with `until` before its results")
        failed = await asyncio.to_thread(parse_results, await self.rest.request(
            "GET", f"/jobs/ingest/{job_id}/failedResults/", expect="text",
            timeout=max(1.0, deadline - time.monotonic())))
        unprocessed = await asyncio.to_thread(parse_results, await self.rest.request(
            "GET", f"/jobs/ingest/{job_id}/unprocessedrecords/", expect="text",
            timeout=max(1.0, deadline - time.monotonic())))
        lines = await read_batch(self.js, job) if failed or unprocessed else []  # most jobs: nothing to map
        by_key = {str(line["item"].get(op.external_id)): line for line in lines}
        flow = job.get("flow") or ""
        outcomes = ItemOutcomes(answer=None, flow=flow)
        unmatched = 0
        for row in failed:
            code, message, fields = parse_error(row.get("sf__Error", ""))
            line = by_key.get(row.get(op.external_id, ""))
            if line is None:
                unmatched += 1
                continue
            item = await self._original(job, line)
            if code in TRANSIENT_CODES and item.attempts <= op.retries:
                outcomes.retry.append(item)
                continue
            field_text = f" (fields: {', '.join(fields)})" if fields else ""
            err = (TargetServerError if code in TRANSIENT_CODES else BusinessError)(
                f"{op.sobject} {op.external_id}={row.get(op.external_id)}: {code}: {message}{field_text} "
                f"[Bulk API job {job_id}]")
            outcomes.failed.append((item, err))
        for row in unprocessed:
            line = by_key.get(row.get(op.external_id, ""))
            if line is None:
                unmatched += 1
                continue
            item = await self._original(job, line)
            if item.attempts <= op.retries:
                outcomes.retry.append(item)
            else:
                outcomes.failed.append((item, TargetServerError(
                    f"{op.sobject} {op.external_id}={row.get(op.external_id)}: never processed by job {job_id} "
                    f"({state}: {info.get('errorMessage') or 'no reason given'}) after {item.attempts} jobs")))
        outcomes.answer = {
            "kind": "salesforce_bulk_job", "job_id": job_id, "object": op.sobject, "state": state,
            "rows": job.get("rows"), "processed": info.get("numberRecordsProcessed", 0),
            "failed": info.get("numberRecordsFailed", 0), "dead_lettered": len(outcomes.failed),
            "retried": len(outcomes.retry), "unprocessed": len(unprocessed), "unmatched": unmatched,
            "error": info.get("errorMessage"), "flow": flow}
        return outcomes

    async def _original(self, job: dict[str, Any], line: dict[str, Any]) -> Item:
        """The item's source message, read back from its stream (the row itself when it is gone)."""
        stream, seq = job.get("stream") or "", int(line["seq"])
        try:
            msg = await self.js.get_msg(stream, seq)
            return Item(msg.data or b"", dict(msg.headers or {}), msg.subject, stream, seq)
        except Exception:  # aged out of its stream: keep at least the row
            import orjson

            return Item(orjson.dumps(line["item"]), {"content-type": "application/json"},
                        line.get("subject") or job.get("subject") or "", stream, seq)


def _job_id(job: Any) -> str:
    if not isinstance(job, dict) or not isinstance(job.get("job_id"), str):
        raise RoutingError("the payload must carry a Bulk API `job_id` (what the bulk_upsert operation answered)")
    return job["job_id"]
