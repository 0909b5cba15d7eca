"""What an `smtp` endpoint's config says and what a `send` payload may hold, validated up front.

Kept apart from the adapter so docs and validation read the models without opening a connection; the
payload models turn a transform's dict into checked fields, so a bad payload is a ValidationFailed
naming the field, not an exception from deep inside the email package.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.adapter import EndpointConfig
from engine.durations import Duration
from engine.secrets import SecretRef

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: the only hosts where a clear-text password is tolerable."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SmtpEndpointConfig(EndpointConfig):
    """An SMTP submission server the hub sends mail through (Belgium's ERP is reached by email)."""

    host: str = Field(description="Server host name or address.", examples=["smtp.plu.internal", "127.0.0.1"])
    port: int = Field(587, ge=1, le=65535, description="587 for STARTTLS submission, 465 for implicit TLS.")
    security: Literal["starttls", "tls", "none"] = Field(
        "starttls", description="starttls: plain connect, then STARTTLS, required before AUTH; tls: implicit TLS "
        "from the first byte (port 465); none: no encryption at all, the password crosses in clear, so only "
        "sensible on loopback (a sandbox, a local relay); the adapter warns at start for any other host.")
    username: str | None = Field(None, description="AUTH user; no AUTH when omitted (an open local relay).",
                                 examples=["hub@plu.example"])
    password: str | SecretRef | None = Field(
        None, description="AUTH password; use a secret reference, resolved when the endpoint starts.",
        examples=[{"env": "SMTP_PASSWORD"}])
    ca_bundle: str | None = Field(None, description="PEM file of CAs to trust instead of the system's "
                                  "(the sandbox's own CA).", examples=["/etc/plu/ca/mail.pem"])
    to: list[str] | None = Field(None, description="Recipients of a mail whose payload names none: a target "
                                 "system's mailbox is the environment's, not the flow's.",
                                 examples=[["erp-be@plu.example"]])
    from_address: str = Field(description="From header and envelope sender of every mail.",
                              examples=["PLU Hub <hub@plu.example>"])
    helo_name: str | None = Field(None, description="Name given in EHLO; the from address's domain when omitted "
                                  "(no DNS look-up of our own host name at connect time).")
    timeout: Duration = Field(30.0, description="Whole-send deadline (connect, TLS, AUTH, DATA) when the flow step "
                              "sets none.", examples=["30s"])
    max_connections: int = Field(4, ge=1, le=64, description="Mails sent at the same time, each on its own connection.")
    keep_alive: Duration = Field(30.0, description="How long an idle connection is kept for the next mail "
                                 "(0s: a fresh connection per mail).", examples=["30s", "0s"])

    @model_validator(mode="after")
    def _credentials(self) -> "SmtpEndpointConfig":
        if (self.username is None) != (self.password is None):
            raise ValueError("give both username and password, or neither (no AUTH)")
        return self


class MailAttachment(BaseModel):
    """One attached file; its bytes travel base64-encoded, so a Latin-1 CRLF flat file arrives unchanged."""

    model_config = ConfigDict(extra="forbid")

    filename: str = Field(min_length=1, examples=["PLU_REQ_20250501_0001.txt"])
    content_type: str = Field("application/octet-stream", examples=["text/plain; charset=ISO-8859-1"])
    data_b64: str | None = Field(None, description="The file's bytes, base64.")
    text: str | None = Field(None, description="The file as text, encoded with `charset`.")
    charset: str | None = Field(None, description="Encoding of `text`; the content type's charset, else UTF-8.",
                                examples=["iso-8859-1"])

    @model_validator(mode="after")
    def _one_body(self) -> "MailAttachment":
        if (self.data_b64 is None) == (self.text is None):
            raise ValueError("give exactly one of data_b64 or text")
        if self.data_b64 is not None and self.charset is not None:
            raise ValueError("charset goes with text; for data_b64 put it in content_type")
        return self

    @field_validator("data_b64")
    @classmethod
    def _base64(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ValueError(f"not valid base64: {exc}") from None
        return v


class MailPayload(BaseModel):
    """What a transform hands the `send` operation."""

    model_config = ConfigDict(extra="forbid")

    to: list[str] = Field(min_length=1, description="Recipients (a single address is accepted too).")
    subject: str = ""
    text: str = Field("", description="The plain-text body.")
    message_id: str | None = Field(None, description="Message-ID to use; made by the adapter when absent.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers (X-PLU-Token, In-Reply-To, …).")
    attachments: list[MailAttachment] = Field(default_factory=list)

    @field_validator("to", mode="before")
    @classmethod
    def _listify(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v
