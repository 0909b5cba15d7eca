"""Who may post to a webhook path: an HMAC-SHA256 signature over "<t>.<raw body>" that is fresh and
not seen before, or a bearer token. Every check compares in constant time and says why it refused.

Replays: a signature (t, v1) that passed is remembered for `max_age` (afterwards its timestamp is
stale anyway, so memory stays bounded by the request rate times `max_age`). A byte-identical request
seen again inside that window is refused with 409 "replayed": the signature is fine, the request is not
new, and a vendor that lost our 202 may read 409 as "you have it already". Memory is per runner; a
replay to *another* runner passes this check but stores nothing new, because every item's
Nats-Msg-Id comes from the item (Landing.message_id) and HUB_INGRESS drops repeats for an hour, longer
than any `max_age` a signature may live. A request whose store failed (503) releases its signature so
that the sender's byte-identical retry is accepted.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import time
from collections.abc import Callable


class Refused(Exception):
    """A request the hub will not store: HTTP status, a short machine reason and a text for the sender."""

    def __init__(self, status: int, reason: str, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status, self.reason, self.text, self.headers = status, reason, text, headers or {}


def parse_signature(value: str) -> tuple[int, list[str]]:
    """`t=<unix>,v1=<hex>[,v1=<hex>]` → (t, [v1, ...]); several v1 allow secret rotation by the sender."""
    timestamp: int | None = None
    macs: list[str] = []
    for part in value.split(","):
        key, sep, val = part.strip().partition("=")
        if not sep:
            continue
        if key == "t" and val.isdigit() and len(val) <= 12:
            timestamp = int(val)
        elif key == "v1" and val:
            macs.append(val.lower())
    if timestamp is None or not macs:
        raise Refused(401, "malformed_signature", "signature header must be t=<unix seconds>,v1=<hex>")
    return timestamp, macs


class HmacCheck:
    """Verifies one path's signatures and remembers the ones that passed, per runner."""

    def __init__(self, secret: str, header: str, max_age: float, clock: Callable[[], float] = time.time) -> None:
        self._secret = secret.encode()
        self.header = header
        self.max_age = max_age
        self.clock = clock
        self._seen: dict[tuple[int, str], float] = {}   # (t, v1) -> when it may be forgotten
        self._expiry: list[tuple[float, tuple[int, str]]] = []

    def verify(self, header_value: str | None, body: bytes) -> tuple[int, str]:
        """The (t, v1) key of a valid, fresh, new signature, now reserved; Refused otherwise."""
        if not header_value:
            raise Refused(401, "missing_signature", f"{self.header} header is required")
        timestamp, macs = parse_signature(header_value)
        now = self.clock()
        if abs(now - timestamp) > self.max_age:
            raise Refused(401, "stale", f"stale: timestamp {timestamp} is more than {self.max_age:g}s from now")
        expected = hmac.new(self._secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()
        match = next((m for m in macs if hmac.compare_digest(m, expected)), None)  # compare every candidate
        if match is None:
            raise Refused(401, "bad_signature", "signature does not match")
        self._forget(now)
        key = (timestamp, match)
        if key in self._seen:
            raise Refused(409, "replayed", "replayed: this signature was already received")
        self._seen[key] = timestamp + self.max_age
        heapq.heappush(self._expiry, (timestamp + self.max_age, key))
        return key

    def release(self, key: tuple[int, str]) -> None:
        """Forget a reserved signature whose request was not stored (503): its retry must pass."""
        self._seen.pop(key, None)

    def _forget(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] < now:
            _, key = heapq.heappop(self._expiry)
            self._seen.pop(key, None)

    @property
    def remembered(self) -> int:
        return len(self._seen)


class TokenCheck:
    """`Authorization: Bearer <token>`, compared in constant time."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    def verify(self, authorization: str | None) -> None:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise Refused(401, "missing_token", "Authorization: Bearer <token> is required",
                          {"WWW-Authenticate": 'Bearer realm="plu-hub"'})
        if not hmac.compare_digest(given.strip().encode(), self._token):
            raise Refused(401, "bad_token", "token is not valid", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
