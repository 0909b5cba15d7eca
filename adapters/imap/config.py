"""The `imap` endpoint: where a mailbox lives and how to log in to it, for the `imap:` flow source.

It is registered as an adapter so config validation, the docs and the JSON Schema know its keys like
any endpoint's; but a mailbox is read, never called, so `call` refuses and it has no circuit breaker
by default (the ingress reconnects with its own backoff instead).
"""

from __future__ import annotations

import ssl
from typing import Literal

from pydantic import Field

from engine.adapter import EndpointConfig, SourceOnlyAdapter
from adapters.smtp.config import is_loopback
from engine.breaker import BreakerSettings
from engine.durations import Duration
from engine.errors import ConfigError
from engine.registry import register
from engine.secrets import SecretRef


class ImapEndpointConfig(EndpointConfig):
    """An IMAP4rev1 server and account the hub reads mail from (IDLE, MOVE and UIDPLUS used when offered)."""

    host: str = Field(description="Server host name or address.", examples=["imap.plu.internal", "127.0.0.1"])
    port: int = Field(993, ge=1, le=65535, description="993 for implicit TLS (IMAPS), 143 for plain.")
    security: Literal["tls", "none"] = Field(
        "tls", description="tls: implicit TLS from the first byte (IMAPS; the client library has no STARTTLS); "
        "none: plain text, the password crosses in clear, so only sensible on loopback (a sandbox); the "
        "ingress warns at start for any other host.")
    username: str = Field(description="Login user.", examples=["hub@plu.example"])
    password: SecretRef = Field(description="Login password as a secret reference, resolved when the ingress starts.",
                                examples=[{"env": "IMAP_PASSWORD"}])
    ca_bundle: str | None = Field(None, description="PEM file of CAs to trust instead of the system's "
                                  "(the sandbox's own CA).", examples=["/etc/plu/ca/mail.pem"])
    timeout: Duration = Field(30.0, description="Deadline of one IMAP command (connect, login, a fetch without "
                              "progress).", examples=["30s"])
    idle_renew: Duration = Field(300.0, description="An IDLE is ended and issued again after this long, so a "
                                 "silent NAT or server drop is noticed (servers end IDLE at 30 min).",
                                 examples=["5m"])
    circuit_breaker: BreakerSettings | None = Field(
        None, description="Unused: a mailbox is a source, not a call target.")


def tls_context(endpoint: str, config: ImapEndpointConfig) -> ssl.SSLContext | None:
    """The verifying client context for `security: tls` (None for plain); ConfigError for a bad CA file."""
    if config.security == "none":
        return None
    try:
        return ssl.create_default_context(cafile=config.ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"endpoint {endpoint!r}: ca_bundle: {exc}"]) from exc


def cleartext_risk(config: ImapEndpointConfig) -> bool:
    """True when the password would cross a network in clear."""
    return config.security == "none" and not is_loopback(config.host)


@register
class ImapAdapter(SourceOnlyAdapter):
    """A mailbox read by an `imap:` flow source (adapters.imap.ingress.ImapIngress); it cannot be called."""

    name = "imap"
    Config = ImapEndpointConfig
    operations_doc = "None: an imap endpoint is read by an `imap:` flow source and cannot be called."

    def check_operation(self, operation: str | None) -> str | None:
        return (f"imap endpoints are a source only: read this one with `source: {{imap: {{endpoint: "
                f"{self.endpoint}}}}}`; send mail through an smtp endpoint")
