"""Vendor 2: OAuth2 client credentials, next-URL cursors, readings nested per meter and channel,
decimal text in kWh / m³, compact `yyyyMMddHHmm` times in Europe/Rome local time.

    POST /oauth2/token   grant_type=client_credentials, client_id + client_secret in the form or
                         as HTTP basic auth -> {"access_token", "token_type": "Bearer", "expires_in", "scope"}
    GET  /v2/readings?from=202503010000&to=202504010000&limit=50     Authorization: Bearer <token>
    GET  <links.next>    (absolute URL with an opaque cursor; absent on the last page)

A page holds up to `limit` meters (max 200), each with all its values in the window:

    {"pod": "IT001E00000042", "meter": {"serial": "V2-0000042", "medium": "EE"},
     "channels": [{"code": "A+", "unit": "kWh", "values": [
         {"from": "202503300000", "to": "202503310000", "v": "12.345", "q": "M"}]}]}

Gas meters have medium GAS, channel VOL, unit m3. q is M (measured) or S (substituted). A time in the
hour repeated when clocks go back carries `fromDst`/`toDst` (true = the summer-time copy). Tokens
live `token_lifetime` seconds of `token_clock` (real time unless a test passes its own), or until
`expire_tokens()`; an expired one gets
401 with `WWW-Authenticate: Bearer error="invalid_token"`. Errors are RFC 7807 problem+json; a
`from` older than 3 months is 422.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
import secrets
import time
from datetime import datetime
from typing import Any, Callable
from zoneinfo import ZoneInfo

from aiohttp import web

from sandbox.meters.platform import Refusal, VendorPlatform, basic_credentials, parse_or_refuse, query_int, required
from sandbox.meters.readings import Reading

ROME = ZoneInfo("Europe/Rome")
CLIENT_ID = "plu-hub"
CLIENT_SECRET = "v2-sandbox-client-secret"
_Q = {"actual": "M", "estimated": "S"}


def compact(moment: datetime) -> str:
    return moment.astimezone(ROME).strftime("%Y%m%d%H%M")


def _local(text: str) -> datetime:
    if len(text) != 12 or not text.isdigit():
        raise ValueError("yyyyMMddHHmm expected")
    return datetime.strptime(text, "%Y%m%d%H%M").replace(tzinfo=ROME)


def _dst_flag(moment: datetime) -> bool | None:
    """True/False when the local wall time occurs twice (which copy it is), else None."""
    local = moment.astimezone(ROME)
    if local.replace(fold=1 - local.fold).utcoffset() == local.utcoffset():
        return None
    return bool(local.dst())


class Vendor2Platform(VendorPlatform):
    vendor = "vendor2"
    seed = 2
    tz = ROME
    meter_format = "V2-{:07d}"
    site_format = "IT001E{:08d}"
    max_page_size = 200

    def __init__(self, meters: int = 1000, *, client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET,
                 token_lifetime: float = 3600.0, token_clock: Callable[[], float] = time.monotonic,
                 **options: Any) -> None:
        super().__init__(meters, **options)
        self.client_id, self.client_secret = client_id, client_secret
        self.token_lifetime = token_lifetime
        self.token_clock = token_clock  # seconds; real time by default, whatever the data clock says
        self.tokens: dict[str, float] = {}  # access token -> expiry on token_clock
        self.tokens_issued = 0

    def expire_tokens(self) -> None:
        """Every token issued so far is expired from now on."""
        now = self.token_clock()
        self.tokens = {token: now for token in self.tokens}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/oauth2/token", self.guard("token", self._token, paged=False))
        app.router.add_get("/v2/readings", self.guard("readings", self._readings))

    def error(self, status: int, code: str, message: str) -> web.Response:
        if code in ("invalid_client", "unsupported_grant_type", "invalid_request"):  # RFC 6749 token errors
            return web.json_response({"error": code, "error_description": message}, status=status)
        body = {"type": f"https://api.vendor2.example/problems/{code.lower().replace('_', '-')}",
                "title": code.replace("_", " ").capitalize(), "status": status, "detail": message}
        return web.json_response(body, status=status, content_type="application/problem+json")

    def retention_refusal(self, oldest: datetime) -> tuple[int, str, str]:
        return 422, "OUT_OF_RETENTION", f"data before {compact(oldest)} (Europe/Rome) has been purged"

    def authorize(self, request: web.Request, endpoint: str) -> None:
        if endpoint == "token":
            return  # the token endpoint checks the client itself
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else ""
        expiry = self.tokens.get(token)
        if expiry is None:
            raise Refusal(401, "UNAUTHORIZED", "a valid bearer token is required",
                          {"WWW-Authenticate": 'Bearer realm="vendor2"'})
        if expiry <= self.token_clock():
            raise Refusal(401, "UNAUTHORIZED", "the access token expired",
                          {"WWW-Authenticate": 'Bearer realm="vendor2", error="invalid_token", '
                                               'error_description="The access token expired"'})

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if "Authorization" in request.headers:
            basic = basic_credentials(request.headers["Authorization"])
            if basic is None:
                raise Refusal(401, "invalid_client", "malformed basic authentication")
            client_id, secret = basic
        if form.get("grant_type") != "client_credentials":
            raise Refusal(400, "unsupported_grant_type", "only client_credentials is supported")
        if client_id != self.client_id or not hmac.compare_digest(str(secret or "").encode(), self.client_secret.encode()):
            raise Refusal(401, "invalid_client", "client authentication failed")
        token = secrets.token_urlsafe(24)
        self.tokens[token] = self.token_clock() + self.token_lifetime
        self.tokens_issued += 1
        return web.json_response({"access_token": token, "token_type": "Bearer",
                                  "expires_in": math.ceil(self.token_lifetime), "scope": "readings:read"})

    async def _readings(self, request: web.Request) -> web.Response:
        cursor = request.query.get("cursor")
        if cursor:
            try:
                state = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
                first, start, end = int(state["m"]), datetime.fromisoformat(state["s"]), datetime.fromisoformat(state["e"])
                limit = int(state["n"])
            except (ValueError, KeyError, TypeError, binascii.Error):
                raise Refusal(400, "INVALID_CURSOR", "the cursor is not valid") from None
        else:
            start = parse_or_refuse(_local, required(request, "from"), "from")
            end = parse_or_refuse(_local, required(request, "to"), "to")
            first, limit = 0, query_int(request, "limit", 50, 1, self.max_page_size)
        self.check_retention(start, end)
        window = self.source.window(start, end)
        last = min(first + limit, self.source.meters) if window.count else first
        data = [self.record([self.source.reading(self.source.meter(i), window, k) for k in range(window.count)])
                for i in range(first, last)]
        links = {"self": str(request.url)}
        if window.count and last < self.source.meters:
            state = {"m": last, "s": start.isoformat(), "e": end.isoformat(), "n": limit}
            token = base64.urlsafe_b64encode(json.dumps(state).encode()).decode().rstrip("=")
            links["next"] = f"{self.url}/v2/readings?cursor={token}"
        return web.json_response({"data": data, "links": links})

    @staticmethod
    def record(readings: list[Reading]) -> dict[str, Any]:
        """One meter's readings in the window as vendor 2 nests them."""
        meter = readings[0].meter
        gas = meter.medium == "gas"
        values = []
        for r in readings:
            value = {"from": compact(r.start), "to": compact(r.end), "v": f"{r.milli // 1000}.{r.milli % 1000:03d}", "q": _Q[r.quality]}
            for key, moment in (("fromDst", r.start), ("toDst", r.end)):
                flag = _dst_flag(moment)
                if flag is not None:
                    value[key] = flag
            values.append(value)
        return {"pod": meter.site_id, "meter": {"serial": meter.meter_id, "medium": "GAS" if gas else "EE"},
                "channels": [{"code": "VOL" if gas else "A+", "unit": "m3" if gas else "kWh", "values": values}]}
