"""The `mqtt` endpoint: which broker the hub subscribes to and how it logs in, for the `mqtt:` flow source.

It is registered as an adapter so config validation, the docs and the JSON Schema know its keys like
any endpoint's; but a broker is subscribed to, never called, so `call` refuses and it has no circuit
breaker by default (the ingress reconnects with its own backoff instead).
"""

from __future__ import annotations

import ssl

from pydantic import Field

from engine.adapter import EndpointConfig, SourceOnlyAdapter
from adapters.smtp.config import is_loopback
from engine.breaker import BreakerSettings
from engine.durations import Duration
from engine.errors import ConfigError
from engine.registry import register
from engine.secrets import SecretRef


class MqttEndpointConfig(EndpointConfig):
    """An MQTT 3.1.1 broker the hub subscribes to with QoS 1 and a persistent session (clean_session=False)."""

    host: str = Field(description="Broker host name or address.", examples=["mqtt.vendor4.example", "127.0.0.1"])
    port: int = Field(8883, ge=1, le=65535, description="8883 for MQTT over TLS, 1883 for plain.")
    username: str | None = Field(None, description="Login user (brokers keep no session for anonymous clients).",
                                 examples=["plu-hub"])
    password: SecretRef | None = Field(None, description="Login password as a secret reference, resolved when "
                                       "the ingress starts.", examples=[{"env": "VENDOR4_MQTT_PASSWORD"}])
    tls: bool = Field(True, description="TLS from the first byte, the broker's certificate verified; false sends "
                      "the password in clear, so only sensible on loopback (the ingress warns otherwise).")
    ca_bundle: str | None = Field(None, description="PEM file of CAs to trust instead of the system's.",
                                  examples=["/etc/plu/ca/vendor4.pem"])
    keepalive: Duration = Field(30.0, description="MQTT keep-alive: a silent broker is taken as gone after 1.5x this.",
                                examples=["30s"])
    timeout: Duration = Field(10.0, description="Deadline of connecting and of subscribing.", examples=["10s"])
    circuit_breaker: BreakerSettings | None = Field(
        None, description="Unused: a broker is a source, not a call target.")


def tls_context(endpoint: str, config: MqttEndpointConfig) -> ssl.SSLContext | None:
    """The verifying client context when `tls` is on (None for plain); ConfigError for a bad CA file."""
    if not config.tls:
        return None
    try:
        return ssl.create_default_context(cafile=config.ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"endpoint {endpoint!r}: ca_bundle: {exc}"]) from exc


def cleartext_risk(config: MqttEndpointConfig) -> bool:
    """True when a password would cross a network in clear."""
    return not config.tls and config.password is not None and not is_loopback(config.host)


@register
class MqttAdapter(SourceOnlyAdapter):
    """A broker read by an `mqtt:` flow source (adapters.mqtt.ingress.MqttIngress); it cannot be called."""

    name = "mqtt"
    Config = MqttEndpointConfig
    operations_doc = "None: an mqtt endpoint is read by an `mqtt:` flow source and cannot be called."

    def check_operation(self, operation: str | None) -> str | None:
        return (f"mqtt endpoints are a source only: read this one with `source: {{mqtt: {{endpoint: "
                f"{self.endpoint}, topics: [...], client_id: ...}}}}`")
