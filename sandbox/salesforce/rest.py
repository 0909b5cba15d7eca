"""The emulator's HTTP side: the OAuth 2.0 token endpoint, sObject Collections upsert, a record by
id, Bulk API 2.0 ingest jobs and the limits resource, with Salesforce's headers and error bodies.

Strict where Salesforce is: a missing or expired session is 401 INVALID_SESSION_ID; a request over
the org's daily API allowance is 403 REQUEST_LIMIT_EXCEEDED; every answer carries
`Sforce-Limit-Info: api-usage=used/max`; an unknown API version, object or external id field is 404
NOT_FOUND; more than 200 records is 400 EXCEEDED_ID_LIMIT; an unknown field is 400 INVALID_FIELD;
a value of the wrong type is 400 JSON_PARSER_ERROR; a record without `attributes.type` is 400
INVALID_TYPE. Error bodies are lists of {"message", "errorCode"} as the REST API sends them.
"""

from __future__ import annotations

import collections
import json
import re
from typing import Any, Awaitable, Callable

from aiohttp import web

from sandbox.salesforce.records import RecordError, RequestError, Transaction

VERSIONS = [f"{v}.0" for v in range(41, 63)]   # Winter '18 (41.0) to Winter '25 (62.0)
COLLECTIONS_SINCE = 46.0                       # sObject Collections upsert: API 46.0 and later
MAX_RECORDS = 200
DATA = re.compile(r"^/services/data/v(?P<version>\d+\.\d)(?P<rest>/.*)?$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiUsage:
    """Calls in the rolling 24 hours, on the org's clock, against the daily allowance."""

    def __init__(self, clock: Any, maximum: int) -> None:
        self.clock = clock
        self.maximum = maximum
        self.calls: collections.deque[float] = collections.deque()

    def used(self) -> int:
        edge = self.clock.time() - 86400.0
        while self.calls and self.calls[0] <= edge:
            self.calls.popleft()
        return len(self.calls)

    def take(self) -> bool:
        """Count a call; False when the allowance is spent (the call is refused, not counted)."""
        if self.used() >= self.maximum:
            return False
        self.calls.append(self.clock.time())
        return True

    def header(self) -> str:
        return f"api-usage={self.used()}/{self.maximum}"


def error(status: int, code: str, message: str, usage: ApiUsage | None = None) -> web.Response:
    headers = {"Sforce-Limit-Info": usage.header()} if usage else None
    return web.json_response([{"message": message, "errorCode": code}], status=status, headers=headers)


class RestApi:
    """Routes of one org; `org` is sandbox.salesforce.SalesforceOrg (records, jobs, sessions, usage)."""

    def __init__(self, org: Any) -> None:
        self.org = org
        self.fail_next: list[tuple[int, str]] = []   # injected answers: (status, body) for the next calls
        self.requests = 0

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=160 * 1024 * 1024)
        app.router.add_post("/services/oauth2/token", self.token)
        app.router.add_get("/services/data", self.versions)
        app.router.add_get("/services/data/", self.versions)
        app.router.add_route("*", "/services/data/{tail:.*}", self.data)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests += 1
        if self.fail_next:
            status, body = self.fail_next.pop(0)
            return web.Response(status=status, text=body, content_type="application/json")
        return await handler(request)

    async def token(self, request: web.Request) -> web.Response:
        from sandbox.salesforce.auth import OAuthError

        if request.content_type != "application/x-www-form-urlencoded":
            return web.json_response({"error": "invalid_request", "error_description": "must use POST with "
                                      "application/x-www-form-urlencoded"}, status=400)
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        try:
            return web.json_response(self.org.sessions.token(form, self.org.url))
        except OAuthError as exc:
            return web.json_response({"error": exc.error, "error_description": exc.description}, status=exc.status)

    async def versions(self, request: web.Request) -> web.Response:
        return web.json_response([{"label": f"v{v}", "url": f"/services/data/v{v}", "version": v} for v in VERSIONS])

    async def data(self, request: web.Request) -> web.StreamResponse:
        usage = self.org.usage
        match = DATA.match(request.path)
        if match is None or match["version"] not in VERSIONS:
            return error(404, "NOT_FOUND", "The requested resource does not exist", usage)
        auth = request.headers.get("Authorization", "")
        session = self.org.sessions.check(auth[7:] if auth.startswith("Bearer ") else None)
        if session is None:
            return error(401, "INVALID_SESSION_ID", "Session expired or invalid", usage)
        if not usage.take():
            return error(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.", usage)
        version, rest = float(match["version"]), (match["rest"] or "/").rstrip("/") or "/"
        try:
            response = await self._route(request, version, rest, session)
        except RequestError as exc:
            response = web.json_response(exc.body(), status=exc.status)
        response.headers["Sforce-Limit-Info"] = usage.header()
        return response

    async def _route(self, request: web.Request, version: float, rest: str, session: Any) -> web.StreamResponse:
        parts = rest.strip("/").split("/")
        method = request.method
        if parts == ["limits"] and method == "GET":
            used = self.org.usage.used()
            return web.json_response({"DailyApiRequests": {"Max": self.org.usage.maximum,
                                                           "Remaining": self.org.usage.maximum - used}})
        if parts[:2] == ["composite", "sobjects"] and len(parts) == 4 and method == "PATCH" \
                and version >= COLLECTIONS_SINCE:
            return await self.collections_upsert(request, parts[2], parts[3], version, session)
        if parts[0] == "sobjects" and len(parts) == 3 and method == "GET":
            return self.record(request, parts[1], parts[2], version)
        if parts[:2] == ["jobs", "ingest"]:
            return await self.ingest(request, parts[2:], version, session)
        raise RequestError(404, "NOT_FOUND", "The requested resource does not exist")

    # --- sObject Collections -----------------------------------------------------------------

    async def collections_upsert(self, request: web.Request, sobject: str, ext_name: str, version: float,
                                 session: Any) -> web.Response:
        store = self.org.store
        obj = store.obj(sobject)
        ext = store.external_field(obj, ext_name)
        body = await _json(request)
        if not isinstance(body, dict):
            raise RequestError(400, "JSON_PARSER_ERROR", "Cannot deserialize the request body as an object")
        unknown = sorted(set(body) - {"allOrNone", "records"})
        if unknown:
            raise RequestError(400, "JSON_PARSER_ERROR", f"Unrecognized field \"{unknown[0]}\"")
        records = body.get("records")
        all_or_none = body.get("allOrNone", False)
        if not isinstance(records, list) or not isinstance(all_or_none, bool):
            raise RequestError(400, "JSON_PARSER_ERROR", "records must be a list and allOrNone a boolean")
        if len(records) > MAX_RECORDS:
            raise RequestError(400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than 200 records "
                               "into this call")
        checked = []
        for record in records:
            attributes = record.get("attributes") if isinstance(record, dict) else None
            if not isinstance(attributes, dict) or not attributes.get("type"):
                raise RequestError(400, "INVALID_TYPE", "Must send a concrete entity type.")
            if attributes["type"] != sobject:
                raise RequestError(400, "INVALID_TYPE", f"Record type {attributes['type']} does not match the "
                                   f"collection's type {sobject}")
            checked.append(store.check_record(obj, record))
        tx = Transaction()
        origin = f"com/salesforce/api/rest/{version:.1f};client={session.client_id}"
        results: list[dict[str, Any]] = []
        for values in checked:
            try:
                results.append(store.upsert(obj, ext, values, origin, tx))
            except RecordError as err:
                results.append({"success": False, "errors": [err.as_json()]})
        if all_or_none and any(not r["success"] for r in results):
            rolled = {"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK", "message": "Record rolled back because "
                      "not all records were valid and the request was using AllOrNone header", "fields": []}
            results = [r if not r["success"] else {"success": False, "errors": [rolled]} for r in results]
        else:
            store.apply(tx)
        self.org.collections_sizes.append(len(records))
        return web.json_response(results)

    def record(self, request: web.Request, sobject: str, record_id: str, version: float) -> web.Response:
        obj = self.org.store.obj(sobject)
        record = self.org.store.get(sobject, record_id)
        if record is None:
            raise RequestError(404, "NOT_FOUND", "The requested resource does not exist")
        wanted = request.query.get("fields")
        names = [n.strip() for n in wanted.split(",")] if wanted else list(obj.fields)
        for name in names:
            if name not in obj.fields:
                raise RequestError(400, "INVALID_FIELD", f"No such column '{name}' on entity '{sobject}'")
        out = {"attributes": {"type": sobject, "url": f"/services/data/v{version:.1f}/sobjects/{sobject}/{record_id}"}}
        out.update({n: record.get(n) for n in names})
        return web.json_response(out)

    # --- Bulk API 2.0 ------------------------------------------------------------------------

    async def ingest(self, request: web.Request, parts: list[str], version: float, session: Any) -> web.Response:
        jobs, method = self.org.jobs, request.method
        user = self.org.sessions.users.get(session.user, "")
        if not parts and method == "POST":
            job = jobs.create(await _json(request), version, user)
            return web.json_response(job.info())
        if len(parts) == 1 and method == "GET":
            return web.json_response(jobs.job(parts[0]).info())
        if len(parts) == 1 and method == "PATCH":
            return web.json_response(jobs.change_state(parts[0], await _json(request)).info())
        if len(parts) == 2 and parts[1] == "batches" and method == "PUT":
            jobs.upload(parts[0], await request.read(), request.headers.get("Content-Type", ""))
            return web.Response(status=201)
        if len(parts) == 2 and method == "GET" and parts[1] in ("successfulResults", "failedResults",
                                                                  "unprocessedrecords"):
            return web.Response(text=jobs.results(parts[0], parts[1]), content_type="text/csv")
        raise RequestError(404, "NOT_FOUND", "The requested resource does not exist")


async def _json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw or b"null")
    except ValueError as exc:
        raise RequestError(400, "JSON_PARSER_ERROR", f"Unexpected character in the request body: {exc}") from None
