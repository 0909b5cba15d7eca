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
- invoices and payments changed since a timestamp, paged in the dialect's style; a few are seeded,
  `add_invoice()` / `add_payment()` add or touch more.

Observation: `calls` (WSDL operation -> normal answers), `requests`, `in_flight`, and for polling
`status_calls` (switch reference -> status requests received, faults and 503s included) and
`max_parallel_status` (the most status requests for one reference in flight at once, over all references;
a hub that never polls one switch twice in parallel keeps it at 1). `reset_counters()` zeroes them.

Fault controls: `fail_next(n, kind)` (FAULT_KINDS), `set_latency(s)`, `set_capacity(n)` (more calls in flight
answer an HTML 503, the overloaded balancer page), `go_away()` / `come_back()` (close and reopen the
listening socket on the same port), `reset_faults()`.

Run alone: `python -m sandbox.erp.simulator de --port 8081 [--delay 5]`.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from pathlib import Path

from aiohttp import web
from lxml import etree

from sandbox.erp import envelopes
from sandbox.erp.book import ErpBook, Refusal
from sandbox.erp.dialects import DIALECTS

HERE = Path(__file__).resolve().parent

FAULT_KINDS = ("server_fault", "client_fault", "html_503", "html_500", "slow")
DEFAULT_TARIFFS = frozenset({"GREEN-12", "FLEX-24", "FIX-36", "NIGHT-12"})
DEFAULT_USERNAME = "hub-de"
DEFAULT_PASSWORD = "sandbox-de-secret"
BACKEND_DOWN = {"de": "RFC_COMMUNICATION_FAILURE: backend ISU not reachable", "fr": "Base de données indisponible",
                "it": "Servizio di backend non disponibile", "pt": "Base de dados indisponível",
                "uk": "Billing engine unavailable"}
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)

__all__ = ["FAULT_KINDS", "ErpSimulator", "Refusal"]


class ErpSimulator(ErpBook):
    """A country ERP (de, fr, it, pt, uk) over SOAP on one aiohttp app."""

    def __init__(self, country: str, *, switch_delay: float = 2.0, tariffs: frozenset[str] | set[str] | None = None,
                 username: str = DEFAULT_USERNAME, password: str = DEFAULT_PASSWORD, capacity: int | None = None,
                 slow_seconds: float = 5.0, seed_invoices: bool = True) -> None:
        if country.lower() not in DIALECTS:
            raise ValueError(f"unknown country {country!r} (known: {', '.join(DIALECTS)})")
        super().__init__(DIALECTS[country.lower()], switch_delay,
                         frozenset(tariffs) if tariffs is not None else DEFAULT_TARIFFS)
        self.username = username
        self.password = password
        self.capacity = capacity
        self.slow_seconds = slow_seconds
        self.latency = 0.0
        self.url = ""
        self.wsdl_url = ""
        self.host = "127.0.0.1"
        self.port = 0
        # observation and faults
        self.calls: Counter[str] = Counter()  # WSDL operation name -> SOAP requests answered normally
        self.requests = 0
        self.in_flight = 0
        self.status_calls: Counter[str] = Counter()  # switch reference -> status requests received
        self.max_parallel_status = 0  # most status requests for one reference in flight at once
        self._status_in_flight: Counter[str] = Counter()
        self._faults: list[str] = []
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._wake = asyncio.Event()
        if seed_invoices:  # seeds the payments of those invoices too
            self.seed()

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

    # --- observation -------------------------------------------------------------------------

    def reset_counters(self) -> None:
        """Zero the call counters (calls, requests, status_calls, max_parallel_status)."""
        self.calls.clear()
        self.requests = 0
        self.status_calls.clear()
        self.max_parallel_status = 0

    def _status_ref(self, raw: bytes) -> str | None:
        """The switch reference when `raw` is a status request, else None (never raises)."""
        d = self.dialect
        try:
            body = etree.fromstring(raw, _PARSER).find(f"{{{envelopes.envelope_ns(d.soap)}}}Body")
            element = body[0] if body is not None and len(body) else None
            op = d.ops.get(etree.QName(element).localname) if element is not None else None
            return op.parse(element, d).get("ref") if op is not None and op.kind == "status" else None
        except Exception:
            return None

    # --- HTTP --------------------------------------------------------------------------------

    async def _wsdl(self, request: web.Request) -> web.Response:
        text = (HERE / self.dialect.wsdl).read_text(encoding="utf-8")
        text = text.replace("http://127.0.0.1:9/erp", self.address)
        return web.Response(text=text, content_type="text/xml", charset="utf-8")

    async def _soap(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.in_flight += 1
        ref: str | None = None
        try:
            body = await request.read()
            if (ref := self._status_ref(body)) is not None:
                self.status_calls[ref] += 1
                self._status_in_flight[ref] += 1
                self.max_parallel_status = max(self.max_parallel_status, self._status_in_flight[ref])
            if self.capacity is not None and self.in_flight > self.capacity:
                await self._sleep(min(self.latency, 0.05))
                return envelopes.html(503, envelopes.HTML_503, {"Retry-After": "2"})
            if self.latency:
                await self._sleep(self.latency)
            fault = self._faults.pop(0) if self._faults else None
            if fault == "html_503":
                return envelopes.html(503, envelopes.HTML_503, {"Retry-After": "2"})
            if fault == "html_500":
                return envelopes.html(500, envelopes.HTML_500)
            if fault == "slow":
                await self._sleep(self.slow_seconds)
            return self._answer(body, fault)
        finally:
            self.in_flight -= 1
            if ref is not None:
                self._status_in_flight[ref] -= 1

    def _answer(self, raw: bytes, fault: str | None) -> web.Response:
        d = self.dialect
        env_ns = envelopes.envelope_ns(d.soap)
        try:
            doc = etree.fromstring(raw, _PARSER)
        except etree.XMLSyntaxError as exc:
            return self._fault("client", "MALFORMED", f"XML not well-formed: {exc}")
        if doc.tag != f"{{{env_ns}}}Envelope":
            if d.soap == 11:
                return self._fault("client", "VERSION", "Expected a SOAP 1.1 envelope")
            return self._fault("VersionMismatch", "VERSION", "Expected a SOAP 1.2 envelope")
        if fault == "server_fault":
            return self._fault("server", "BACKEND", BACKEND_DOWN[self.country])
        if fault == "client_fault":
            return self._fault("client", "REJECTED", "Request rejected by ERP gateway")
        if d.ws_security and (problem := envelopes.wsse_problem(doc, self.username, self.password)):
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
            result = self.run(op.kind, args)
        except Refusal as ref:
            if d.refusal_rows is not None:
                rows = d.refusal_rows(ref.code, ref.message)
                return envelopes.ok(d.soap, f'<{op.response} xmlns="{d.ns}">{rows}</{op.response}>')
            return self._fault("client", ref.code, ref.message)
        result.setdefault("request_id", args.get("request_id"))
        self.calls[d.operation_names[op.kind]] += 1
        return envelopes.ok(d.soap, f'<{op.response} xmlns="{d.ns}">{op.render(result, d)}</{op.response}>')

    def _fault(self, side: str, code: str, message: str) -> web.Response:
        lang = {"fr": "fr", "pt": "pt"}.get(self.country, "en")
        d = self.dialect  # SOAP 1.2 ERPs name their own code as the Subcode of the standard one
        subcode = (d.ns, code) if d.soap == 12 and side in ("client", "server") else None
        return envelopes.fault(d.soap, side, message, d.fault_detail(code, message), lang, subcode)


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
