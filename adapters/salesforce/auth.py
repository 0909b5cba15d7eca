"""Logging in to Salesforce: OAuth 2.0 client credentials or JWT bearer, one session shared by every
call of an endpoint, replaced when Salesforce says it ended.

Salesforce's token answer has no lifetime (the org's session timeout decides), so the token is kept
until an API answers INVALID_SESSION_ID (REST) or UNAUTHENTICATED (Pub/Sub): then `invalidate` drops
it and the next call logs in again; concurrent calls share one login. The answer's `id` URL
(.../id/<org id>/<user id>) gives the org id the Pub/Sub API wants as `tenantid`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import orjson

from adapters.salesforce.config import SalesforceEndpointConfig
from engine.clock import SYSTEM, Clock
from engine.errors import ConfigError, TargetRejected, TargetServerError, TargetTimeout, TargetUnavailable, \
    UnparseableAnswer
from engine.secrets import resolve_setting

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass(frozen=True)
class OrgSession:
    access_token: str
    instance_url: str
    org_id: str
    user_id: str


class TokenSource:
    def __init__(self, endpoint: str, config: SalesforceEndpointConfig, clock: Clock = SYSTEM) -> None:
        self.endpoint = endpoint
        self.config = config
        self.clock = clock
        self.logins = 0
        self._session: OrgSession | None = None
        self._lock = asyncio.Lock()
        self._secret: str | None = None

    def resolve_secrets(self) -> None:
        """Read the secret or key now (at start): a missing one is a configuration error."""
        auth = self.config.auth
        if auth.client_credentials is not None:
            self._secret = resolve_setting(self.endpoint, "auth.client_credentials.client_secret",
                                           auth.client_credentials.client_secret)
        else:
            assert auth.jwt_bearer is not None
            self._secret = resolve_setting(self.endpoint, "auth.jwt_bearer.private_key", auth.jwt_bearer.private_key)
            try:
                jwt.encode({"probe": 1}, self._secret, algorithm="RS256")
            except Exception as exc:
                raise ConfigError([f"endpoint {self.endpoint!r}: auth.jwt_bearer.private_key: not a usable RSA "
                                   f"private key ({type(exc).__name__})"]) from None

    async def session(self, http: aiohttp.ClientSession, timeout: float) -> OrgSession:
        if self._session is not None:
            return self._session
        async with self._lock:
            if self._session is None:
                self._session = await self._login(http, timeout)
            return self._session

    def invalidate(self, session: OrgSession) -> None:
        """Salesforce ended this session: the next call logs in again (unless another already did)."""
        if self._session is session:
            self._session = None

    def _form(self) -> dict[str, str]:
        if self._secret is None:
            self.resolve_secrets()
        auth = self.config.auth
        if auth.client_credentials is not None:
            return {"grant_type": "client_credentials", "client_id": auth.client_credentials.client_id,
                    "client_secret": self._secret or ""}
        bearer = auth.jwt_bearer
        assert bearer is not None
        claims = {"iss": bearer.client_id, "sub": bearer.username, "aud": bearer.audience,
                  "exp": int(self.clock.time()) + 180}  # Salesforce accepts at most 3 minutes ahead
        return {"grant_type": JWT_GRANT, "assertion": jwt.encode(claims, self._secret, algorithm="RS256")}

    async def _login(self, http: aiohttp.ClientSession, timeout: float) -> OrgSession:
        url = f"{self.config.login_url}/services/oauth2/token"
        try:
            async with http.post(url, data=self._form(), timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                text = await response.text()
                status = response.status
        except TimeoutError:
            raise TargetTimeout(f"{self.endpoint}: no answer from the token endpoint in {timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise TargetUnavailable(f"{self.endpoint}: token endpoint unreachable: {exc}") from None
        try:
            body: Any = orjson.loads(text) if text else {}
        except ValueError:
            raise UnparseableAnswer(f"{self.endpoint}: token endpoint answered {status} with non-JSON: "
                                    f"{text[:120]!r}") from None
        if status >= 500:
            raise TargetServerError(f"{self.endpoint}: token endpoint answered {status}: {text[:200]}")
        if status != 200 or not isinstance(body, dict) or "access_token" not in body:
            error = body.get("error") if isinstance(body, dict) else None
            detail = body.get("error_description") if isinstance(body, dict) else text[:200]
            raise TargetRejected(f"{self.endpoint}: login refused ({status} {error}: {detail})", status=status)
        org_id, user_id = _ids(body.get("id", ""))
        self.logins += 1
        return OrgSession(body["access_token"], body.get("instance_url", self.config.login_url).rstrip("/"),
                          org_id, user_id)


def _ids(identity_url: str) -> tuple[str, str]:
    """Org and user id from the identity URL https://login.salesforce.com/id/<org>/<user>."""
    parts = identity_url.rstrip("/").split("/")
    if len(parts) >= 3 and parts[-3] == "id":
        return parts[-2], parts[-1]
    raise UnparseableAnswer(f"token answer's id {identity_url!r} is not .../id/<org id>/<user id>")
