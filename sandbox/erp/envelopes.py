"""The bytes a simulated ERP answers with: SOAP 1.1/1.2 envelopes and faults, and the HTML pages of a
misbehaving load balancer or application server, so the adapter meets what real ERPs send; and the
WS-Security check DE's gateway makes before anything else.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from aiohttp import web
from lxml import etree

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"

HTML_503 = ("<!DOCTYPE html><html><head><title>503 Service Temporarily Unavailable</title></head><body>"
            "<h1>Service Temporarily Unavailable</h1><p>The server is temporarily unable to service your request "
            "due to maintenance downtime or capacity problems. Please try again later.</p><hr>"
            "<address>Apache/2.4.57 Server</address></body></html>")
HTML_500 = ("<html><head><title>Error 500</title></head><body><h2>HTTP ERROR 500</h2>"
            "<p>java.lang.IllegalStateException: connection pool exhausted</p></body></html>")


def envelope_ns(soap: int) -> str:
    return SOAP11 if soap == 11 else SOAP12


def wsse_problem(doc: etree._Element, username: str, password: str) -> str | None:
    """Why a request's WS-Security UsernameToken is not accepted, or None when it is."""
    ns = {"wsse": WSSE, "wsu": WSU}
    user = doc.findtext(".//wsse:Security/wsse:UsernameToken/wsse:Username", namespaces=ns)
    given = doc.findtext(".//wsse:Security/wsse:UsernameToken/wsse:Password", namespaces=ns)
    if user is None:
        return "WS-Security UsernameToken required"
    if user != username or given != password:
        return f"Authentication failed for user {user}"
    return None


def ok(soap: int, inner: str) -> web.Response:
    """A 200 answer with `inner` as the Body's content."""
    ns, ctype = (SOAP11, "text/xml") if soap == 11 else (SOAP12, "application/soap+xml")
    body = f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{ns}"><soap:Body>{inner}' \
           "</soap:Body></soap:Envelope>"
    return web.Response(body=body.encode(), content_type=ctype, charset="utf-8")


def fault(soap: int, side: str, message: str, detail: str, lang: str = "en",
          subcode: tuple[str, str] | None = None) -> web.Response:
    """A SOAP fault: `side` is client, server or a SOAP 1.2 code such as VersionMismatch; a SOAP 1.2
    fault may carry `subcode` (namespace, local name), the application's own code under the standard one."""
    if soap == 11:
        fc = {"client": "soap:Client", "server": "soap:Server"}.get(side, f"soap:{side}")
        body = (f'<soap:Envelope xmlns:soap="{SOAP11}"><soap:Body><soap:Fault><faultcode>{fc}</faultcode>'
                f"<faultstring>{escape(message)}</faultstring><detail>{detail}</detail></soap:Fault>"
                "</soap:Body></soap:Envelope>")
        return web.Response(status=500, body=body.encode(), content_type="text/xml", charset="utf-8")
    fc = {"client": "soap:Sender", "server": "soap:Receiver"}.get(side, f"soap:{side}")
    body = (f'<soap:Envelope xmlns:soap="{SOAP12}"><soap:Body><soap:Fault>'
            f"<soap:Code><soap:Value>{fc}</soap:Value>{_subcode(subcode)}</soap:Code>"
            f'<soap:Reason><soap:Text xml:lang="{lang}">{escape(message)}</soap:Text></soap:Reason>'
            f"<soap:Detail>{detail}</soap:Detail></soap:Fault></soap:Body></soap:Envelope>")
    status = 400 if side == "client" else 500
    return web.Response(status=status, body=body.encode(), content_type="application/soap+xml", charset="utf-8")


def _subcode(subcode: tuple[str, str] | None) -> str:
    if subcode is None:
        return ""
    ns, local = subcode
    return f'<soap:Subcode><soap:Value xmlns:app="{escape(ns)}">app:{escape(local)}</soap:Value></soap:Subcode>'


def html(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html", headers=headers)
