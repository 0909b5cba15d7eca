"""A small real SOAP server for the soap adapter's tests: aiohttp + lxml, canned and computed envelopes.

Two services on one loopback port:

- `POST /erp-de`: the DE ERP of erp_de.wsdl (SOAP 1.1, WS-Security UsernameToken required, SAP-BAPI
  style Return rows; customer id `BIZERR` gets an error row inside a 200 answer).
- `POST /erp-fr`: the FR ERP of erp_fr.wsdl (SOAP 1.2; customer `PANNE` gets a Receiver fault,
  `INCONNU` a Sender fault).
  `BLOQUE` a Sender fault with a SOAP 1.2 Subcode chain and a long detail ending in a transaction id).
- `POST /sap`: an SAP RFC service of sap_isu.wsdl as SAP answers (SOAP 1.1, RETURN as BAPIRET2 rows):
  contract `BLOCKED…` gets a W row and two E rows in a 200, `ABORT…` an A row, `EMPTY…` an empty RETURN,
  anything else an S row; BAPI_TRANSACTION_COMMIT answers one BAPIRET2 structure (E when
  `server.commit_fails`).
- `GET /wsdl/<file>`: serves a WSDL of this folder and counts the fetches (`server.fetches`).

`server.mode` makes every SOAP answer misbehave: `html503`, `html500`, `empty502`, `malformed`,
`slow`, `server_fault`, `hostile` (an entity-expansion bomb, status `server.hostile_status`),
`gateway500` (a 500 whose XML is no SOAP Fault, the transaction id past the 300th character); None
answers normally. Every SOAP request is kept in `server.requests`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiohttp import web
from lxml import etree

HERE = Path(__file__).resolve().parent

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
DE = "urn:plu:erp:de:vertrag:v1"
FR = "http://erp.plu.fr/abonnement/2024"
FR_ERR = "http://erp.plu.fr/erreurs/2024"
SAP = "urn:sap-com:document:sap:rfc:functions"
TRANSACTION = "TX-2025-03-0001-7f3a9c2e-41d8-4b6e-9a0c-5e7d2f1b8a64"
HOSTILE = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">'
           b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;">]><soap:Envelope xmlns:soap="'
           + SOAP11.encode() + b'"><soap:Body><x>&lol3;</x></soap:Body></soap:Envelope>')

USERNAME = "hub-de"
PASSWORD = "s3cret-de"

HTML_503 = b"<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head>" \
           b"<body><h1>Service Unavailable</h1><p>The ERP is overloaded.</p></body></html>"
HTML_500 = b"<html><head><title>Internal Server Error</title></head>" \
           b"<body><h1>Internal Server Error</h1><p>java.lang.NullPointerException at Foo</p></body></html>"


@dataclass
class Seen:
    """One SOAP request as the server saw it."""

    path: str
    headers: Any  # case-insensitive (CIMultiDict)
    body: bytes
    doc: etree._Element

    def find(self, xpath: str) -> str | None:
        found = self.doc.xpath(xpath, namespaces={"wsse": WSSE, "wsu": WSU, "de": DE, "fr": FR})
        if not found:
            return None
        node = found[0]
        return node if isinstance(node, str) else node.text


class SoapServer:
    def __init__(self) -> None:
        self.mode: str | None = None
        self.hostile_status = 200
        self.commit_fails = False
        self.slow_seconds = 2.0
        self.requests: list[Seen] = []
        self.fetches: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> "SoapServer":
        app = web.Application()
        app.router.add_get("/wsdl/{name}", self._wsdl)
        app.router.add_post("/erp-de", self._de)
        app.router.add_post("/erp-fr", self._fr)
        app.router.add_post("/sap", self._sap)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def reset(self) -> None:
        self.mode = None
        self.hostile_status = 200
        self.commit_fails = False
        self.requests.clear()

    # --- handlers ------------------------------------------------------------------------------

    async def _wsdl(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        path = HERE / name
        if not name.endswith(".wsdl") or not path.is_file():
            raise web.HTTPNotFound()
        self.fetches[request.path_qs] += 1
        return web.Response(body=path.read_bytes(), content_type="text/xml")

    async def _misbehave(self) -> web.Response | None:
        mode = self.mode
        if mode == "html503":
            return web.Response(status=503, body=HTML_503, content_type="text/html", headers={"Retry-After": "7"})
        if mode == "html500":
            return web.Response(status=500, body=HTML_500, content_type="text/html")
        if mode == "empty502":
            return web.Response(status=502)
        if mode == "malformed":
            return web.Response(status=200, body=b"<soap:Envelope xmlns:soap='" + SOAP11.encode() +
                                b"'><soap:Body><Broken>unclosed & wrong</soap:Body>", content_type="text/xml")
        if mode == "hostile":
            return web.Response(status=self.hostile_status, body=HOSTILE, content_type="text/xml")
        if mode == "gateway500":  # an API gateway's own XML error: no SOAP Fault in it
            body = ("<?xml version='1.0' encoding='utf-8'?><gatewayError><status>500</status><reason>"
                    + "Upstream ERP connection pool exhausted while waiting for a free work process; " * 4
                    + f"</reason><transactionId>{TRANSACTION}</transactionId></gatewayError>")
            return web.Response(status=500, body=body.encode(), content_type="text/xml")
        if mode == "slow":
            await asyncio.sleep(self.slow_seconds)
        return None

    async def _read(self, request: web.Request) -> Seen:
        body = await request.read()
        seen = Seen(request.path, request.headers.copy(), body, etree.fromstring(body))
        self.requests.append(seen)
        return seen

    async def _de(self, request: web.Request) -> web.Response:
        seen = await self._read(request)
        if (bad := await self._misbehave()) is not None:
            return bad
        if self.mode == "server_fault":
            return _fault11("soap:Server", "Backend system SAPR3 not reachable", "<Rfc>RFC_COMMUNICATION_FAILURE</Rfc>")
        user = seen.find("//wsse:UsernameToken/wsse:Username")
        password = seen.find("//wsse:UsernameToken/wsse:Password")
        if user != USERNAME or password != PASSWORD:
            return _fault11("soap:Client", "Authentication failed",
                            f"<AuthError><User>{user}</User><Reason>bad credentials</Reason></AuthError>")
        if seen.find("//wsse:Security/wsu:Timestamp/wsu:Created") is None:
            return _fault11("soap:Client", "Timestamp required", "")
        body = seen.doc.find(f"{{{SOAP11}}}Body")[0]
        op = etree.QName(body).localname
        if op == "CreateContract":
            c = body.find(f"{{{DE}}}Contract")
            customer = c.findtext(f"{{{DE}}}CustomerId")
            start = c.findtext(f"{{{DE}}}StartDate")
            total = sum((Decimal(m.findtext(f"{{{DE}}}Reading")) for m in c.iter(f"{{{DE}}}Meter")), Decimal("0"))
            if customer == "BIZERR":
                rows = ('<Return><Type>W</Type><Code>V1-010</Code><Message>Tariff is old</Message></Return>'
                        '<Return><Type>E</Type><Code>V1-404</Code>'
                        '<Message>Customer BIZERR is blocked for switching</Message></Return>')
                inner = rows
            else:
                inner = (f"<ContractId>DE-{customer}</ContractId><StartDate>{start}</StartDate>"
                         f"<CreatedAt>2025-03-01T10:15:00Z</CreatedAt><Amount>{total}</Amount>"
                         "<Return><Type>S</Type><Code>V1-000</Code><Message>Contract created</Message></Return>")
            return _ok11(f'<CreateContractResponse xmlns="{DE}">{inner}</CreateContractResponse>')
        if op == "GetContract":
            cid = body.findtext(f"{{{DE}}}ContractId")
            return _ok11(f'<GetContractResponse xmlns="{DE}"><ContractId>{cid}</ContractId><Status>ACTIVE</Status>'
                         "<Customer><Name>Erika Muster</Name><Email>erika@example.org</Email></Customer>"
                         "</GetContractResponse>")
        return _fault11("soap:Client", f"Unknown operation {op}", "")

    async def _sap(self, request: web.Request) -> web.Response:
        seen = await self._read(request)
        if (bad := await self._misbehave()) is not None:
            return bad
        body = seen.doc.find(f"{{{SOAP11}}}Body")[0]
        op = etree.QName(body).localname
        if op == "BAPI_TRANSACTION_COMMIT":
            row = (bapiret2("E", "BAPI", "001", "Commit work failed: update task terminated", tag="RETURN")
                   if self.commit_fails else bapiret2("", "", "", "", tag="RETURN"))
            return _ok11(f'<n0:BAPI_TRANSACTION_COMMITResponse xmlns:n0="{SAP}">{row}'
                         "</n0:BAPI_TRANSACTION_COMMITResponse>")
        contract = body.findtext("IV_CONTRACT") or ""
        doc = ""
        if contract.startswith("BLOCKED"):
            rows = (bapiret2("W", "ZISU", "108", f"Tarif für Vertrag {contract} läuft aus", contract)
                    + bapiret2("E", "ZISU", "042", f"Vertrag {contract} ist für Tarifwechsel gesperrt", contract)
                    + bapiret2("E", "ZISU", "001", "Wechselbeleg wurde nicht angelegt"))
        elif contract.startswith("ABORT"):
            rows = bapiret2("A", "ZISU", "900", "Verbuchung abgebrochen")
        elif contract.startswith("EMPTY"):
            rows, doc = "", f"SW{contract[-6:]:0>10}"
        else:
            doc = "SW4500000001"
            rows = bapiret2("S", "ZISU", "000", f"Wechselbeleg {doc} angelegt", doc)
        return _ok11(f'<n0:Z_ISU_TARIFF_SWITCHResponse xmlns:n0="{SAP}"><EV_SWITCH_DOC>{doc}</EV_SWITCH_DOC>'
                     f"<RETURN>{rows}</RETURN></n0:Z_ISU_TARIFF_SWITCHResponse>")

    async def _fr(self, request: web.Request) -> web.Response:
        seen = await self._read(request)
        if (bad := await self._misbehave()) is not None:
            return bad
        body = seen.doc.find(f"{{{SOAP12}}}Body")[0]
        ab = body.find(f"{{{FR}}}abonnement")
        client = ab.findtext(f"{{{FR}}}numeroClient")
        if self.mode == "server_fault" or client == "PANNE":
            return _fault12("soap:Receiver", "Base de données indisponible", "<code>DB-17</code>")
        if client == "INCONNU":
            return _fault12("soap:Sender", "Client inconnu", f"<numeroClient>{client}</numeroClient>")
        if client == "BLOQUE":  # SOAP 1.2 Subcode chain, and a detail longer than an error snippet
            subcodes = (f'<soap:Subcode><soap:Value xmlns:err="{FR_ERR}">err:ContratBloque</soap:Value>'
                        f'<soap:Subcode><soap:Value xmlns:err="{FR_ERR}">err:AuditEnCours</soap:Value>'
                        "</soap:Subcode></soap:Subcode>")
            detail = (f'<err:blocage xmlns:err="{FR_ERR}"><err:motif>'
                      + "Le contrat fait l'objet d'un contrôle de conformité en cours de traitement; " * 5
                      + f"</err:motif><err:idTransaction>{TRANSACTION}</err:idTransaction></err:blocage>")
            return _fault12("soap:Sender", "Contrat bloqué", detail, subcodes)
        options = "".join(f"<option>{o.text.upper()}</option>" for o in ab.iter(f"{{{FR}}}option"))
        return _ok12(
            f'<creerAbonnementReponse xmlns="{FR}"><numeroAbonnement>FR-{client}</numeroAbonnement>'
            f'<dateEffet>{ab.findtext(f"{{{FR}}}dateDebut")}</dateEffet>'
            "<horodatage>2025-03-01T10:15:00+01:00</horodatage><statut>EN_COURS</statut>"
            f"<options>{options}</options></creerAbonnementReponse>")


_BAPIRET2 = ("TYPE", "ID", "NUMBER", "MESSAGE", "LOG_NO", "LOG_MSG_NO", "MESSAGE_V1", "MESSAGE_V2", "MESSAGE_V3",
             "MESSAGE_V4", "PARAMETER", "ROW", "FIELD", "SYSTEM")


def bapiret2(kind: str, msg_id: str, number: str, message: str, v1: str = "", tag: str = "item") -> str:
    """One BAPIRET2 row as SAP serialises it: every field present, empty ones as <X/>."""
    values = {"TYPE": kind, "ID": msg_id, "NUMBER": number, "MESSAGE": message, "MESSAGE_V1": v1,
              "LOG_MSG_NO": "000000", "ROW": "0", "SYSTEM": "ISUCLNT100"}
    return f"<{tag}>" + "".join(f"<{f}>{values[f]}</{f}>" if values.get(f) else f"<{f}/>" for f in _BAPIRET2) \
        + f"</{tag}>"


def _ok11(inner: str) -> web.Response:
    body = f'<soap:Envelope xmlns:soap="{SOAP11}"><soap:Body>{inner}</soap:Body></soap:Envelope>'
    return web.Response(body=body.encode(), content_type="text/xml", charset="utf-8")


def _fault11(code: str, text: str, detail: str) -> web.Response:
    body = (f'<soap:Envelope xmlns:soap="{SOAP11}"><soap:Body><soap:Fault><faultcode>{code}</faultcode>'
            f"<faultstring>{text}</faultstring><detail>{detail}</detail></soap:Fault></soap:Body></soap:Envelope>")
    return web.Response(status=500, body=body.encode(), content_type="text/xml", charset="utf-8")


def _ok12(inner: str) -> web.Response:
    body = f'<soap:Envelope xmlns:soap="{SOAP12}"><soap:Body>{inner}</soap:Body></soap:Envelope>'
    return web.Response(body=body.encode(), content_type="application/soap+xml", charset="utf-8")


def _fault12(code: str, text: str, detail: str, subcodes: str = "") -> web.Response:
    body = (f'<soap:Envelope xmlns:soap="{SOAP12}"><soap:Body><soap:Fault>'
            f"<soap:Code><soap:Value>{code}</soap:Value>{subcodes}</soap:Code>"
            f'<soap:Reason><soap:Text xml:lang="fr">{text}</soap:Text></soap:Reason>'
            f"<soap:Detail>{detail}</soap:Detail></soap:Fault></soap:Body></soap:Envelope>")
    status = 400 if code.endswith("Sender") else 500
    return web.Response(status=status, body=body.encode(), content_type="application/soap+xml", charset="utf-8")
