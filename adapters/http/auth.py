"""Endpoint authentication of the http adapter: `auth:` names one scheme, its secrets by reference.

    auth: {api_key: {header: X-Api-Key, value: {env: V1_KEY}}}                # a static header
    auth: {basic: {username: plu-hub, password: {env: V3_PASSWORD}}}           # Authorization: Basic
    auth: {oauth2: {token_url: https://…/oauth2/token, client_id: plu-hub,
                    client_secret: {env: V2_SECRET}, scope: readings:read}}    # client credentials
    auth: {hmac_vendor4: {key_id: plu-hub, secret: {env: V4_SECRET}}}         # a signature per request

OAuth2 (client-credentials grant) authenticates the client at the token endpoint in one of the three
ways token endpoints ask for (`client_auth`):

- `client_secret_basic` (the default; RFC 6749 §2.3.1, which every server MUST support): HTTP Basic
  with the client id and secret each form-urlencoded first;
- `client_secret_post` (RFC 6749 §2.3.1, "NOT RECOMMENDED"): id and secret in the form body;
- `private_key_jwt` (RFC 7523 §2.2, OpenID Connect): a short-lived JWT signed with the client's key,
  iss = sub = client id, aud = the token URL, a fresh jti; no secret travels at all.

Tokens are cached until shortly before `expires_in` runs out and shared by concurrent calls (one
fetch at a time). A call answered 401 gets one new token and is sent once more; token endpoint
failures map onto the taxonomy like any answer (bad client credentials: TargetRejected).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import uuid
from typing import Any, Literal
from urllib.parse import quote, quote_plus

import aiohttp
import jwt
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from yarl import URL

from engine.clock import SYSTEM, Clock
from engine.durations import Duration
from engine.errors import UnparseableAnswer
from engine.secrets import SecretRef, resolve_value
from adapters.http.wire import http_url, snippet, status_error, text_of

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApiKeyAuth(_Strict):
    header: str = Field("X-Api-Key", description="Header that carries the key.")
    value: SecretRef = Field(description="The key, by reference.", examples=[{"env": "METER_VENDOR1_API_KEY"}])


class BasicAuthSettings(_Strict):
    username: str = Field(description="Login name (not a secret).")
    password: SecretRef = Field(description="Password, by reference.", examples=[{"env": "METER_VENDOR3_PASSWORD"}])


class OAuth2Settings(_Strict):
    """OAuth2 client credentials (RFC 6749 §4.4); the client authenticates as `client_auth` says."""

    token_url: str = Field(description="Absolute URL of the token endpoint (client-credentials grant).",
                           examples=["https://api.vendor2.example/oauth2/token"])
    client_id: str = Field(description="OAuth2 client id.")
    client_auth: Literal["client_secret_basic", "client_secret_post", "private_key_jwt"] = Field(
        "client_secret_basic", description="How the client authenticates at the token endpoint: HTTP Basic with "
        "the form-urlencoded id and secret (RFC 6749 §2.3.1, what every server must accept), the secret in the "
        "form body, or a JWT signed with `private_key` (RFC 7523 §2.2).")
    client_secret: SecretRef | None = Field(None, description="Client secret, by reference (client_secret_basic "
                                            "and client_secret_post).", examples=[{"env": "METER_VENDOR2_CLIENT_SECRET"}])
    private_key: SecretRef | None = Field(None, description="PEM private key signing the client assertion, by "
                                          "reference (private_key_jwt).", examples=[{"file": "/run/secrets/hub-v5.pem"}])
    signing_alg: Literal["RS256", "RS384", "RS512", "PS256", "ES256", "ES384"] = Field(
        "RS256", description="JWS algorithm of the client assertion (private_key_jwt); must fit the key.")
    key_id: str | None = Field(None, description="`kid` header of the client assertion, when the server holds "
                               "several of the client's keys (private_key_jwt).")
    assertion_lifetime: Duration = Field(60.0, description="How long a client assertion is valid (its exp - iat); "
                                         "each token fetch signs a new one with a fresh jti.", examples=["60s"])
    scope: str | None = Field(None, description="Scope to ask for; the server's default when omitted.")
    refresh_margin: float = Field(30.0, ge=0, description="Seconds before expiry a cached token is replaced "
                                  "(at most a tenth of its lifetime).")

    @field_validator("token_url")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return http_url(v)

    @model_validator(mode="after")
    def _credential_fits(self) -> "OAuth2Settings":
        if self.client_auth == "private_key_jwt":
            if self.private_key is None:
                raise ValueError("client_auth private_key_jwt needs private_key (a PEM, by reference)")
            if self.client_secret is not None:
                raise ValueError("private_key_jwt sends no secret: drop client_secret")
        elif self.client_secret is None:
            raise ValueError(f"client_auth {self.client_auth} needs client_secret (by reference)")
        return self


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

    def __init__(self, endpoint: str, settings: OAuth2Settings, secret: str, clock: Clock = SYSTEM) -> None:
        self.endpoint, self.settings, self.secret, self.clock = endpoint, settings, secret, clock
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

    def client_authentication(self) -> tuple[dict[str, str], dict[str, str]]:
        """(form fields, headers) that authenticate the client at the token endpoint."""
        s = self.settings
        if s.client_auth == "client_secret_basic":  # RFC 6749 §2.3.1: form-urlencode each, then Basic
            basic = aiohttp.encode_basic_auth(quote_plus(s.client_id), quote_plus(self.secret))
            return {}, {"Authorization": basic}
        if s.client_auth == "client_secret_post":
            return {"client_id": s.client_id, "client_secret": self.secret}, {}
        return {"client_id": s.client_id, "client_assertion_type": JWT_BEARER,
                "client_assertion": self.assertion()}, {}

    def assertion(self) -> str:
        """RFC 7523 §3: iss = sub = client id, aud = the token endpoint, exp, iat, a unique jti."""
        s = self.settings
        now = int(self.clock.time())
        claims = {"iss": s.client_id, "sub": s.client_id, "aud": s.token_url, "iat": now,
                  "exp": now + max(1, int(s.assertion_lifetime)), "jti": uuid.uuid4().hex}
        headers = {"kid": s.key_id} if s.key_id else None
        return jwt.encode(claims, self.secret, algorithm=s.signing_alg, headers=headers)

    async def _fetch(self, session: aiohttp.ClientSession) -> None:
        s = self.settings
        form = {"grant_type": "client_credentials"}
        if s.scope:
            form["scope"] = s.scope
        auth_form, auth_headers = self.client_authentication()
        form.update(auth_form)
        where = f"{self.endpoint}: oauth2 token POST {URL(s.token_url).path} ({s.client_auth})"
        async with session.post(s.token_url, data=form, headers={"Accept": "application/json", **auth_headers},
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
            raise UnparseableAnswer(f"{where}: not a token answer ({exc}): {snippet(text)}") from None
        self.token = token
        self.valid_until = time.monotonic() + lifetime - min(s.refresh_margin, lifetime / 10)
        self.fetched += 1


def build_auth(endpoint: str, config: AuthConfig | None, clock: Clock = SYSTEM) -> Auth:
    """The runtime of a configured scheme, secrets resolved now (LookupError when one is missing)."""
    if config is None:
        return Auth()
    if config.api_key is not None:
        return StaticAuth({config.api_key.header: resolve_value(config.api_key.value)})
    if config.basic is not None:
        b = config.basic
        return StaticAuth({"Authorization": aiohttp.encode_basic_auth(b.username, resolve_value(b.password))})
    if config.oauth2 is not None:
        o = config.oauth2
        credential = o.private_key if o.client_auth == "private_key_jwt" else o.client_secret
        assert credential is not None  # OAuth2Settings checks it
        auth = OAuth2ClientCredentials(endpoint, o, resolve_value(credential), clock)
        if o.client_auth == "private_key_jwt":
            try:
                auth.assertion()  # a key that cannot sign (wrong format, wrong algorithm) fails at start
            except (ValueError, TypeError, jwt.PyJWTError) as exc:
                raise LookupError(f"oauth2.private_key cannot sign {o.signing_alg}: {exc}") from None
        return auth
    h = config.hmac_vendor4
    assert h is not None
    return Vendor4Signer(h.key_id, resolve_value(h.secret))
