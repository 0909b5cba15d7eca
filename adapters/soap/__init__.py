"""SOAP endpoints (the country ERPs) as flow call targets, built on zeep's AsyncClient.

Importing this package registers the `soap` adapter; the names below are what callers and tests use.
"""

from adapters.soap.adapter import SoapAdapter
from adapters.soap.config import BusinessErrorRule, SoapEndpointConfig, WsSecurity
from adapters.soap.rules import business_error, refusals
from adapters.soap.jsonable import to_jsonable
from adapters.soap.redaction import REDACTED, redact
from adapters.soap.transport import log
from adapters.soap.wsdl import ROOT, clear_wsdl_cache, wsdl_location

__all__ = ["REDACTED", "ROOT", "BusinessErrorRule", "SoapAdapter", "SoapEndpointConfig", "WsSecurity",
           "business_error", "clear_wsdl_cache", "refusals", "log", "redact", "to_jsonable", "wsdl_location"]
