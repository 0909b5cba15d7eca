"""Bulk API 2.0 ingest jobs in the emulator: create, upload CSV once, UploadComplete, asynchronous
processing, and the three result CSVs.

The documented lifecycle: Open (data may be uploaded) -> UploadComplete -> InProgress -> JobComplete,
or Failed (the data could not be processed at all: a bad header, the wrong line ending), or Aborted
(by the client). Rows are processed in internal batches of 10,000; a row that fails is reported in
`failedResults` with `sf__Id` and `sf__Error` ("CODE:message:fields --") before the original columns,
a row done in `successfulResults` with `sf__Id` and `sf__Created`; rows a failed or aborted job never
reached are in `unprocessedrecords`. Results are only served once the job has finished, and their
order is not the upload's (Salesforce does not promise it, so the emulator reverses each batch).
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sandbox.salesforce.records import RecordError, RecordStore, RequestError, Transaction, parse_value

DELIMITERS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^", "BACKQUOTE": "`"}
LINE_ENDINGS = {"LF": "\n", "CRLF": "\r\n"}
OPERATIONS = ("insert", "upsert", "update")
CREATE_KEYS = {"object", "operation", "externalIdFieldName", "contentType", "lineEnding", "columnDelimiter",
               "assignmentRuleId"}
INTERNAL_BATCH = 10_000
MAX_UPLOAD = 150 * 1024 * 1024
FINISHED = ("JobComplete", "Failed", "Aborted")


@dataclass
class IngestJob:
    id: str
    operation: str
    object: str
    external_id: str | None
    line_ending: str
    delimiter: str
    api_version: float
    created_by: str
    created: str
    state: str = "Open"
    modstamp: str = ""
    data: bytes | None = None
    header: list[str] = field(default_factory=list)
    successful: list[list[str]] = field(default_factory=list)
    failed: list[list[str]] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    done_upto: int = 0                 # rows before this index were processed
    error_message: str | None = None
    started: float = 0.0
    took_ms: int = 0

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "operation": self.operation, "object": self.object, "createdById": self.created_by,
            "createdDate": self.created, "systemModstamp": self.modstamp or self.created, "state": self.state,
            "concurrencyMode": "Parallel", "contentType": "CSV", "apiVersion": self.api_version,
            "jobType": "V2Ingest", "lineEnding": self.line_ending, "columnDelimiter": self.delimiter,
            "contentUrl": f"services/data/v{self.api_version:.1f}/jobs/ingest/{self.id}/batches",
            "numberRecordsProcessed": len(self.successful) + len(self.failed),
            "numberRecordsFailed": len(self.failed), "retries": 0, "totalProcessingTime": self.took_ms,
            "apiActiveProcessingTime": self.took_ms, "apexProcessingTime": 0}
        if self.external_id:
            out["externalIdFieldName"] = self.external_id
        if self.error_message:
            out["errorMessage"] = self.error_message
        return out


class BulkJobs:
    """The org's ingest jobs; `pace` (rows per second, None: as fast as it goes) slows processing
    so a client must really wait for it; `internal_batch` is Salesforce's 10,000 (tests make it small)."""

    def __init__(self, store: RecordStore, pace: float | None = None, internal_batch: int = INTERNAL_BATCH) -> None:
        self.store = store
        self.pace = pace
        self.internal_batch = internal_batch
        self.jobs: dict[str, IngestJob] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    def _now(self) -> str:
        return datetime.fromtimestamp(self.store.clock.time(), timezone.utc).isoformat(
            timespec="milliseconds").replace("+00:00", "+0000")

    def create(self, body: Any, api_version: float, user_id: str) -> IngestJob:
        if not isinstance(body, dict):
            raise RequestError(400, "JSON_PARSER_ERROR", "The request body is not a JSON object")
        unknown = sorted(set(body) - CREATE_KEYS)
        if unknown:
            raise RequestError(400, "JSON_PARSER_ERROR", f"Unrecognized field \"{unknown[0]}\"")
        operation = body.get("operation")
        if operation not in OPERATIONS:
            raise RequestError(400, "INVALIDJOB", f"InvalidJob : Invalid operation: {operation}")
        sobject = body.get("object")
        if not isinstance(sobject, str) or sobject not in self.store.objects or \
                self.store.objects[sobject].platform_event:
            raise RequestError(400, "INVALIDJOB", f"InvalidJob : Entity '{sobject}' is not supported by the Bulk API.")
        ext = body.get("externalIdFieldName")
        if operation == "upsert":
            if not ext:
                raise RequestError(400, "INVALIDJOB", "InvalidJob : External ID was blank for upsert operation")
            self.store.external_field(self.store.objects[sobject], ext)
        if body.get("contentType", "CSV") != "CSV":
            raise RequestError(400, "INVALIDJOB", "InvalidJob : Only CSV content is supported by Bulk API 2.0")
        ending = body.get("lineEnding", "LF")
        delimiter = body.get("columnDelimiter", "COMMA")
        if ending not in LINE_ENDINGS or delimiter not in DELIMITERS:
            raise RequestError(400, "INVALIDJOB", f"InvalidJob : Invalid lineEnding {ending!r} or columnDelimiter "
                               f"{delimiter!r}")
        job_id = f"750{next(self._ids):012d}AAA"
        job = IngestJob(job_id, operation, sobject, ext, ending, delimiter, api_version, user_id, self._now())
        self.jobs[job_id] = job
        return job

    def job(self, job_id: str) -> IngestJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise RequestError(404, "NOT_FOUND", "The requested resource does not exist")
        return job

    def upload(self, job_id: str, data: bytes, content_type: str) -> None:
        job = self.job(job_id)
        if not content_type.startswith("text/csv"):
            raise RequestError(400, "INVALIDJOBSTATE", "Content-Type must be text/csv")
        if job.state != "Open":
            raise RequestError(409, "INVALIDJOBSTATE", f"Job {job_id} is not Open: {job.state}")
        if job.data is not None:
            raise RequestError(409, "INVALIDJOBSTATE", "Data has already been uploaded for this job")
        if len(data) > MAX_UPLOAD:
            raise RequestError(400, "INVALIDJOBSTATE", f"Upload exceeds {MAX_UPLOAD} bytes")
        job.data = data

    def change_state(self, job_id: str, body: Any) -> IngestJob:
        job = self.job(job_id)
        state = body.get("state") if isinstance(body, dict) else None
        if state == "UploadComplete" and job.state == "Open":
            job.state, job.modstamp = "UploadComplete", self._now()
            task = asyncio.create_task(self._process(job), name=f"bulk-{job_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif state == "Aborted" and job.state in ("Open", "UploadComplete", "InProgress"):
            job.state, job.modstamp = "Aborted", self._now()
        else:
            raise RequestError(400, "INVALIDJOBSTATE", f"Cannot change job state from {job.state} to {state}")
        return job

    def results(self, job_id: str, kind: str) -> str:
        job = self.job(job_id)
        if job.state not in FINISHED:
            raise RequestError(409, "INVALIDJOBSTATE", f"Job {job_id} is still {job.state}")
        if kind == "successfulResults":
            return _csv(["sf__Id", "sf__Created", *job.header], job.successful)
        if kind == "failedResults":
            return _csv(["sf__Id", "sf__Error", *job.header], job.failed)
        return _csv(job.header, job.rows[job.done_upto:])

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)

    # --- processing --------------------------------------------------------------------------

    async def _process(self, job: IngestJob) -> None:
        started = self.store.clock.monotonic()
        await asyncio.sleep(0)  # the client sees UploadComplete first
        if job.state == "Aborted":
            return
        job.state = "InProgress"
        try:
            rows = self._rows(job)
        except RequestError as exc:  # nothing was processed: every uploaded row is unprocessed
            job.state, job.error_message = "Failed", exc.message
            raw = [r for r in csv.reader(io.StringIO((job.data or b"").decode("utf-8", "replace"), newline=""),
                                         delimiter=DELIMITERS[job.delimiter]) if r]
            if raw:
                job.header, job.rows = raw[0], raw[1:]
            job.modstamp = self._now()
            return
        job.rows = rows
        obj = self.store.objects[job.object]
        for start in range(0, len(rows), self.internal_batch):
            if job.state == "Aborted":  # what is left stays unprocessed
                break
            chunk = rows[start:start + self.internal_batch]
            tx = Transaction()
            done: list[list[str]] = []
            for row in chunk:
                self._one(job, obj, row, tx, done)
            self.store.apply(tx)
            job.successful.extend(reversed(done))
            job.done_upto = start + len(chunk)
            if self.pace:
                await asyncio.sleep(len(chunk) / self.pace)
            else:
                await asyncio.sleep(0)
        job.took_ms = int((self.store.clock.monotonic() - started) * 1000)
        if job.state != "Aborted":
            job.state = "JobComplete"
        job.modstamp = self._now()

    def _rows(self, job: IngestJob) -> list[list[str]]:
        text = (job.data or b"").decode("utf-8")
        ending = LINE_ENDINGS[job.line_ending]
        if not text.strip():
            raise RequestError(400, "INVALIDJOB", "InvalidBatch : No data to process")
        if job.line_ending == "LF" and "\r\n" in text:
            raise RequestError(400, "INVALIDJOB", "ClientInputError : LineEnding is invalid on user data. Current "
                               "LineEnding setting is LF")
        if job.line_ending == "CRLF" and "\n" in text.replace("\r\n", ""):
            raise RequestError(400, "INVALIDJOB", "ClientInputError : LineEnding is invalid on user data. Current "
                               "LineEnding setting is CRLF")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=DELIMITERS[job.delimiter], lineterminator=ending)
        rows = [r for r in reader if r]
        job.header = rows[0]
        obj = self.store.objects[job.object]
        for name in job.header:
            if name not in obj.fields:
                raise RequestError(400, "INVALIDJOB", f"InvalidBatch : Field name not found : {name}")
        if job.external_id and job.external_id not in job.header:
            raise RequestError(400, "INVALIDJOB", f"InvalidBatch : Field name not found : {job.external_id} "
                               "(the external id column is required for upsert)")
        return rows[1:]

    def _one(self, job: IngestJob, obj: Any, row: list[str], tx: Transaction, done: list[list[str]]) -> None:
        if len(row) != len(job.header):
            job.failed.append(["", f"INVALID_CSV:Wrong number of columns: {len(row)} instead of "
                               f"{len(job.header)}: --", *row])
            return
        values: dict[str, Any] = {}
        try:
            for name, text in zip(job.header, row):
                if text == "":
                    continue  # an empty value leaves the field as it is; #N/A sets it to null
                values[name] = None if text == "#N/A" else parse_value(obj.fields[name], text, obj.name)
        except RequestError as exc:
            job.failed.append(["", f"INVALID_TYPE_ON_FIELD_IN_RECORD:{exc.message}:--", *row])
            return
        ext = self.store.objects[job.object].fields[job.external_id] if job.external_id else None
        try:
            if ext is None:
                raise RecordError("INVALID_OPERATION", f"operation {job.operation} is not emulated", [])
            result = self.store.upsert(obj, ext, values, f"com/salesforce/api/bulkapi/{job.api_version:.1f}", tx)
        except RecordError as err:
            job.failed.append(["", f"{err.status_code}:{err.message}:{','.join(err.fields)} --", *row])
            return
        done.append([result["id"], "true" if result["created"] else "false", *row])


def _csv(header: list[str], rows: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()
