"""The credentials a SOAP endpoint presents: a TLS context (own CAs, client certificate) and the
WS-Security UsernameToken, both built once at start so a bad file or secret fails there, not per call.
"""

from __future__ import annotations

import ssl
from datetime import datetime, timedelta, timezone
from typing import Any

from zeep.wsse.username import UsernameToken
from zeep.wsse.utils import WSU

from adapters.soap.config import SoapEndpointConfig
from engine.errors import ConfigError
from engine.secrets import resolve_setting


class StampedUsernameToken(UsernameToken):
    """UsernameToken with a fresh wsu:Timestamp per message (zeep's would reuse one element)."""

    def __init__(self, username: str, password: str, timestamp: bool, ttl: float = 300.0) -> None:
        super().__init__(username, password)
        self._stamp = timestamp
        self._ttl = ttl

    def apply(self, envelope: Any, headers: Any) -> Any:
        if self._stamp:  # apply() is synchronous: no other call can interleave here
            now = datetime.now(timezone.utc).replace(microsecond=0)
            fmt = "%Y-%m-%dT%H:%M:%SZ"
            self.timestamp_token = WSU.Timestamp(
                WSU.Created(now.strftime(fmt)), WSU.Expires((now + timedelta(seconds=self._ttl)).strftime(fmt)))
        return super().apply(envelope, headers)


def ws_security(endpoint: str, config: SoapEndpointConfig) -> tuple[StampedUsernameToken | None, tuple[str, ...]]:
    """The UsernameToken to sign requests with (None when not configured) and the secrets to redact."""
    wss = config.ws_security
    if wss is None:
        return None, ()
    password = resolve_setting(endpoint, "ws_security.password", wss.password) or ""
    return StampedUsernameToken(wss.username, password, wss.timestamp), ((password,) if password else ())


def tls_context(endpoint: str, config: SoapEndpointConfig) -> ssl.SSLContext:
    """The SSL context for the call pool and the WSDL client; ConfigError when a PEM file is unusable."""
    c = config
    try:
        context = ssl.create_default_context(cafile=c.ca_bundle)
        if not c.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if c.client_cert:
            context.load_cert_chain(c.client_cert, c.client_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"endpoint {endpoint!r}: TLS files: {exc}"]) from exc
    return context
