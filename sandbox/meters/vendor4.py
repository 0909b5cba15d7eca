"""Vendor 4: HMAC-signed requests, continuation tokens, flat records with UTC millisecond times, short
OBIS codes, kWh (MWh for business meters) and m³; it also publishes the same records on MQTT
(sandbox/meters/mqtt_publisher.py).

    GET /v4/readings?start=2025-03-01T00:00:00Z&end=2025-04-01T00:00:00Z&maxResults=500
        [&continuationToken=<opaque, from the previous page>]
    X-V4-Key: <key_id>    X-V4-Timestamp: <unix seconds>    X-V4-Signature: <hex>

The signature is HMAC-SHA256(secret, "GET\\n/v4/readings\\n<canonical query>\\n<timestamp>") in hex,
the canonical query being the decoded parameters sorted by name, each name and value
percent-encoded (RFC 3986, nothing left unescaped but A-Z a-z 0-9 - _ . ~) and joined as `n=v&...`.
`sign()` computes the headers. A timestamp more than `max_skew` seconds from real time (not the data clock), a
wrong key or signature -> 401. The answer is `{"readings": [record], "continuationToken": "..."}`
(no token on the last page), a record being

    {"meter": "V4-0000042", "site": "PT0002000000000042", "type": "ELECTRICITY", "register": "1.8.0",
     "intervalStart": "2025-03-29T00:00:00.000Z", "intervalEnd": "2025-03-30T00:00:00.000Z",
     "energy": {"value": 12.345, "unit": "kWh"}, "quality": "VALID"}

Gas: type GAS, register 3.0.0, unit m3. quality is VALID or SUBSTITUTED. Days are Lisbon days.
Errors are `{"status": "ERROR", "errorCode": "E...", "message"}`; a `start` older than 3 months is 400 E1003.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from datetime import datetime
from typing import Any, Iterable
from urllib.parse import quote
from zoneinfo import ZoneInfo

from aiohttp import web

from sandbox.meters.platform import Refusal, VendorPlatform, parse_or_refuse, query_int, required
from sandbox.meters.readings import Reading

LISBON = ZoneInfo("Europe/Lisbon")
KEY_ID = "plu-hub"
SECRET = "v4-sandbox-signing-secret"
_CODES = {"UNAUTHORIZED": "E0401", "OUT_OF_RETENTION": "E1003", "INVALID_RANGE": "E1001",
          "INVALID_PARAMETER": "E1002", "MISSING_PARAMETER": "E1002", "INVALID_TOKEN": "E1004",
          "RATE_LIMITED": "E0429", "INJECTED": "E0500"}


def canonical_query(params: Iterable[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params))


def signature(secret: str, method: str, path: str, params: Iterable[tuple[str, str]], timestamp: int) -> str:
    text = f"{method.upper()}\n{path}\n{canonical_query(params)}\n{timestamp}"
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def sign(key_id: str, secret: str, method: str, path: str, params: dict[str, str], timestamp: int) -> dict[str, str]:
    """The three headers a vendor-4 request needs."""
    return {"X-V4-Key": key_id, "X-V4-Timestamp": str(timestamp),
            "X-V4-Signature": signature(secret, method, path, params.items(), timestamp)}


def utc_ms(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _utc(text: str) -> datetime:
    if not text.endswith("Z"):
        raise ValueError("a UTC time ending in Z is required")
    return datetime.fromisoformat(text)


class Vendor4Platform(VendorPlatform):
    vendor = "vendor4"
    seed = 4
    tz = LISBON
    meter_format = "V4-{:07d}"
    site_format = "PT0002{:012d}"
    max_page_size = 1000

    def __init__(self, meters: int = 1000, *, key_id: str = KEY_ID, secret: str = SECRET, max_skew: float = 300,
                 **options: Any) -> None:
        super().__init__(meters, **options)
        self.key_id, self.secret, self.max_skew = key_id, secret, max_skew

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v4/readings", self.guard("readings", self._readings))

    def error(self, status: int, code: str, message: str) -> web.Response:
        return web.json_response({"status": "ERROR", "errorCode": _CODES.get(code, f"E0{status}"), "message": message},
                                 status=status)

    def authorize(self, request: web.Request, endpoint: str) -> None:
        key, stamp, given = (request.headers.get(h, "") for h in ("X-V4-Key", "X-V4-Timestamp", "X-V4-Signature"))
        if key != self.key_id or not stamp.isdigit():
            raise Refusal(401, "UNAUTHORIZED", "unknown key or missing timestamp")
        if abs(int(stamp) - time.time()) > self.max_skew:  # the caller signs with real time
            raise Refusal(401, "UNAUTHORIZED", f"timestamp more than {self.max_skew:g} s from server time")
        expected = signature(self.secret, request.method, request.path, request.query.items(), int(stamp))
        if not hmac.compare_digest(expected, given):
            raise Refusal(401, "UNAUTHORIZED", "signature mismatch")

    async def _readings(self, request: web.Request) -> web.Response:
        start = parse_or_refuse(_utc, required(request, "start"), "start")
        end = parse_or_refuse(_utc, required(request, "end"), "end")
        self.check_retention(start, end)
        size = query_int(request, "maxResults", 500, 1, self.max_page_size)
        token = request.query.get("continuationToken")
        position = 0
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
                position = int(state["p"])
                if state["w"] != [start.isoformat(), end.isoformat()]:
                    raise ValueError("token of another window")
            except (ValueError, KeyError, TypeError, binascii.Error):
                raise Refusal(400, "INVALID_TOKEN", "continuationToken is not valid for this request") from None
        window = self.source.window(start, end)
        total = self.source.meters * window.count
        last = min(position + size, total)
        body: dict[str, Any] = {"readings": [self.record(self.source.at(window, p)) for p in range(position, last)]}
        if last < total:
            state = {"p": last, "w": [start.isoformat(), end.isoformat()]}
            body["continuationToken"] = base64.urlsafe_b64encode(json.dumps(state).encode()).decode().rstrip("=")
        return web.json_response(body)

    def records(self, start: datetime, end: datetime, meters: range | None = None) -> list[dict[str, Any]]:
        """Vendor-4 records of [start, end) for `meters` (all by default): what the MQTT feed publishes."""
        return [self.record(r) for r in self.source.readings(start, end, meters)]

    @staticmethod
    def record(reading: Reading) -> dict[str, Any]:
        meter = reading.meter
        if meter.medium == "gas":
            energy = {"value": reading.milli / 1000, "unit": "m3"}
        elif meter.profile == "business":
            energy = {"value": reading.milli / 1_000_000, "unit": "MWh"}
        else:
            energy = {"value": reading.milli / 1000, "unit": "kWh"}
        return {"meter": meter.meter_id, "site": meter.site_id,
                "type": "GAS" if meter.medium == "gas" else "ELECTRICITY",
                "register": "3.0.0" if meter.medium == "gas" else "1.8.0",
                "intervalStart": utc_ms(reading.start), "intervalEnd": utc_ms(reading.end),
                "energy": energy, "quality": "VALID" if reading.quality == "actual" else "SUBSTITUTED"}
