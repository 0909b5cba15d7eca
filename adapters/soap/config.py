"""What a SOAP endpoint's `endpoints:` entry may say, validated before anything starts.

Kept apart from the adapter so docs, schemas and validation can read it without zeep doing any work.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.adapter import EndpointConfig
from engine.durations import Duration
from engine.secrets import SecretRef


class WsSecurity(BaseModel):
    """WS-Security UsernameToken (PasswordText) put in every request's SOAP header."""

    model_config = ConfigDict(extra="forbid")

    username: str = Field(description="wsse:Username.", examples=["hub-de"])
    password: str | SecretRef = Field(description="wsse:Password; use a secret reference, resolved at start.",
                                      examples=[{"env": "ERP_DE_PASSWORD"}])
    timestamp: bool = Field(True, description="Add a wsu:Timestamp (Created, Expires 5 min later) to each request.")


class BusinessErrorRule(BaseModel):
    """Where a successful answer says the ERP refused the request (SAP BAPI `RETURN` table style)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Dotted path into the answer; a list on the way matches any element.",
                      examples=["Return.Type"])
    error_values: list[str] = Field(["E", "A"], description="Values at `path` that mean a business error.")
    message_path: str | None = Field(None, description="Dotted path of the ERP's message; taken from the same "
                                     "row when it shares the row's prefix with `path`.", examples=["Return.Message"])

    @field_validator("path", "message_path")
    @classmethod
    def _dotted(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(not part for part in v.split("."))):
            raise ValueError(f"expected a dotted path like Return.Type, got {v!r}")
        return v


class SoapEndpointConfig(EndpointConfig):
    """A SOAP 1.1/1.2 target described by a WSDL; the payload is a dict of the operation's input parts."""

    wsdl: str = Field(description="WSDL location: a path (relative to the project root) or an http(s) URL. "
                      "Loaded once per process.", examples=["sandbox/erp/de.wsdl", "https://erp-de.plu.internal/ws?wsdl"])
    address: str | None = Field(None, description="Service address to call instead of the WSDL's soap:address "
                                "(a simulator on another port, a proxy).", examples=["http://127.0.0.1:8081/erp-de"])
    service: str | None = Field(None, description="Service name when the WSDL has several; the first when omitted.")
    port: str | None = Field(None, description="Port name within the service; the first when omitted.")
    wsdl_timeout: Duration = Field(10.0, description="Deadline for loading the WSDL and its imports at start.",
                                   examples=["10s"])
    timeout: Duration = Field(10.0, description="Per-call deadline when the flow step sets none.",
                              examples=["5s", "800ms"])
    ws_security: WsSecurity | None = Field(None, description="WS-Security UsernameToken; none when omitted.")
    verify_tls: bool = Field(True, description="Verify the server certificate (https only).")
    ca_bundle: str | None = Field(None, description="PEM file of CAs to trust instead of the system's.",
                                  examples=["/etc/plu/ca/erp-de.pem"])
    client_cert: str | None = Field(None, description="PEM client certificate for mutual TLS.",
                                    examples=["/etc/plu/tls/hub-erp-de.crt"])
    client_key: str | None = Field(None, description="PEM key of client_cert, when not in the same file.",
                                   examples=["/etc/plu/tls/hub-erp-de.key"])
    max_connections: int = Field(16, ge=1, le=1024, description="Size of the connection pool to this target.")
    operations: list[str] | None = Field(None, description="When given, only these WSDL operations may be called.",
                                         examples=[["CreateContract", "GetContract"]])
    aliases: dict[str, str] = Field(default_factory=dict, description="Logical operation names a flow uses, "
                                    "mapped to this WSDL's operations: one flow serves ERPs whose WSDLs differ.",
                                    examples=[{"submit_switch": "TariffSwitchCreate",
                                               "switch_status": "TariffSwitchGetStatus"}])
    business_error: BusinessErrorRule | None = Field(
        None, description="Turns error rows inside a successful answer into a BusinessError (permanent).",
        examples=[{"path": "Return.Type", "error_values": ["E", "A"], "message_path": "Return.Message"}])
    redact: list[str] = Field(["Password", "Iban", "Email", "Phone"], description="Element names (case-insensitive, "
                              "substring) whose text is blanked in debug logs and error snippets.")

    @field_validator("client_key")
    @classmethod
    def _key_needs_cert(cls, v: str | None, info: Any) -> str | None:
        if v is not None and not info.data.get("client_cert"):
            raise ValueError("client_key needs client_cert")
        return v
