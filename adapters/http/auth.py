"""Endpoint authentication of the http adapter: `auth:` names one scheme, its secrets by reference.

    auth: {api_key: {header: X-Api-Key, value: {env: V1_KEY}}}                # a static header
    auth: {basic: {username: plu-hub, password: {env: V3_PASSWORD}}}           # Authorization: Basic
    auth: {oauth2: {token_url: https://…/oauth2/token, client_id: plu-hub,
                    client_secret: {env: V2_SECRET}, scope: readings:read}}    # client credentials
    auth: {hmac_vendor4: {key_id: plu-hub, secret: {env: V4_SECRET}}}         # a signature per request

OAuth2 tokens are cached until shortly before `expires_in` runs out and shared by concurrent calls
(one fetch at a time). A call answered 401 gets one new token and is sent once more; token endpoint
failures map onto the taxonomy like any answer (bad client credentials: TargetRejected).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from yarl import URL

from engine.errors import UnparseablePayload
from engine.secrets import SecretRef, resolve_value
from adapters.http.wire import http_url, snippet, status_error, text_of


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApiKeyAuth(_Strict):
    header: str = Field("X-Api-Key", description="Header that carries the key.")
    value: SecretRef = Field(description="The key, by reference.", examples=[{"env": "METER_VENDOR1_API_KEY"}])


class BasicAuthSettings(_Strict):
    username: str = Field(description="Login name (not a secret).")
    password: SecretRef = Field(description="Password, by reference.", examples=[{"env": "METER_VENDOR3_PASSWORD"}])


class OAuth2Settings(_Strict):
    token_url: str = Field(description="Absolute URL of the token endpoint (client-credentials grant).",
                           examples=["https://api.vendor2.example/oauth2/token"])
    client_id: str = Field(description="OAuth2 client id (sent in the form with the secret).")
    client_secret: SecretRef = Field(description="Client secret, by reference.")
    scope: str | None = Field(None, description="Scope to ask for; the server's default when omitted.")
    refresh_margin: float = Field(30.0, ge=0, description="Seconds before expiry a cached token is replaced "
                                  "(at most a tenth of its lifetime).")

    @field_validator("token_url")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return http_url(v)


class HmacVendor4Settings(_Strict):
    key_id: str = Field(description="Key id sent in X-V4-Key.")
    secret: SecretRef = Field(description="Signing secret, by reference.")


class AuthConfig(_Strict):
    """Exactly one scheme."""

    api_key: ApiKeyAuth | None = None
    basic: BasicAuthSettings | None = None
    oauth2: OAuth2Settings | None = None
    hmac_vendor4: HmacVendor4Settings | None = None

    @model_validator(mode="after")
    def _one(self) -> "AuthConfig":
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"auth: give exactly one of api_key, basic, oauth2, hmac_vendor4 (got {given or 'none'})")
        return self


class Auth:
    """Runtime of a scheme: static headers at start, per-call headers, what to do about a 401."""

    static: dict[str, str] = {}
    refreshes = False  # True: a 401 is worth one new credential and one more try

    async def headers(self, session: aiohttp.ClientSession, method: str, url: URL) -> dict[str, str]:
        return {}

    def invalidate(self, used: dict[str, str]) -> None:
        """The credential in `used` was refused."""


class StaticAuth(Auth):
    def __init__(self, headers: dict[str, str]) -> None:
        self.static = headers


def canonical_query(params: Any) -> str:
    """Vendor 4's canonical query: decoded pairs sorted, RFC 3986-encoded (only A-Z a-z 0-9 -_.~ kept)."""
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params))


class Vendor4Signer(Auth):
    """HMAC-SHA256(secret, "METHOD\\npath\\ncanonical query\\nunix seconds") in hex, per request."""

    def __init__(self, key_id: str, secret: str) -> None:
        self.key_id, self.secret = key_id, secret.encode()

    def sign(self, method: str, url: URL, timestamp: int) -> dict[str, str]:
        text = f"{method.upper()}\n{url.path}\n{canonical_query(url.query.items())}\n{timestamp}"
        digest = hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()
        return {"X-V4-Key": self.key_id, "X-V4-Timestamp": str(timestamp), "X-V4-Signature": digest}

    async def headers(self, session: aiohttp.ClientSession, method: str, url: URL) -> dict[str, str]:
        return self.sign(method, url, int(time.time()))


class OAuth2ClientCredentials(Auth):
    refreshes = True

    def __init__(self, endpoint: str, settings: OAuth2Settings, secret: str) -> None:
        self.endpoint, self.settings, self.secret = endpoint, settings, secret
        self.token: str | None = None
        self.valid_until = 0.0
        self.fetched = 0
        self._lock = asyncio.Lock()

    async def headers(self, session: aiohttp.ClientSession, method: str, url: URL) -> dict[str, str]:
        if self.token is None or time.monotonic() >= self.valid_until:
            async with self._lock:  # concurrent calls share one fetch
                if self.token is None or time.monotonic() >= self.valid_until:
                    await self._fetch(session)
        return {"Authorization": f"Bearer {self.token}"}

    def invalidate(self, used: dict[str, str]) -> None:
        if used.get("Authorization") == f"Bearer {self.token}":
            self.token = None

    async def _fetch(self, session: aiohttp.ClientSession) -> None:
        s = self.settings
        form = {"grant_type": "client_credentials", "client_id": s.client_id, "client_secret": self.secret}
        if s.scope:
            form["scope"] = s.scope
        where = f"{self.endpoint}: oauth2 token POST {URL(s.token_url).path}"
        async with session.post(s.token_url, data=form, headers={"Accept": "application/json"},
                                allow_redirects=False) as resp:
            body = await resp.read()
            if resp.status >= 300:
                raise status_error(where, resp, body)
            text = text_of(resp, body)
        try:
            answer = orjson.loads(body)
            token, lifetime = answer["access_token"], float(answer.get("expires_in") or 3600)
            if not isinstance(token, str) or not token:
                raise ValueError("empty access_token")
        except (ValueError, KeyError, TypeError) as exc:
            raise UnparseablePayload(f"{where}: not a token answer ({exc}): {snippet(text)}") from None
        self.token = token
        self.valid_until = time.monotonic() + lifetime - min(s.refresh_margin, lifetime / 10)
        self.fetched += 1


def build_auth(endpoint: str, config: AuthConfig | None) -> Auth:
    """The runtime of a configured scheme, secrets resolved now (LookupError when one is missing)."""
    if config is None:
        return Auth()
    if config.api_key is not None:
        return StaticAuth({config.api_key.header: resolve_value(config.api_key.value)})
    if config.basic is not None:
        b = config.basic
        return StaticAuth({"Authorization": aiohttp.encode_basic_auth(b.username, resolve_value(b.password))})
    if config.oauth2 is not None:
        return OAuth2ClientCredentials(endpoint, config.oauth2, resolve_value(config.oauth2.client_secret))
    h = config.hmac_vendor4
    assert h is not None
    return Vendor4Signer(h.key_id, resolve_value(h.secret))
