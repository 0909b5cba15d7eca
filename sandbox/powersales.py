"""Power Sales as a real HTTP server: the poor, slow tariff API the hub must shield the website from.

Power Sales cannot change for five years, so the simulator keeps its worst habits on purpose: form POSTs
with cryptic field names, ISO-8859-1 XML with decimal commas, business errors as a code inside a 200 body,
seconds of latency, an HTML 503 beyond a few calls in flight, hangs ended by an upstream 504.

    sim = await PowerSalesSimulator(latency=0.3, capacity=4).start()
    POST sim.quote_url  HH_CNT=2&CONS_KWH_YR=3500&PLZ=10115&CTRY=DE&GAS_YN=J
    POST sim.offer_url  KUNNR=KC123456&VAR_ID=A&TERM_MM=24&GREEN_SHR=50&DISC_PCT=2,5&CONS_KWH_YR=120000&CTRY=DE

RC codes: 0 OK, 101 unknown postcode (well-formed, but starting 99/ZZ or in `unknown_postcodes`), 102 unknown
country, 103 missing or malformed field, 201 unknown key customer (KC9xxxxx), 202 variant not allowed (term
not 12/24/36, discount over the term's cap), 900 system error (injected). Prices are a pure function of the
inputs and `price_factor`; each answer has a fresh QUOTE_ID/OFFER_ID and VALID_UNTIL (UTC yyyyMMddHHmmss).

Run alone: `python -m sandbox.powersales [PORT [LATENCY [CAPACITY]]]` (defaults: a free port, 0.3 s, 4)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from xml.sax.saxutils import escape

from aiohttp import web

FAULT_KINDS = ("system_error", "http_500", "hang")
PATHS = {"quote": "/PSWeb/servlet/TarifAuskunft", "offer": "/PSWeb/servlet/KeyCustOffer"}
COUNTRIES = {  # CTRY -> (currency, postcode format, price level)
    "DE": ("EUR", r"\d{5}", "1.00"), "FR": ("EUR", r"\d{5}", "0.82"), "IT": ("EUR", r"\d{5}", "0.95"),
    "PT": ("EUR", r"\d{4}-\d{3}", "0.78"), "BE": ("EUR", r"\d{4}", "0.92"),
    "UK": ("GBP", r"[A-Z]{1,2}\d[A-Z\d]? \d[A-Z]{2}", "0.88"),
}
TARIFFS = (  # code, name, energy (E power, G gas, EG bundle), base per month, ct/kWh, term months, green %
    ("GREEN-12", "Ökostrom 12", "E", "11.90", "32.40", 12, 100),
    ("FLEX-24", "Flex Strom 24", "E", "9.90", "33.10", 24, 40),
    ("FIX-36", "Festpreis Strom 36", "E", "8.50", "34.80", 36, 30),
    ("NIGHT-12", "Wärmestrom Nacht 12", "E", "13.50", "27.90", 12, 50),  # only from 4000 kWh a year
    ("GAS-12", "Erdgas 12", "G", "14.00", "10.20", 12, 0),
    ("DUO-24", "Strom + Gas Duo 24", "EG", "21.90", "30.90", 24, 40),  # bundle: 7 % off, gas at GAS-12's rate
)
DISCOUNT_CAP = {12: Decimal(5), 24: Decimal(8), 36: Decimal(12)}  # key-customer offers, per term
HTML = {
    500: "<html><body><h1>500 Internal Server Error</h1><p>ORA-01555: snapshot too old</p></body></html>",
    503: "<html><head><title>503 Service Unavailable</title></head><body><h1>Service Unavailable</h1>"
         "<p>The server is temporarily unable to service your request.</p><hr><i>BIG-IP</i></body></html>",
    504: "<html><body><h1>504 Gateway Time-out</h1><p>upstream PSAPP01 did not answer</p></body></html>",
}


class PsError(Exception):
    """A business error `(rc, text)`, answered as RC/RC_TXT inside a 200 body: Power Sales' only error channel."""


def _money(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01"), ROUND_HALF_UP)).replace(".", ",")  # decimal comma, 2 places


def _tags(**fields: object) -> str:
    return "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in fields.items())


def _num(form: dict[str, str], name: str, low: int, high: int, default: int | None = None,
         whole: bool = True) -> Decimal:
    """A field as a number in [low, high] (whole unless told; decimal comma), the default when blank, or RC 103."""
    raw = form.get(name, "")
    if raw == "" and default is not None:
        return Decimal(default)
    with contextlib.suppress(InvalidOperation):
        value = Decimal(raw.replace(",", "."))
        if value.is_finite() and low <= value <= high and (not whole or value == value.to_integral_value()):
            return value
    raise PsError(103, f"Feld {name} ungültig: '{raw}'")


class PowerSalesSimulator:
    """Power Sales' tariff quote and key-customer offer servlets on one aiohttp app, with fault controls."""

    def __init__(self, *, latency: float = 0.3, capacity: int | None = 4, hang_seconds: float = 30.0,
                 valid_seconds: int = 900, unknown_postcodes: set[str] | None = None) -> None:
        self.default_latency, self.default_capacity = latency, capacity
        self.latency: dict[str, float] = {"*": latency}  # per operation ("quote", "offer"), "*" for both
        self.capacity, self.hang_seconds, self.valid_seconds = capacity, hang_seconds, valid_seconds
        self.unknown_postcodes = set(unknown_postcodes or ())
        self.price_factor = Decimal(1)
        self.host, self.port, self.url, self.quote_url, self.offer_url = "127.0.0.1", 0, "", "", ""
        self.requests: Counter[str] = Counter()  # per operation: every request that arrived
        self.answered: Counter[str] = Counter()  # per operation: answered with a PS_RESPONSE (any RC)
        self.refused = 0  # HTML 503s for being over capacity
        self.in_flight = self.max_in_flight = 0
        self._faults: list[tuple[str, float]] = []
        self._seq = itertools.count(1)
        self._wake, self._changed = asyncio.Event(), asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> "PowerSalesSimulator":
        app = web.Application()
        for op, path in PATHS.items():
            app.router.add_post(path, self._handle, name=op)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await self._site.start()
        self.host, self.port = host, self._runner.addresses[0][1]
        self.url = f"http://{host}:{self.port}"
        self.quote_url, self.offer_url = (self.url + path for path in PATHS.values())
        return self

    async def stop(self) -> None:
        self._release()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = self._site = None

    async def go_away(self) -> None:
        """Close the listening socket and drop open connections: callers get connection refused."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        for conn in list(self._runner.server.connections if self._runner and self._runner.server else ()):
            conn.force_close()

    async def come_back(self) -> None:
        """Listen again on the same host and port."""
        if self._runner is not None and self._site is None:
            self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
            await self._site.start()

    def set_latency(self, seconds: float, op: str | None = None) -> None:
        """Answer every request (or only `op`'s: "quote", "offer") after this many seconds."""
        self.latency[op or "*"] = max(0.0, seconds)

    def set_capacity(self, calls: int | None) -> None:
        """At most this many requests in flight; more get the balancer's HTML 503 (None: unlimited)."""
        self.capacity = calls

    def set_price_factor(self, factor: float | str) -> None:
        """Scale every price from now on (a price list change: cached quotes become wrong)."""
        self.price_factor = Decimal(str(factor))

    def fail_next(self, n: int = 1, kind: str = "system_error", seconds: float | None = None) -> None:
        """The next `n` requests within capacity misbehave as `kind` (FAULT_KINDS; "hang" for `seconds`)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r} (known: {', '.join(FAULT_KINDS)})")
        self._faults.extend([(kind, self.hang_seconds if seconds is None else seconds)] * n)

    def hang_next(self, n: int = 1, seconds: float | None = None) -> None:
        """The next `n` requests hold their slot silently for `seconds` (default hang_seconds), then get a 504."""
        self.fail_next(n, "hang", seconds)

    def reset_faults(self) -> None:
        """Healthy and at the constructor's latency and capacity again; waiting requests answer now."""
        self._faults.clear()
        self.latency, self.capacity = {"*": self.default_latency}, self.default_capacity
        self._release()

    def reset(self) -> None:
        """As new (between tests): faults reset, prices back to the list, counters zero."""
        self.reset_faults()
        self.requests, self.answered = Counter(), Counter()
        self.price_factor, self.refused, self.max_in_flight = Decimal(1), 0, self.in_flight

    async def wait_for(self, predicate: Callable[["PowerSalesSimulator"], bool], timeout: float = 10) -> None:
        """Return once `predicate(self)` holds (checked whenever a request arrives or ends)."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self))

    def _release(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _track(self, delta: int) -> None:
        self.in_flight += delta
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        async with self._changed:
            self._changed.notify_all()

    async def _handle(self, request: web.Request) -> web.Response:
        op = request.match_info.route.name or ""
        self.requests[op] += 1
        await self._track(+1)
        try:
            return await self._serve(op, request)
        finally:
            await self._track(-1)

    async def _serve(self, op: str, request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return web.Response(status=400, text="ERR 400 FORMAT: application/x-www-form-urlencoded expected")
        form = {k: str(v).strip() for k, v in (await request.post()).items()}
        if self.capacity is not None and self.in_flight > self.capacity:
            self.refused += 1
            return web.Response(status=503, text=HTML[503], content_type="text/html")
        fault, hang = self._faults.pop(0) if self._faults else (None, 0.0)
        await self._sleep(hang if fault == "hang" else self.latency.get(op, self.latency["*"]))
        if fault in ("hang", "http_500"):
            return web.Response(status=504 if fault == "hang" else 500, text=HTML[504 if fault == "hang" else 500],
                                content_type="text/html")
        try:
            if fault == "system_error":
                raise PsError(900, "Systemfehler PS-DB, bitte später erneut versuchen")
            rc, text, body = 0, "OK", self._quote(form) if op == "quote" else self._offer(form)
        except PsError as exc:
            (rc, text), body = exc.args, ""
        self.answered[op] += 1
        xml = f'<?xml version="1.0" encoding="ISO-8859-1"?><PS_RESPONSE>{_tags(RC=rc, RC_TXT=text)}{body}</PS_RESPONSE>'
        return web.Response(body=xml.encode("latin-1", "replace"), content_type="text/xml", charset="ISO-8859-1")

    def _place(self, form: dict[str, str], postcode_required: bool) -> tuple[str, Decimal]:
        """(currency, price level of country and postcode: +-4 % by region), or a PsError."""
        ctry, plz = form.get("CTRY", ""), form.get("PLZ", "")
        if ctry not in COUNTRIES:
            raise PsError(102, f"Land unbekannt: '{ctry}'")
        currency, pattern, level = COUNTRIES[ctry]
        if not plz and not postcode_required:
            return currency, Decimal(level) * self.price_factor
        if not re.fullmatch(pattern, plz):
            raise PsError(103, f"Feld PLZ ungültig: '{plz}'")
        if plz.startswith(("99", "ZZ")) or plz in self.unknown_postcodes:
            raise PsError(101, f"PLZ unbekannt: {plz} ({ctry})")
        region = int(hashlib.sha256(f"{ctry}{plz}".encode()).hexdigest()[:4], 16) % 81 - 40
        return currency, Decimal(level) * (1 + Decimal(region) / 1000) * self.price_factor

    def _stamp(self, prefix: str) -> dict[str, str]:
        """A fresh id (prefix, UTC time, sequence) and its validity end."""
        now, until = time.gmtime(), time.gmtime(time.time() + self.valid_seconds)
        return {f"{prefix}_ID": f"PS{prefix[0]}{time.strftime('%y%m%d%H%M%S', now)}{next(self._seq):06d}",
                "VALID_UNTIL": time.strftime("%Y%m%d%H%M%S", until)}

    def _quote(self, form: dict[str, str]) -> str:
        hh = int(_num(form, "HH_CNT", 1, 99))
        kwh = int(_num(form, "CONS_KWH_YR", 1, 100_000, default=1000 + 1000 * hh))
        gas_kwh = int(_num(form, "CONS_GAS_KWH_YR", 1, 200_000, default=5000 + 3000 * hh))
        if form.get("GAS_YN") not in ("J", "N"):
            raise PsError(103, f"Feld GAS_YN ungültig: '{form.get('GAS_YN', '')}' (J/N)")
        currency, level = self._place(form, postcode_required=True)
        gas_work = Decimal(TARIFFS[4][4]) * level
        rows = []
        for code, name, energy, base, work, term, green in TARIFFS:
            if ("G" in energy and form["GAS_YN"] == "N") or (code == "NIGHT-12" and kwh < 4000):
                continue
            b, w = Decimal(base) * level, Decimal(work) * level
            est = b * 12 + w * (gas_kwh if energy == "G" else kwh) / 100
            if energy == "EG":
                est = (est + gas_work * gas_kwh / 100) * Decimal("0.93")
            rows.append("<TARIF>" + _tags(TRF_CD=code, TRF_NM=name, SPARTE=energy, BASE_MON=_money(b),
                                          WORK_CT_KWH=_money(w), EST_YR=_money(est), TERM_MM=term,
                                          GREEN_PCT=green) + "</TARIF>")
        return (_tags(**self._stamp("QUOTE"), CUR=currency, CONS_KWH_YR=kwh)
                + f"<TARIF_LIST>{''.join(rows)}</TARIF_LIST>")

    def _offer(self, form: dict[str, str]) -> str:
        kunnr = form.get("KUNNR", "")
        if not re.fullmatch(r"KC\d{6}", kunnr):
            raise PsError(103, f"Feld KUNNR ungültig: '{kunnr}'")
        if kunnr.startswith("KC9"):
            raise PsError(201, f"Großkunde {kunnr} nicht gefunden")
        term, green = int(_num(form, "TERM_MM", 1, 120)), int(_num(form, "GREEN_SHR", 0, 100))
        kwh, disc = int(_num(form, "CONS_KWH_YR", 1, 10**8)), _num(form, "DISC_PCT", 0, 100, 0, whole=False)
        if term not in DISCOUNT_CAP:
            raise PsError(202, f"Variante nicht zulässig: Laufzeit {term} Monate")
        if disc > DISCOUNT_CAP[term]:
            raise PsError(202, f"Variante nicht zulässig: Rabatt {disc} % > {DISCOUNT_CAP[term]} % bei {term} Monaten")
        currency, level = self._place(form, postcode_required=False)
        factor = level * (1 - disc / 100) * (1 - Decimal(term) / 1200)
        base, work = Decimal("45.00") * factor, (Decimal("29.00") + Decimal(green) * Decimal("0.015")) * factor
        return "<OFFER>" + _tags(
            **self._stamp("OFFER"), KUNNR=kunnr, VAR_ID=form.get("VAR_ID", ""), TERM_MM=term, GREEN_SHR=green,
            DISC_PCT=_money(disc), CUR=currency, BASE_MON=_money(base), WORK_CT_KWH=_money(work),
            EST_YR=_money(base * 12 + work * kwh / 100)) + "</OFFER>"


async def _serve(port: int, latency: float, capacity: int) -> None:
    sim = await PowerSalesSimulator(latency=latency, capacity=capacity).start(port=port)
    print(f"quote: {sim.quote_url}\noffer: {sim.offer_url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


if __name__ == "__main__":
    port, latency, capacity = (sys.argv[1:] + ["0", "0.3", "4"][len(sys.argv) - 1:])[:3]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(int(port), float(latency), int(capacity)))
