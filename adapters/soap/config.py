"""What a SOAP endpoint's `endpoints:` entry may say, validated before anything starts.

Kept apart from the adapter so docs, schemas and validation can read it without zeep doing any work.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    """Which rows of a successful answer say the ERP refused the request.

    Written for SAP's RFC/BAPI answers, whose RETURN table (rows of structure BAPIRET2) holds one row
    per message: TYPE E (error) or A (abort) is a refusal, S, I and W (success, information, warning)
    are not. SAP sends a table as `<RETURN><item>…</item>…</RETURN>` (zeep: `{"item": [rows]}`) and some
    BAPIs a single BAPIRET2 structure; `table: RETURN` finds the rows of both (`RETURN.item` works too):

        business_error: {table: RETURN}          # SAP: the defaults name BAPIRET2's fields

    Paths start at the response element's children (also when zeep hands a single child back bare).
    Every row whose type is in `error_values` becomes part of one BusinessError (permanent), each
    with its id, number and message: `E ZISU 042: Vertrag 4711 ist gesperrt | E ZISU 001: …`.
    `runner.py validate` checks the table and fields against each called operation's answer in the
    WSDL: a rule that can never match is an error there, not a silent success at run time.
    """

    model_config = ConfigDict(extra="forbid")

    table: str = Field(description="Dotted path from the answer to its result rows. A list on the way fans out "
                       "(every element is a row); a single structure is one row; an SAP table's `<item>` rows "
                       "(zeep: `{item: [...]}`) are its rows.", examples=["RETURN", "Return", "Result.Messages"])
    type_field: str = Field("TYPE", description="Field of a row that holds its type.", examples=["TYPE", "Severity"])
    error_values: list[str] = Field(["E", "A"], min_length=1, description="Row types that mean a refusal "
                                    "(SAP: E error, A abort; S, I and W are success, information and warning).")
    message_field: str | None = Field("MESSAGE", description="Field of a row with the ERP's text; null: none.")
    id_field: str | None = Field("ID", description="Field of a row with the message class (SAP: ID); null: none.")
    number_field: str | None = Field("NUMBER", description="Field of a row with the message number (SAP: NUMBER); "
                                     "null: none.")
    ignore_case: bool = Field(False, description="Match the table path and field names, and the type values, "
                              "without regard to case: `Return.Type` then finds `RETURN.TYPE`, `e` counts as `E`.")
    when_absent: Literal["success", "error"] = Field(
        "success", description="What an answer without the table means at run time. SAP leaves an empty RETURN "
        "table out of a successful answer, so `success` is usual; `error` for an ERP that always sends it. Whether "
        "the table can exist at all is decided before: `runner.py validate` checks it against the WSDL.")
    operations: list[str] | None = Field(None, description="WSDL operations whose answers carry the table (all "
                                         "when omitted); validation checks the rule against each one it applies to.",
                                         examples=[["TariffSwitchCreate", "TariffSwitchGetStatus"]])

    @model_validator(mode="before")
    @classmethod
    def _old_spelling(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("path" in data or "message_path" in data):
            raise ValueError("`path`/`message_path` were replaced by `table` and row fields: for path "
                             "RETURN.item.TYPE write `table: RETURN` (type_field TYPE, message_field MESSAGE, "
                             "id_field ID, number_field NUMBER are the defaults)")
        return data

    @field_validator("table")
    @classmethod
    def _dotted(cls, v: str) -> str:
        if not v or any(not part for part in v.split(".")):
            raise ValueError(f"expected a dotted path like RETURN.item, got {v!r}")
        return v

    @field_validator("type_field", "message_field", "id_field", "number_field")
    @classmethod
    def _one_name(cls, v: str | None) -> str | None:
        if v is not None and (not v or "." in v):
            raise ValueError(f"a field of the row, without dots, got {v!r}")
        return v

    def applies_to(self, operation: str) -> bool:
        return self.operations is None or operation in self.operations


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
        None, description="Turns refusal rows inside a successful answer (SAP's BAPIRET2 RETURN table and the like) "
        "into one BusinessError (permanent) naming every such row's id, number and message.",
        examples=[{"table": "RETURN", "type_field": "TYPE", "error_values": ["E", "A"],
                   "message_field": "MESSAGE", "id_field": "ID", "number_field": "NUMBER"},
                  {"table": "Return", "type_field": "Type", "message_field": "Message", "id_field": None,
                   "number_field": "Code"}])
    redact: list[str] = Field(["Password", "Iban", "Email", "Phone"], description="Element names (case-insensitive, "
                              "substring) whose text is blanked in debug logs and error snippets.")

    @field_validator("client_key")
    @classmethod
    def _key_needs_cert(cls, v: str | None, info: Any) -> str | None:
        if v is not None and not info.data.get("client_cert"):
            raise ValueError("client_key needs client_cert")
        return v
