"""The emulator's OAuth 2.0 token endpoint and sessions.

Two flows as Salesforce documents them for server-to-server integrations:
- client credentials: `grant_type=client_credentials` with the connected app's id and secret; the
  session runs as the app's execution user;
- JWT bearer: `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and an RS256 `assertion`
  signed with the key whose certificate the connected app holds, `iss` the app's client id, `sub`
  the user's name, `aud` the login URL, `exp` at most 3 minutes ahead.
Errors are the documented JSON bodies (`{"error": "invalid_client" | "invalid_grant" | ...,
"error_description": ...}`, status 400). A session is a bearer token valid for the org's session
timeout on the org's clock; `expire_all()` ends every session, as a password change or an admin
revoking the app does, so the REST and gRPC APIs answer INVALID_SESSION_ID / UNAUTHENTICATED.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

import jwt

from engine.clock import SYSTEM, Clock

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


@dataclass
class ConnectedApp:
    client_id: str
    client_secret: str
    run_as: str                                  # the execution user of the client credentials flow
    certificate_key: Any = None                  # public key for JWT bearer assertions
    approved_users: set[str] = field(default_factory=set)


@dataclass
class Session:
    token: str
    user: str
    client_id: str
    expires_at: float


class Sessions:
    def __init__(self, org_id: str, login_url: str, clock: Clock = SYSTEM, timeout: float = 7200.0) -> None:
        self.org_id = org_id
        self.login_url = login_url
        self.clock = clock
        self.timeout = timeout
        self.apps: dict[str, ConnectedApp] = {}
        self.users: dict[str, str] = {}          # username -> user id
        self.sessions: dict[str, Session] = {}
        self.issued = 0
        self._signing = secrets.token_bytes(32)

    def add_user(self, username: str, user_id: str) -> None:
        self.users[username] = user_id

    def add_app(self, app: ConnectedApp) -> None:
        self.apps[app.client_id] = app

    def token(self, form: dict[str, str], instance_url: str) -> dict[str, Any]:
        grant = form.get("grant_type")
        if grant == "client_credentials":
            app = self.apps.get(form.get("client_id", ""))
            if app is None or not hmac.compare_digest(app.client_secret, form.get("client_secret", "")):
                raise OAuthError("invalid_client", "invalid client credentials")
            user = app.run_as
        elif grant == JWT_GRANT:
            app, user = self._jwt_user(form.get("assertion", ""))
        elif not grant:
            raise OAuthError("invalid_request", "grant type is required")
        else:
            raise OAuthError("unsupported_grant_type", "grant type not supported")
        session = Session(secrets.token_urlsafe(32), user, app.client_id, self.clock.time() + self.timeout)
        access = f"{self.org_id}!{session.token}"
        self.sessions[access] = session
        self.issued += 1
        issued_at = str(int(self.clock.time() * 1000))
        signature = base64.b64encode(hmac.new(self._signing, f"{self.login_url}{issued_at}".encode(),
                                              hashlib.sha256).digest()).decode()
        return {"access_token": access, "instance_url": instance_url, "scope": "api",
                "id": f"{self.login_url}/id/{self.org_id}/{self.users[user]}", "token_type": "Bearer",
                "issued_at": issued_at, "signature": signature}

    def _jwt_user(self, assertion: str) -> tuple[ConnectedApp, str]:
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise OAuthError("invalid_grant", "invalid assertion") from None
        app = self.apps.get(str(unverified.get("iss", "")))
        if app is None or app.certificate_key is None:
            raise OAuthError("invalid_client_id", "client identifier invalid")
        try:
            claims = jwt.decode(assertion, app.certificate_key, algorithms=["RS256"], audience=self.login_url,
                                options={"require": ["iss", "sub", "aud", "exp"], "verify_exp": False})
        except jwt.InvalidAudienceError:
            raise OAuthError("invalid_grant", "audience is invalid") from None
        except jwt.PyJWTError:
            raise OAuthError("invalid_grant", "invalid assertion") from None
        now = self.clock.time()
        if claims["exp"] <= now:
            raise OAuthError("invalid_grant", "expired authorization code")
        if claims["exp"] > now + 300:  # Salesforce wants exp within 3 minutes; allow its clock skew
            raise OAuthError("invalid_grant", "invalid assertion: exp too far in the future")
        user = str(claims["sub"])
        if user not in self.users:
            raise OAuthError("invalid_grant", "user hasn't approved this consumer")
        if app.approved_users and user not in app.approved_users:
            raise OAuthError("invalid_grant", "user hasn't approved this consumer")
        return app, user

    def check(self, access_token: str | None) -> Session | None:
        """The live session a bearer token names, or None (invalid or expired)."""
        session = self.sessions.get(access_token or "")
        if session is None:
            return None
        if session.expires_at <= self.clock.time():
            del self.sessions[access_token]  # type: ignore[arg-type]
            return None
        return session

    def expire_all(self) -> None:
        self.sessions.clear()
