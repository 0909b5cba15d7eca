"""Vendor 3: HTTP basic auth, offset/limit paging, epoch seconds with a duration, DLMS-style scalers;
it also pushes the same records by webhook (sandbox/meters/webhook.py).

    GET /api/readings?since=<epoch s>&until=<epoch s>&offset=0&limit=1000      (limit <= 5000)
    Authorization: Basic base64(username:password)

answers `{"offset", "limit", "total", "readings": [record]}`, where a record is

    {"device": {"id": "V3-0000042", "installation": "INST-0000042"}, "commodity": "E",
     "reading": {"start": 1743289200, "duration": 86400, "value": 12345, "scaler": 0, "unit": "Wh", "qc": 0}}

The quantity is value x 10**scaler in unit: electricity (E) in Wh with scaler 0, gas (G) in m3 with
scaler -3. qc is 0 (valid) or 1 (estimated). Days are London days. Errors are `{"errorCode": <int>,
"errorMessage"}`: 401 with `WWW-Authenticate: Basic`, 410 for a `since` older than 3 months.
"""

from __future__ import annotations

import hmac
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from sandbox.meters.platform import Refusal, VendorPlatform, basic_credentials, parse_or_refuse, query_int, required
from sandbox.meters.readings import Reading

LONDON = ZoneInfo("Europe/London")
USERNAME = "plu-hub"
PASSWORD = "v3-sandbox-password"
_CODES = {"INVALID_RANGE": 4001, "INVALID_PARAMETER": 4002, "MISSING_PARAMETER": 4003, "UNAUTHORIZED": 4010,
          "OUT_OF_RETENTION": 4100, "RATE_LIMITED": 4290, "INJECTED": 5000}


def _epoch(text: str) -> datetime:
    return datetime.fromtimestamp(int(text), timezone.utc)


class Vendor3Platform(VendorPlatform):
    vendor = "vendor3"
    seed = 3
    tz = LONDON
    meter_format = "V3-{:07d}"
    site_format = "INST-{:07d}"
    max_page_size = 5000

    def __init__(self, meters: int = 1000, *, username: str = USERNAME, password: str = PASSWORD,
                 **options: Any) -> None:
        super().__init__(meters, **options)
        self.username, self.password = username, password

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/readings", self.guard("readings", self._readings))

    def error(self, status: int, code: str, message: str) -> web.Response:
        return web.json_response({"errorCode": _CODES.get(code, status * 10), "errorMessage": message}, status=status)

    def retention_refusal(self, oldest: datetime) -> tuple[int, str, str]:
        return 410, "OUT_OF_RETENTION", f"readings before epoch {int(oldest.timestamp())} are purged"

    def authorize(self, request: web.Request, endpoint: str) -> None:
        basic = basic_credentials(request.headers.get("Authorization", ""))
        if basic is None or basic[0] != self.username or not hmac.compare_digest(basic[1].encode(), self.password.encode()):
            raise Refusal(401, "UNAUTHORIZED", "authentication required",
                          {"WWW-Authenticate": 'Basic realm="vendor3", charset="UTF-8"'})

    async def _readings(self, request: web.Request) -> web.Response:
        start = parse_or_refuse(_epoch, required(request, "since"), "since")
        end = parse_or_refuse(_epoch, required(request, "until"), "until")
        self.check_retention(start, end)
        offset = query_int(request, "offset", 0, 0, 10**12)
        limit = query_int(request, "limit", 1000, 1, self.max_page_size)
        window = self.source.window(start, end)
        total = self.source.meters * window.count
        readings = [self.record(self.source.at(window, p)) for p in range(offset, min(offset + limit, total))]
        return web.json_response({"offset": offset, "limit": limit, "total": total, "readings": readings})

    def records(self, start: datetime, end: datetime, meters: range | None = None) -> list[dict[str, Any]]:
        """Vendor-3 records of [start, end) for `meters` (all by default): what a webhook batch carries."""
        return [self.record(r) for r in self.source.readings(start, end, meters)]

    @staticmethod
    def record(reading: Reading) -> dict[str, Any]:
        gas = reading.meter.medium == "gas"
        return {"device": {"id": reading.meter.meter_id, "installation": reading.meter.site_id},
                "commodity": "G" if gas else "E",
                "reading": {"start": int(reading.start.timestamp()),
                            "duration": int((reading.end - reading.start).total_seconds()),
                            "value": reading.milli, "scaler": -3 if gas else 0, "unit": "m3" if gas else "Wh",
                            "qc": 0 if reading.quality == "actual" else 1}}
