"""One country's ERP as a real SOAP server: an aiohttp app on a loopback port with in-memory state.

    sim = await ErpSimulator("fr", switch_delay=0.2).start()
    sim.wsdl_url   # <url>/wsdl, soap:address rewritten to <url>/erp
    ...
    await sim.stop()

Behaviour (the same meaning in every country, the wire shape is the dialect's):

- submit a tariff switch: answers the ERP's switch reference, status PENDING. A second submit with the
  same request key (the dialect's: contract id + version, an explicit key element, a request id) answers
  the first switch again. Contract ids starting with BLOCKED are refused (a business error).
- switch status: PENDING until `switch_delay` seconds after submission, then COMPLETED, or FAILED with a
  reason when the tariff code is not in `tariffs`.
- upsert account: the ERP's own account key; the same CRM account id always gets the same key.
- invoices changed since a timestamp, paged; a few are seeded, `add_invoice()` adds or touches more.

Fault controls: `fail_next(n, kind)` (FAULT_KINDS), `set_latency(s)`, `set_capacity(n)` (more calls in flight
answer an HTML 503, the overloaded balancer page), `go_away()` / `come_back()` (close and reopen the
listening socket on the same port), `reset_faults()`.

Run alone: `python -m sandbox.erp.simulator de --port 8081 [--delay 5]`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web
from lxml import etree

from sandbox.erp.dialects import DIALECTS, Dialect

HERE = Path(__file__).resolve().parent

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"

FAULT_KINDS = ("server_fault", "client_fault", "html_503", "html_500", "slow")
DEFAULT_TARIFFS = frozenset({"GREEN-12", "FLEX-24", "FIX-36", "NIGHT-12"})
DEFAULT_USERNAME = "hub-de"
DEFAULT_PASSWORD = "sandbox-de-secret"

HTML_503 = ("<!DOCTYPE html><html><head><title>503 Service Temporarily Unavailable</title></head><body>"
            "<h1>Service Temporarily Unavailable</h1><p>The server is temporarily unable to service your request "
            "due to maintenance downtime or capacity problems. Please try again later.</p><hr>"
            "<address>Apache/2.4.57 Server</address></body></html>")
HTML_500 = ("<html><head><title>Error 500</title></head><body><h2>HTTP ERROR 500</h2>"
            "<p>java.lang.IllegalStateException: connection pool exhausted</p></body></html>")


class Refusal(Exception):
    """A business refusal: `code` and the dialect's message for it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Switch:
    ref: str
    contract: str
    tariff: str
    effective: str | None
    key: str
    submitted: float  # monotonic

    def state(self, delay: float, tariffs: frozenset[str], d: Dialect) -> tuple[str, str | None]:
        if time.monotonic() - self.submitted < delay:
            return "PENDING", None
        if self.tariff not in tariffs:
            return "FAILED", d.messages["unknown_tariff"].format(tariff=self.tariff)
        return "COMPLETED", None


@dataclass
class Invoice:
    number: str
    account: str
    amount: Decimal
    currency: str
    changed_at: datetime

    @property
    def changed_iso(self) -> str:
        return self.changed_at.isoformat().replace("+00:00", "Z")


def _when(text: str | None) -> datetime:
    if not text:
        return datetime.min.replace(tzinfo=timezone.utc)
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


class ErpSimulator:
    """A country ERP (de, fr, it, pt, uk) over SOAP on one aiohttp app."""

    def __init__(self, country: str, *, switch_delay: float = 2.0, tariffs: frozenset[str] | set[str] | None = None,
                 username: str = DEFAULT_USERNAME, password: str = DEFAULT_PASSWORD, capacity: int | None = None,
                 slow_seconds: float = 5.0, seed_invoices: bool = True) -> None:
        if country.lower() not in DIALECTS:
            raise ValueError(f"unknown country {country!r} (known: {', '.join(DIALECTS)})")
        self.dialect = DIALECTS[country.lower()]
        self.country = self.dialect.country
        self.switch_delay = switch_delay
        self.tariffs = frozenset(tariffs) if tariffs is not None else DEFAULT_TARIFFS
        self.username = username
        self.password = password
        self.capacity = capacity
        self.slow_seconds = slow_seconds
        self.latency = 0.0
        self.url = ""
        self.wsdl_url = ""
        self.host = "127.0.0.1"
        self.port = 0
        # state
        self.accounts: dict[str, dict[str, Any]] = {}  # crm id -> {"key", "name", "email"}
        self.switches: dict[str, Switch] = {}  # ref -> switch
        self._by_key: dict[str, str] = {}  # request key -> ref
        self.invoices: list[Invoice] = []
        self._account_seq = itertools.count(1)
        self._switch_seq = itertools.count(1)
        self._invoice_seq = itertools.count(1)
        # observation and faults
        self.calls: Counter[str] = Counter()  # WSDL operation name -> SOAP requests answered normally
        self.requests = 0
        self.in_flight = 0
        self._faults: list[str] = []
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._wake = asyncio.Event()
        if seed_invoices:
            self._seed()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> "ErpSimulator":
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_get("/wsdl", self._wsdl)
        app.router.add_post("/erp", self._soap)
        app.router.add_post("/", self._soap)  # the bare url works as the address too
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await self._site.start()
        self.host = host
        self.port = self._runner.addresses[0][1]
        self.url = f"http://{host}:{self.port}"
        self.wsdl_url = f"{self.url}/wsdl"
        return self

    async def stop(self) -> None:
        self._release()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def __aenter__(self) -> "ErpSimulator":
        return await self.start() if self._runner is None else self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def address(self) -> str:
        """The SOAP endpoint (what the WSDL's soap:address says)."""
        return f"{self.url}/erp"

    # --- fault controls ----------------------------------------------------------------------

    def fail_next(self, n: int = 1, kind: str = "server_fault") -> None:
        """The next `n` SOAP requests misbehave as `kind` (one of FAULT_KINDS)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r} (known: {', '.join(FAULT_KINDS)})")
        self._faults.extend([kind] * n)

    def set_latency(self, seconds: float) -> None:
        """Wait this long before answering every SOAP request."""
        self.latency = max(0.0, seconds)

    def set_capacity(self, calls: int | None) -> None:
        """At most this many SOAP calls in flight; more get the HTML 503 page (None: unlimited)."""
        self.capacity = calls

    def reset_faults(self) -> None:
        """Healthy again: queued faults, latency and capacity limits end; delayed answers go out now."""
        self._faults.clear()
        self.latency = 0.0
        self.capacity = None
        self._release()

    async def go_away(self) -> None:
        """Close the listening socket and drop open connections: callers get connection refused."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        if self._runner is not None and self._runner.server is not None:
            for conn in list(self._runner.server.connections):
                conn.force_close()

    async def come_back(self) -> None:
        """Listen again on the same host and port."""
        if self._runner is None:
            raise RuntimeError("simulator not started")
        if self._site is None:
            self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
            await self._site.start()

    def _release(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    # --- state -------------------------------------------------------------------------------

    def _seed(self) -> None:
        base = [("CRM-SEED-1", Decimal("84.20"), "2025-01-31T23:00:00Z"),
                ("CRM-SEED-1", Decimal("91.05"), "2025-02-28T23:00:00Z"),
                ("CRM-SEED-2", Decimal("142.99"), "2025-02-28T23:00:00Z"),
                ("CRM-SEED-2", Decimal("-12.50"), "2025-03-05T08:30:00Z"),
                ("CRM-SEED-3", Decimal("63.00"), "2025-03-31T22:00:00Z")]
        for crm, amount, when in base:
            self.add_invoice(crm, amount, when)

    def account_key(self, crm_id: str, name: str | None = None, email: str | None = None) -> tuple[str, bool]:
        """The ERP key of a CRM account, creating the account when new; (key, created)."""
        acc = self.accounts.get(crm_id)
        if acc is None:
            acc = self.accounts[crm_id] = {"key": self.dialect.account_key(next(self._account_seq)),
                                           "name": name, "email": email}
            return acc["key"], True
        if name:
            acc["name"] = name
        if email:
            acc["email"] = email
        return acc["key"], False

    def add_invoice(self, crm_id: str, amount: Decimal | str, changed_at: str | datetime | None = None,
                    currency: str | None = None, number: str | None = None) -> Invoice:
        """Add an invoice (or touch one with the same number); changed now unless given."""
        when = changed_at if isinstance(changed_at, datetime) else (
            _when(changed_at) if changed_at else datetime.now(timezone.utc).replace(microsecond=0))
        account, _ = self.account_key(crm_id)
        cur = currency or ("GBP" if self.country == "uk" else "EUR")
        num = number or f"{self.country.upper()}-INV-{next(self._invoice_seq):06d}"
        self.invoices = [i for i in self.invoices if i.number != num]
        inv = Invoice(num, account, Decimal(amount), cur, when)
        self.invoices.append(inv)
        return inv

    def submit(self, contract: str | None, tariff: str | None, effective: str | None, key: str | None) -> Switch:
        msg = self.dialect.messages
        for name, value in (("contract", contract), ("tariff", tariff)):
            if not value:
                raise Refusal("MISSING", msg["missing"].format(field=name))
        if contract.upper().startswith("BLOCKED"):  # type: ignore[union-attr]
            raise Refusal("BLOCKED", msg["blocked"].format(contract=contract))
        key = key or f"{contract}#{tariff}#{effective}"
        if key in self._by_key:
            return self.switches[self._by_key[key]]
        ref = self.dialect.switch_ref(next(self._switch_seq))
        sw = Switch(ref, contract, tariff, effective, key, time.monotonic())  # type: ignore[arg-type]
        self.switches[ref] = sw
        self._by_key[key] = ref
        return sw

    def status(self, ref: str | None) -> tuple[Switch, str, str | None]:
        sw = self.switches.get(ref or "")
        if sw is None:
            raise Refusal("NOT_FOUND", self.dialect.messages["not_found"].format(ref=ref))
        status, reason = sw.state(self.switch_delay, self.tariffs, self.dialect)
        return sw, status, reason

    def changed_invoices(self, since: str | None, offset: int = 0, size: int = 50,
                         after: str | None = None) -> dict[str, Any]:
        """Invoices changed after `since`, oldest first; by offset, or after the invoice number `after`."""
        rows = sorted((i for i in self.invoices if i.changed_at > _when(since)),
                      key=lambda i: (i.changed_at, i.number))
        if after is not None:
            offset = next((n + 1 for n, i in enumerate(rows) if i.number == after), len(rows))
        size = max(1, min(size, 500))
        page = rows[offset:offset + size]
        nxt = offset + size if offset + size < len(rows) else None
        return {"rows": page, "next": nxt, "total": len(rows), "offset": offset, "size": size}

    # --- HTTP --------------------------------------------------------------------------------

    async def _wsdl(self, request: web.Request) -> web.Response:
        text = (HERE / self.dialect.wsdl).read_text(encoding="utf-8")
        text = text.replace("http://127.0.0.1:9/erp", self.address)
        return web.Response(text=text, content_type="text/xml", charset="utf-8")

    async def _soap(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.in_flight += 1
        try:
            body = await request.read()
            if self.capacity is not None and self.in_flight > self.capacity:
                await self._sleep(min(self.latency, 0.05))
                return _html(503, HTML_503, {"Retry-After": "2"})
            if self.latency:
                await self._sleep(self.latency)
            fault = self._faults.pop(0) if self._faults else None
            if fault == "html_503":
                return _html(503, HTML_503, {"Retry-After": "2"})
            if fault == "html_500":
                return _html(500, HTML_500)
            if fault == "slow":
                await self._sleep(self.slow_seconds)
            return self._answer(body, fault)
        finally:
            self.in_flight -= 1

    def _answer(self, raw: bytes, fault: str | None) -> web.Response:
        d = self.dialect
        env_ns = SOAP11 if d.soap == 11 else SOAP12
        try:
            doc = etree.fromstring(raw, etree.XMLParser(resolve_entities=False, no_network=True))
        except etree.XMLSyntaxError as exc:
            return self._fault("client", "MALFORMED", f"XML not well-formed: {exc}")
        if doc.tag != f"{{{env_ns}}}Envelope":
            if d.soap == 11:
                return self._fault("client", "VERSION", "Expected a SOAP 1.1 envelope")
            return self._fault("VersionMismatch", "VERSION", "Expected a SOAP 1.2 envelope")
        if fault == "server_fault":
            return self._fault("server", "BACKEND", {"de": "RFC_COMMUNICATION_FAILURE: backend ISU not reachable",
                                                     "fr": "Base de données indisponible",
                                                     "it": "Servizio di backend non disponibile",
                                                     "pt": "Base de dados indisponível",
                                                     "uk": "Billing engine unavailable"}[self.country])
        if fault == "client_fault":
            return self._fault("client", "REJECTED", "Request rejected by ERP gateway")
        if d.ws_security and (problem := self._check_wsse(doc)):
            return self._fault("client", "AUTH", problem)
        body = doc.find(f"{{{env_ns}}}Body")
        if body is None or len(body) == 0:
            return self._fault("client", "NO_BODY", "Empty SOAP Body")
        element = body[0]
        qn = etree.QName(element)
        op = d.ops.get(qn.localname) if qn.namespace == d.ns else None
        if op is None:
            return self._fault("client", "UNKNOWN_OP", f"Unknown operation {qn.text}")
        args = op.parse(element, d)
        try:
            result = self._run(op.kind, args)
        except Refusal as ref:
            if d.return_table:
                row = (f"<Return><Type>E</Type><Id>ZISU</Id><Number>{escape(ref.code)}</Number>"
                       f"<Message>{escape(ref.message)}</Message></Return>")
                return self._ok(f'<{op.response} xmlns="{d.ns}">{row}</{op.response}>')
            return self._fault("client", ref.code, ref.message)
        result.setdefault("request_id", args.get("request_id"))
        self.calls[d.operation_names[op.kind]] += 1
        return self._ok(f'<{op.response} xmlns="{d.ns}">{op.render(result, d)}</{op.response}>')

    def _run(self, kind: str, a: dict[str, Any]) -> dict[str, Any]:
        if kind == "submit":
            sw = self.submit(a["contract"], a["tariff"], a["effective"], a["key"])
            _, status, reason = self.status(sw.ref)
            return {"ref": sw.ref, "status": status, "reason": reason}
        if kind == "status":
            sw, status, reason = self.status(a["ref"])
            return {"ref": sw.ref, "status": status, "reason": reason}
        if kind == "upsert":
            if not a["crm_id"]:
                raise Refusal("MISSING", self.dialect.messages["missing"].format(field="crm_id"))
            key, created = self.account_key(a["crm_id"], a["name"], a["email"])
            return {"key": key, "created": created}
        return self.changed_invoices(a["since"], a.get("offset", 0), a["size"], a.get("after"))

    def _check_wsse(self, doc: etree._Element) -> str | None:
        ns = {"wsse": WSSE, "wsu": WSU}
        user = doc.findtext(".//wsse:Security/wsse:UsernameToken/wsse:Username", namespaces=ns)
        password = doc.findtext(".//wsse:Security/wsse:UsernameToken/wsse:Password", namespaces=ns)
        if user is None:
            return "WS-Security UsernameToken required"
        if user != self.username or password != self.password:
            return f"Authentication failed for user {user}"
        return None

    # --- envelopes ---------------------------------------------------------------------------

    def _ok(self, inner: str) -> web.Response:
        ns, ctype = (SOAP11, "text/xml") if self.dialect.soap == 11 else (SOAP12, "application/soap+xml")
        body = f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{ns}"><soap:Body>{inner}' \
               "</soap:Body></soap:Envelope>"
        return web.Response(body=body.encode(), content_type=ctype, charset="utf-8")

    def _fault(self, side: str, code: str, message: str) -> web.Response:
        d = self.dialect
        detail = d.fault_detail(code, message)
        if d.soap == 11:
            fc = {"client": "soap:Client", "server": "soap:Server"}.get(side, f"soap:{side}")
            body = (f'<soap:Envelope xmlns:soap="{SOAP11}"><soap:Body><soap:Fault><faultcode>{fc}</faultcode>'
                    f"<faultstring>{escape(message)}</faultstring><detail>{detail}</detail></soap:Fault>"
                    "</soap:Body></soap:Envelope>")
            return web.Response(status=500, body=body.encode(), content_type="text/xml", charset="utf-8")
        fc = {"client": "soap:Sender", "server": "soap:Receiver"}.get(side, f"soap:{side}")
        lang = {"fr": "fr", "pt": "pt"}.get(self.country, "en")
        body = (f'<soap:Envelope xmlns:soap="{SOAP12}"><soap:Body><soap:Fault>'
                f"<soap:Code><soap:Value>{fc}</soap:Value></soap:Code>"
                f'<soap:Reason><soap:Text xml:lang="{lang}">{escape(message)}</soap:Text></soap:Reason>'
                f"<soap:Detail>{detail}</soap:Detail></soap:Fault></soap:Body></soap:Envelope>")
        status = 400 if side == "client" else 500
        return web.Response(status=status, body=body.encode(), content_type="application/soap+xml", charset="utf-8")


def _html(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html", headers=headers)


async def _serve(country: str, host: str, port: int, delay: float) -> None:
    sim = await ErpSimulator(country, switch_delay=delay).start(host, port)
    print(f"{country}: {sim.wsdl_url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("country", choices=sorted(DIALECTS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=2.0, help="switch_delay in seconds")
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args.country, args.host, args.port, args.delay))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
