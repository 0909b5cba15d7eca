"""Vendor 5: a Green Button Connect (NAESB REQ.21 ESPI) Data Custodian, strict where the standards are.

    POST /oauth/token   grant_type=client_credentials[&scope=FB=…]; the client authenticates with HTTP
                        Basic only (client_secret_basic: id and secret each form-urlencoded, then Basic,
                        RFC 6749 §2.3.1). Credentials in the body, a client assertion, two methods at
                        once or none: 401 {"error": "invalid_client"} with WWW-Authenticate: Basic.
                        -> {"access_token", "token_type": "Bearer", "expires_in", "scope",
                            "resourceURI", "authorizationURI"}
    GET  /DataCustodian/espi/1_1/resource/Batch/Subscription/{id}
           ?published-min=<RFC 3339>&published-max=<RFC 3339>&max-results=N[&start-index=K][&depth=D]
         Authorization: Bearer <token>; Accept must admit application/atom+xml (406 otherwise).

The answer is an Atom feed (application/atom+xml) of ESPI resources: LocalTimeParameters (Europe/
Paris: tzOffset 3600, dstOffset 3600, EU rules) on the first page, then per meter a UsagePoint (the site;
ServiceCategory kind 0 electricity or 1 gas), its MeterReading (the meter; `related` to its
ReadingType), the ReadingType and one IntervalBlock per Paris day (96 readings, 92 or 100 on the DST
days) of 15-minute IntervalReadings. Electricity is in Wh (uom 72, multiplier 0) with a timePeriod per
reading; gas in m³ × 10^-3 (uom 42, multiplier -3) without timePeriods (they follow each other at the
ReadingType's intervalLength, as ESPI allows). Estimated readings carry ReadingQuality 8; the rest
take the ReadingType's defaultQuality 14 (raw). published-min/max keep the intervals lying within
them; intervals that have not ended are not there yet.

Paging: `max-results` bounds the entries of a page, but a meter's entries never straddle pages (a page
holds at least one whole meter); the feed's `<link rel="next">` is the next page (`start-index` of
its first entry, which must begin a meter's entries). Errors of the resource server are a status and
a line of text (ESPI defines no error body); the token endpoint's are RFC 6749 JSON. `encoding`
picks the answer's bytes: utf-8 (charset in Content-Type), iso-8859-1 (declared only in the XML
declaration) or utf-16 (with a BOM), all with non-ASCII text in the titles.
"""

from __future__ import annotations

import hmac
import math
import secrets
import time
import uuid
from datetime import datetime, timedelta
from typing import Any, Callable
from urllib.parse import unquote_plus, urlencode
from xml.sax.saxutils import escape, quoteattr
from zoneinfo import ZoneInfo

from aiohttp import web

from sandbox.meters.platform import Refusal, VendorPlatform, basic_credentials, parse_or_refuse, query_int, required
from sandbox.meters.readings import Reading, Window

PARIS = ZoneInfo("Europe/Paris")
CLIENT_ID = "plu-hub"
CLIENT_SECRET = "v5 sandbox:s3cr=t+/é"  # characters that form-urlencoding changes, on purpose
SUBSCRIPTION = "5"
FEED_PATH = f"/DataCustodian/espi/1_1/resource/Batch/Subscription/{SUBSCRIPTION}"
PARAMS = frozenset({"published-min", "published-max", "updated-min", "updated-max", "max-results", "start-index",
                    "depth"})
ENCODINGS = ("utf-8", "iso-8859-1", "utf-16")
FIFTEEN_MINUTES = timedelta(minutes=15)
_OAUTH_ERRORS = ("invalid_client", "invalid_request", "unsupported_grant_type")


def rfc3339(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None or "T" not in text.upper():
        raise ValueError("an RFC 3339 date-time with an offset is required")
    return moment


class Vendor5Platform(VendorPlatform):
    vendor = "vendor5"
    seed = 5
    tz = PARIS
    meter_format = "FR5-MTR-{:06d}"
    site_format = "FR5-UP-{:06d}"
    max_page_size = 1000

    def __init__(self, meters: int = 1000, *, client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET,
                 token_lifetime: float = 3600.0, token_clock: Callable[[], float] = time.monotonic,
                 encoding: str = "utf-8", interval: timedelta = FIFTEEN_MINUTES, **options: Any) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}")
        super().__init__(meters, interval=interval, **options)
        self.client_id, self.client_secret = client_id, client_secret
        self.token_lifetime, self.token_clock = token_lifetime, token_clock
        self.encoding = encoding
        self.tokens: dict[str, float] = {}
        self.tokens_issued = 0
        self.refused_clients: list[str] = []  # why each refused token request was refused

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/oauth/token", self.guard("token", self._token, paged=False))
        app.router.add_get(FEED_PATH, self.guard("readings", self._feed))

    def error(self, status: int, code: str, message: str) -> web.Response:
        if code in _OAUTH_ERRORS:
            return web.json_response({"error": code, "error_description": message}, status=status)
        return web.Response(status=status, text=f"{status} {message}\n")

    def authorize(self, request: web.Request, endpoint: str) -> None:
        if endpoint == "token":
            return
        header = request.headers.get("Authorization", "")
        expiry = self.tokens.get(header[7:]) if header.startswith("Bearer ") else None
        if expiry is None or expiry <= self.token_clock():
            raise Refusal(401, "UNAUTHORIZED", "a valid bearer token is required",
                          {"WWW-Authenticate": 'Bearer realm="DataCustodian", error="invalid_token"'})

    # --- the authorization server ---------------------------------------------------------------

    def _refuse_client(self, why: str) -> Refusal:
        self.refused_clients.append(why)
        return Refusal(401, "invalid_client", why, {"WWW-Authenticate": 'Basic realm="DataCustodian"'})

    async def _token(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            raise Refusal(400, "invalid_request", "the token request must be application/x-www-form-urlencoded")
        form = await request.post()
        header = request.headers.get("Authorization")
        if "client_secret" in form or "client_assertion" in form:
            raise self._refuse_client("client credentials in the request body are not accepted; authenticate "
                                      "with HTTP Basic (client_secret_basic)")
        if header is None:
            raise self._refuse_client("client authentication with HTTP Basic is required")
        basic = basic_credentials(header)
        if basic is None:
            raise self._refuse_client("malformed HTTP Basic client authentication")
        client_id, secret = (unquote_plus(part) for part in basic)  # RFC 6749 §2.3.1: form-urlencoded
        if form.get("client_id", client_id) != client_id:
            raise Refusal(400, "invalid_request", "client_id in the body differs from the authenticated client")
        if form.get("grant_type") != "client_credentials":
            raise Refusal(400, "unsupported_grant_type", "only client_credentials is supported")
        if client_id != self.client_id or not hmac.compare_digest(secret.encode(), self.client_secret.encode()):
            raise self._refuse_client("client authentication failed")
        token = secrets.token_urlsafe(24)
        self.tokens[token] = self.token_clock() + self.token_lifetime
        self.tokens_issued += 1
        base = f"{request.url.origin()}/DataCustodian/espi/1_1/resource"
        return web.json_response({"access_token": token, "token_type": "Bearer",
                                  "expires_in": math.ceil(self.token_lifetime),
                                  "scope": form.get("scope") or "FB=4_5_15;IntervalDuration=900;BlockDuration=daily",
                                  "resourceURI": f"{base}/Batch/Subscription/{SUBSCRIPTION}",
                                  "authorizationURI": f"{base}/Authorization/{SUBSCRIPTION}"})

    # --- the resource server --------------------------------------------------------------------

    async def _feed(self, request: web.Request) -> web.Response:
        accept = request.headers.get("Accept", "*/*")
        if not any(kind.split(";")[0].strip() in ("application/atom+xml", "application/*", "*/*")
                   for kind in accept.split(",")):
            raise Refusal(406, "NOT_ACCEPTABLE", "this resource is application/atom+xml only")
        if unknown := sorted(set(request.query) - PARAMS):
            raise Refusal(400, "INVALID_PARAMETER", f"unknown query parameter {unknown[0]}")
        start = parse_or_refuse(rfc3339, required(request, "published-min"), "published-min")
        end = parse_or_refuse(rfc3339, required(request, "published-max"), "published-max")
        self.check_retention(start, end)
        size = query_int(request, "max-results", 100, 1, self.max_page_size)
        first = query_int(request, "start-index", 1, 1, 10**9)
        window = self.source.window(start, end)
        days = self.days(window)
        per_meter = 3 + len(days)
        if first != 1 and (first - 2) % per_meter:
            raise Refusal(400, "INVALID_PARAMETER", "start-index must begin a usage point's entries")
        meter = 0 if first == 1 else (first - 2) // per_meter
        room = size - (1 if first == 1 else 0)
        last = min(self.source.meters, meter + max(1, room // per_meter)) if days else meter
        entries = [self.local_time_entry(request)] if first == 1 else []
        for index in range(meter, last):
            entries.append(self.usage_point(index, window, days, request))
        more = bool(days) and last < self.source.meters
        next_link = ""
        if more:
            query = {k: v for k, v in request.query.items() if k != "start-index"}
            query["start-index"] = str(2 + last * per_meter)
            next_link = f'<link rel="next" href={quoteattr(f"{self.url}{FEED_PATH}?{urlencode(query)}")}/>'
        return self.atom(request, next_link, "".join(entries))

    def days(self, window: Window) -> list[tuple[int, int]]:
        """Reading index ranges [a, b) of the window, one per Paris day."""
        out: list[tuple[int, int]] = []
        last_day = None
        for k in range(window.count):
            day = window.interval(k)[0].astimezone(PARIS).date()
            if day == last_day:
                out[-1] = (out[-1][0], k + 1)
            else:
                out.append((k, k + 1))
                last_day = day
        return out

    def atom(self, request: web.Request, next_link: str, entries: str) -> web.Response:
        updated = self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        declaration = f'<?xml version="1.0" encoding="{self.encoding.upper()}"?>\n'
        text = (f'{declaration}<feed xmlns="http://www.w3.org/2005/Atom" xmlns:espi="http://naesb.org/espi">'
                f"<id>urn:uuid:00000000-0000-5000-8000-00000000000{SUBSCRIPTION}</id>"
                f"<title>Relevé de consommation, abonnement n°{SUBSCRIPTION}</title><updated>{updated}</updated>"
                f'<link rel="self" href={quoteattr(str(request.url))}/>{next_link}{entries}</feed>')
        if self.encoding == "utf-8":
            return web.Response(body=text.encode("utf-8"), content_type="application/atom+xml", charset="utf-8")
        body = text.encode("utf-16") if self.encoding == "utf-16" else text.encode("iso-8859-1")
        return web.Response(body=body, headers={"Content-Type": "application/atom+xml"})  # no charset: see the XML

    def _entry(self, path: str, up: str | None, title: str, content: str, related: tuple[str, ...] = ()) -> str:
        base = f"{self.url}/DataCustodian/espi/1_1/resource"
        links = f'<link rel="self" href="{base}{path}"/>' + (f'<link rel="up" href="{base}{up}"/>' if up else "")
        links += "".join(f'<link rel="related" href="{base}{r}"/>' for r in related)
        updated = self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        return (f"<entry><id>urn:uuid:{_uuid(path)}</id>{links}<title>{escape(title)}</title>"
                f'<published>{updated}</published><updated>{updated}</updated><content type="xml">{content}</content>'
                "</entry>")

    def local_time_entry(self, request: web.Request) -> str:
        # EU rules: last Sunday of March 02:00 and of October 03:00 local (ESPI DstRuleType bit fields)
        return self._entry("/LocalTimeParameters/1", "/LocalTimeParameters", "Heure légale, Europe/Paris",
                           '<LocalTimeParameters xmlns="http://naesb.org/espi"><dstEndRule>AE0E3000</dstEndRule>'
                           "<dstOffset>3600</dstOffset><dstStartRule>3E0E2000</dstStartRule><tzOffset>3600</tzOffset>"
                           "</LocalTimeParameters>")

    def usage_point(self, index: int, window: Window, days: list[tuple[int, int]], request: web.Request) -> str:
        meter = self.source.meter(index)
        gas = meter.medium == "gas"
        up, mr = f"/UsagePoint/{meter.site_id}", f"/UsagePoint/{meter.site_id}/MeterReading/{meter.meter_id}"
        rt = f"/ReadingType/{'G' if gas else 'E'}900"
        parts = [
            self._entry(up, "/UsagePoint", "Point de livraison",
                        f'<UsagePoint xmlns="http://naesb.org/espi"><ServiceCategory><kind>{1 if gas else 0}</kind>'
                        "</ServiceCategory><status>1</status></UsagePoint>"),
            self._entry(mr, f"{up}/MeterReading", "Compteur de gaz" if gas else "Compteur électrique",
                        '<MeterReading xmlns="http://naesb.org/espi"/>', (f"{mr}/IntervalBlock", rt)),
            self._entry(rt, "/ReadingType", "Type de relevé", reading_type(gas)),
        ]
        for number, (a, b) in enumerate(days, 1):
            readings = [self.source.reading(meter, window, k) for k in range(a, b)]
            parts.append(self._entry(f"{mr}/IntervalBlock/{number}", f"{mr}/IntervalBlock", "Bloc d'intervalles",
                                     interval_block(readings, gas)))
        return "".join(parts)


def reading_type(gas: bool) -> str:
    if gas:  # m³ × 10^-3 (dm³), natural gas
        fields = ("<accumulationBehaviour>4</accumulationBehaviour><commodity>7</commodity>"
                  "<defaultQuality>14</defaultQuality><flowDirection>1</flowDirection>"
                  "<intervalLength>900</intervalLength><powerOfTenMultiplier>-3</powerOfTenMultiplier>"
                  "<uom>42</uom>")
    else:  # Wh, electricity, forward (delivered to the customer)
        fields = ("<accumulationBehaviour>4</accumulationBehaviour><commodity>1</commodity>"
                  "<dataQualifier>12</dataQualifier><defaultQuality>14</defaultQuality><flowDirection>1</flowDirection>"
                  "<intervalLength>900</intervalLength><kind>12</kind><phase>769</phase>"
                  "<powerOfTenMultiplier>0</powerOfTenMultiplier><timeAttribute>0</timeAttribute><uom>72</uom>")
    return f'<ReadingType xmlns="http://naesb.org/espi">{fields}</ReadingType>'


def interval_block(readings: list[Reading], gas: bool) -> str:
    start = int(readings[0].start.timestamp())
    duration = int(readings[-1].end.timestamp()) - start
    out = [f'<IntervalBlock xmlns="http://naesb.org/espi"><interval><duration>{duration}</duration>'
           f"<start>{start}</start></interval>"]
    for r in readings:
        quality = "<ReadingQuality><quality>8</quality></ReadingQuality>" if r.quality == "estimated" else ""
        period = "" if gas else (f"<timePeriod><duration>{int((r.end - r.start).total_seconds())}</duration>"
                                 f"<start>{int(r.start.timestamp())}</start></timePeriod>")
        out.append(f"<IntervalReading>{quality}{period}<value>{r.milli}</value></IntervalReading>")
    return "".join(out) + "</IntervalBlock>"


def _uuid(path: str) -> str:
    """A persistent, name-based (v5-shaped) UUID per resource path, as Green Button asks."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"plu-sandbox-vendor5:{path}"))
