"""Vendor 1: API key in a header, numbered pages, flat records in Wh / dm³ with Berlin-time offsets.

    GET /api/v1/readings?from=<ISO with offset>&to=<ISO with offset>&page=1&pageSize=500
    X-Api-Key: <api_key>

answers `{"page", "pageSize", "totalPages", "totalItems", "items": [record]}`, where a record is

    {"meterId": "V1-0000042", "marketLocation": "50000000042", "obis": "1-0:1.8.0",
     "from": "2025-03-30T00:00:00+01:00", "to": "2025-03-31T00:00:00+02:00",
     "value": 12345, "unit": "Wh", "status": "A"}

Gas meters have obis `7-0:3.0.0` and unit `dm3`; status is A (actual) or E (estimated). Errors are
`{"error": {"code", "message"}}`: 401 without a key, 403 with a wrong one, 400 OUT_OF_RETENTION for
a `from` older than 3 months, 429 TOO_MANY_REQUESTS with Retry-After.
"""

from __future__ import annotations

import hmac
import math
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from sandbox.meters.platform import Refusal, VendorPlatform, parse_or_refuse, query_int, required
from sandbox.meters.readings import Reading

BERLIN = ZoneInfo("Europe/Berlin")
API_KEY = "v1-sandbox-api-key"
_STATUS = {"actual": "A", "estimated": "E"}


def _aware(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("an ISO 8601 time with a UTC offset is required")
    return moment


class Vendor1Platform(VendorPlatform):
    vendor = "vendor1"
    seed = 1
    tz = BERLIN
    meter_format = "V1-{:07d}"
    site_format = "5{:010d}"
    max_page_size = 1000

    def __init__(self, meters: int = 1000, *, api_key: str = API_KEY, **options: Any) -> None:
        super().__init__(meters, **options)
        self.api_key = api_key

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/readings", self.guard("readings", self._readings))

    def error(self, status: int, code: str, message: str) -> web.Response:
        if code == "RATE_LIMITED":
            code = "TOO_MANY_REQUESTS"
        return web.json_response({"error": {"code": code, "message": message}}, status=status)

    def authorize(self, request: web.Request, endpoint: str) -> None:
        key = request.headers.get("X-Api-Key")
        if not key:
            raise Refusal(401, "UNAUTHORIZED", "X-Api-Key header is missing")
        if not hmac.compare_digest(key.encode(), self.api_key.encode()):
            raise Refusal(403, "FORBIDDEN", "the API key is not valid")

    async def _readings(self, request: web.Request) -> web.Response:
        start = parse_or_refuse(_aware, required(request, "from"), "from")
        end = parse_or_refuse(_aware, required(request, "to"), "to")
        self.check_retention(start, end)
        page = query_int(request, "page", 1, 1, 10**9)
        size = query_int(request, "pageSize", 500, 1, self.max_page_size)
        window = self.source.window(start, end)
        total = self.source.meters * window.count
        first = (page - 1) * size
        items = [self.record(self.source.at(window, p)) for p in range(first, min(first + size, total))]
        return web.json_response({"page": page, "pageSize": size, "totalPages": math.ceil(total / size),
                                  "totalItems": total, "items": items})

    @staticmethod
    def record(reading: Reading) -> dict[str, Any]:
        gas = reading.meter.medium == "gas"
        return {"meterId": reading.meter.meter_id, "marketLocation": reading.meter.site_id,
                "obis": "7-0:3.0.0" if gas else "1-0:1.8.0",
                "from": reading.start.astimezone(BERLIN).isoformat(), "to": reading.end.astimezone(BERLIN).isoformat(),
                "value": reading.milli, "unit": "dm3" if gas else "Wh", "status": _STATUS[reading.quality]}
