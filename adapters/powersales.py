"""Power Sales (tariffs, discounts, bundles) as a call target: the adapter owns its poor wire.

Power Sales stays for five years and cannot change: form POSTs with cryptic field names and J/N flags,
ISO-8859-1 XML answers with decimal commas and yyyyMMddHHmmss times, business errors as an RC code
inside a 200 body, seconds of latency, an HTML 503 from its balancer beyond a few calls in flight, and
hangs ended by an upstream 504. Flows send and get clean JSON (`QuoteRequest`, `OfferRequest` below;
answers with numbers and ISO UTC times) and see failures only as engine.errors classes:

    RC 0                      the answer as JSON-ready data
    RC 1xx / 2xx              BusinessError (permanent), `code` and `text` set, message "RC 202: <text>"
    RC 9xx                    TargetServerError (transient: "Systemfehler, bitte später erneut")
    HTML 503, 429             Throttled (with Retry-After when sent)
    other 5xx (500, 504)      TargetServerError
    other non-2xx             TargetRejected (our request is wrong: fix the adapter, not the message)
    not XML / no RC           TargetServerError (a gateway page, a cut answer: may be fine next time)
    RC 0 without its fields   UnparseablePayload (Power Sales broke its own contract)
    deadline passed           TargetTimeout; connection refused or dropped: TargetUnavailable

Power Sales keeps working on a request the caller gave up on, and such a request still holds one of its
few slots: a new request in that slot would be refused with a 503. So a call whose deadline passes
answers TargetTimeout at once, but its HTTP exchange goes on in the background holding one of the
adapter's own `max_concurrency` slots until Power Sales answers it (at most `release_after`). And a call
left with less than `min_time_left` of its deadline after waiting for a slot is not started at all.
"""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine.adapter import Adapter, CallContext, EndpointConfig
from adapters.http import http_url, parse_retry_after, snippet
from engine.durations import Duration
from engine.errors import (BusinessError, SlotsBusy, RoutingError, TargetRejected, TargetServerError, TargetTimeout,
                           TargetUnavailable, Throttled, UnparseablePayload, ValidationFailed)
from engine.registry import register
from engine.tasks import cancel_and_wait

ENERGY = {"E": "electricity", "G": "gas", "EG": "electricity+gas"}


class PowerSalesConfig(EndpointConfig):
    """The Power Sales servlets: one base URL, the two servlet paths, and how hard to push it."""

    base_url: str = Field(description="Scheme, host and port of Power Sales.", examples=["http://127.0.0.1:18110"])
    timeout: Duration = Field(2.0, description="Whole-call deadline when the flow step sets none (slot wait "
                              "included).", examples=["2s"])
    quote_path: str = Field("/PSWeb/servlet/TarifAuskunft", description="Servlet of the tariff quote.")
    offer_path: str = Field("/PSWeb/servlet/KeyCustOffer", description="Servlet of key-customer offers.")
    min_time_left: Duration = Field(
        0.25, description="A call is not started with less of its deadline left than this (after waiting for a "
        "slot): it could not finish, yet would hold a Power Sales slot; it fails as Throttled at once.",
        examples=["250ms"])
    release_after: Duration = Field(
        60.0, description="A call given up on keeps its slot until Power Sales answers it, at most this long.",
        examples=["60s"])
    max_connections: int = Field(8, ge=1, le=256, description="Pooled keep-alive connections to Power Sales.")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        return http_url(v).rstrip("/")


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key would silently change the price


class QuoteRequest(_Payload):
    """Operation `quote`: the website's tariff lookup, already normalised by the flow."""

    households: int = Field(ge=1, le=99, description="People in the household (HH_CNT).")
    consumption_kwh: int | None = Field(None, ge=1, le=100_000, description="Electricity per year; "
                                        "None lets Power Sales estimate it from households (CONS_KWH_YR).")
    gas_kwh: int | None = Field(None, ge=1, le=200_000, description="Gas per year; None: estimated.")
    postcode: str = Field(min_length=1, description="Canonical postcode of the country (PLZ), e.g. SW1A 1AA.")
    country: str = Field(pattern=r"^[A-Z]{2}$", description="Power Sales' country code (CTRY), UK for Britain.")
    gas: bool = Field(description="Quote gas and bundles too (GAS_YN J/N).")


class OfferRequest(_Payload):
    """Operation `offer`: one key-customer offer variant."""

    customer_id: str = Field(description="Key-customer number (KUNNR), e.g. KC123456.")
    variant_id: str = Field(description="The CRM's variant id, echoed back (VAR_ID).")
    term_months: int = Field(ge=1, le=120, description="Contract term (TERM_MM): 12, 24 or 36 are offered.")
    green_share: int = Field(0, ge=0, le=100, description="Green electricity share in % (GREEN_SHR).")
    discount_pct: Decimal = Field(Decimal(0), ge=0, le=100, description="Discount in % (DISC_PCT).")
    consumption_kwh: int = Field(ge=1, description="Electricity per year (CONS_KWH_YR).")
    country: str = Field(pattern=r"^[A-Z]{2}$", description="Country code (CTRY).")
    postcode: str | None = Field(None, description="Postcode (PLZ); without it the country's price level.")


# --- wire format (pure) ------------------------------------------------------------------------


def comma(value: Decimal | int) -> str:
    """A number as Power Sales writes it: decimal comma, no exponent."""
    text = format(Decimal(value).normalize(), "f")
    return text.replace(".", ",")


def number(text: str | None) -> float:
    """'1.234,56' or '11,90' → 1234.56 / 11.9; ValueError when it is not a number."""
    raw = (text or "").strip()
    if "," in raw:
        raw = raw.replace(".", "").replace(",", ".")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"not a number: {text!r}") from None
    if not value.is_finite():
        raise ValueError(f"not a number: {text!r}")
    return float(value)


def iso_utc(stamp: str | None) -> str:
    """Power Sales' yyyyMMddHHmmss (UTC) as ISO 8601: 20260101120000 → 2026-01-01T12:00:00Z."""
    moment = datetime.strptime((stamp or "").strip(), "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def quote_form(req: QuoteRequest) -> dict[str, str]:
    form = {"HH_CNT": str(req.households), "CONS_KWH_YR": "" if req.consumption_kwh is None else str(req.consumption_kwh),
            "PLZ": req.postcode, "CTRY": req.country, "GAS_YN": "J" if req.gas else "N"}
    if req.gas_kwh is not None:
        form["CONS_GAS_KWH_YR"] = str(req.gas_kwh)
    return form


def offer_form(req: OfferRequest) -> dict[str, str]:
    form = {"KUNNR": req.customer_id, "VAR_ID": req.variant_id, "TERM_MM": str(req.term_months),
            "GREEN_SHR": str(req.green_share), "DISC_PCT": comma(req.discount_pct),
            "CONS_KWH_YR": str(req.consumption_kwh), "CTRY": req.country}
    if req.postcode:
        form["PLZ"] = req.postcode
    return form


def _text(node: ET.Element, tag: str) -> str:
    value = node.findtext(tag)
    if value is None:
        raise KeyError(tag)
    return value.strip()


def quote_answer(root: ET.Element) -> dict[str, Any]:
    tariffs = [{
        "code": _text(t, "TRF_CD"), "name": _text(t, "TRF_NM"), "energy": ENERGY.get(_text(t, "SPARTE"), _text(t, "SPARTE")),
        "base_per_month": number(_text(t, "BASE_MON")), "work_ct_per_kwh": number(_text(t, "WORK_CT_KWH")),
        "estimate_per_year": number(_text(t, "EST_YR")), "term_months": int(_text(t, "TERM_MM")),
        "green_pct": int(_text(t, "GREEN_PCT")),
    } for t in root.iter("TARIF")]
    return {"quote_id": _text(root, "QUOTE_ID"), "valid_until": iso_utc(_text(root, "VALID_UNTIL")),
            "currency": _text(root, "CUR"), "consumption_kwh": int(_text(root, "CONS_KWH_YR")), "tariffs": tariffs}


def offer_answer(root: ET.Element) -> dict[str, Any]:
    o = root.find("OFFER")
    if o is None:
        raise KeyError("OFFER")
    return {"offer_id": _text(o, "OFFER_ID"), "valid_until": iso_utc(_text(o, "VALID_UNTIL")),
            "customer_id": _text(o, "KUNNR"), "variant_id": _text(o, "VAR_ID"), "term_months": int(_text(o, "TERM_MM")),
            "green_share": int(_text(o, "GREEN_SHR")), "discount_pct": number(_text(o, "DISC_PCT")),
            "currency": _text(o, "CUR"), "base_per_month": number(_text(o, "BASE_MON")),
            "work_ct_per_kwh": number(_text(o, "WORK_CT_KWH")), "estimate_per_year": number(_text(o, "EST_YR"))}


class _Operation:
    __slots__ = ("name", "model", "form", "answer", "url")

    def __init__(self, name: str, model: type[_Payload], form: Callable[[Any], dict[str, str]],
                 answer: Callable[[ET.Element], dict[str, Any]], url: str) -> None:
        self.name, self.model, self.form, self.answer, self.url = name, model, form, answer, url


def parse_answer(where: str, op: _Operation, status: int, ctype: str, charset: str | None,
                 retry_after: str | None, body: bytes) -> dict[str, Any]:
    """One Power Sales HTTP answer as data, or the taxonomy's error for it."""
    if status != 200:
        text = f"{where} -> HTTP {status}"
        detail = snippet(body.decode(charset or "latin-1", "replace")) if body else ""
        text = f"{text}: {detail}" if detail else text
        if status in (429, 503):
            raise Throttled(text, retry_after=parse_retry_after(retry_after))
        if status >= 500:
            raise TargetServerError(text)
        raise TargetRejected(text, status=status)
    try:
        root = ET.fromstring(body if body.lstrip().startswith(b"<?xml") else body.decode(charset or "latin-1"))
    except (ET.ParseError, UnicodeDecodeError, ValueError):
        root = None
    rc_text = root.findtext("RC") if root is not None and root.tag == "PS_RESPONSE" else None
    if root is None or rc_text is None or not rc_text.strip().isdigit():
        shown = snippet(body.decode(charset or "latin-1", "replace")) or "(empty body)"
        raise TargetServerError(f"{where}: answer is not a Power Sales response ({ctype}): {shown}")
    rc, message = int(rc_text), (root.findtext("RC_TXT") or "").strip()
    if rc == 0:
        try:
            return op.answer(root)
        except (KeyError, ValueError) as exc:
            detail = f"no <{exc.args[0]}>" if isinstance(exc, KeyError) else str(exc)
            raise UnparseablePayload(f"{where}: RC 0 answer unreadable: {detail}") from None
    if 900 <= rc <= 999:
        raise TargetServerError(f"{where}: RC {rc}: {message}")
    err = BusinessError(f"{where}: RC {rc}: {message}")
    err.code, err.text = rc, message  # type: ignore[attr-defined]
    raise err


# --- the adapter -------------------------------------------------------------------------------


@register
class PowerSalesAdapter(Adapter):
    """Calls Power Sales' quote and offer servlets through one pooled aiohttp session."""

    name = "powersales"
    Config = PowerSalesConfig
    limits_itself = True  # a slot is held until Power Sales really answers, even after the caller gave up
    operations_doc = ("`quote` (payload: households, consumption_kwh, gas_kwh, postcode, country, gas) and "
                      "`offer` (customer_id, variant_id, term_months, green_share, discount_pct, "
                      "consumption_kwh, country, postcode).")

    config: PowerSalesConfig

    def __init__(self, endpoint: str, config: EndpointConfig, services: Any) -> None:
        super().__init__(endpoint, config, services)
        c = self.config
        self._ops = {
            "quote": _Operation("quote", QuoteRequest, quote_form, quote_answer, c.base_url + c.quote_path),
            "offer": _Operation("offer", OfferRequest, offer_form, offer_answer, c.base_url + c.offer_path),
        }
        self._slots = asyncio.Semaphore(c.max_concurrency) if c.max_concurrency else None
        self._session: aiohttp.ClientSession | None = None
        self._exchanges: set[asyncio.Task[Any]] = set()
        self.abandoned = 0  # calls given up on whose exchange was still running (for tests and ops)

    def check_operation(self, operation: str | None) -> str | None:
        if operation in self._ops:
            return None
        return f"endpoint {self.endpoint!r} needs operation quote or offer, got {operation!r}"

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.config.max_connections)
        self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None),
                                              raise_for_status=False)

    async def close(self) -> None:
        await cancel_and_wait(list(self._exchanges))
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def busy(self) -> int:
        """Exchanges with Power Sales running now (abandoned ones included)."""
        return len(self._exchanges)

    async def call(self, operation: str | None, payload: Any, ctx: CallContext) -> Any:
        if self._session is None:
            raise RuntimeError(f"powersales endpoint {self.endpoint!r} used before start()")
        op = self._ops.get(operation or "")
        if op is None:
            raise RoutingError(self.check_operation(operation) or "unknown operation")
        where = f"{self.endpoint}: {op.name}"
        try:
            form = op.form(op.model.model_validate(payload))
        except ValidationError as exc:
            details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}"
                                for e in exc.errors(include_url=False)[:5])
            raise ValidationFailed(f"{where}: {details}") from None
        budget = ctx.timeout if ctx.timeout and ctx.timeout > 0 else self.config.timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        if self._slots is not None:
            try:
                await asyncio.wait_for(self._slots.acquire(), budget)
            except TimeoutError:
                raise SlotsBusy(f"{where}: all {self.config.max_concurrency} Power Sales slots busy for {budget:.2f}s "
                                f"({self.busy} exchanges still running)") from None
        left = deadline - loop.time()
        if left < self.config.min_time_left:
            self._release()
            raise SlotsBusy(f"{where}: not started, {max(left, 0):.2f}s of {budget:.2f}s left (min_time_left "
                            f"{self.config.min_time_left:g}s)")
        task = loop.create_task(self._exchange(op, form, ctx.http_headers()))
        self._exchanges.add(task)
        task.add_done_callback(self._exchange_done)
        try:
            answer = await asyncio.wait_for(asyncio.shield(task), left)
        except TimeoutError:
            self.abandoned += 1
            raise TargetTimeout(f"{where}: no answer within {budget:.3g}s") from None
        except aiohttp.ClientConnectorError as exc:
            raise TargetUnavailable(f"{where}: {type(exc).__name__}: {snippet(str(exc))}") from exc
        except aiohttp.ClientResponseError as exc:
            raise TargetServerError(f"{where}: malformed HTTP answer: {snippet(str(exc))}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise TargetUnavailable(f"{where}: {type(exc).__name__}: {snippet(str(exc))}") from exc
        return parse_answer(where, op, *answer)

    async def _exchange(self, op: _Operation, form: dict[str, str], headers: dict[str, str]) -> tuple[Any, ...]:
        """One POST, run to its end even when the caller stopped waiting; holds a slot throughout."""
        assert self._session is not None
        async with asyncio.timeout(self.config.release_after):
            async with self._session.post(op.url, data=form, headers=headers, allow_redirects=False) as resp:
                body = await resp.read()
                return resp.status, resp.content_type, resp.charset, resp.headers.get("Retry-After"), body

    def _exchange_done(self, task: asyncio.Task[Any]) -> None:
        self._exchanges.discard(task)
        self._release()
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned exchange's failure is nobody's to raise

    def _release(self) -> None:
        if self._slots is not None:
            self._slots.release()
