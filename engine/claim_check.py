"""Claim checks: a payload too big for one NATS message travels as a reference into the Object Store.

nats-server refuses a PUB whose headers + body exceed its `max_payload` (1 MiB by default, set per
deployment) by dropping the connection, and nats-py then closes for good (MEASURED.md): one mail just
under 1 MiB killed every flow. So the limit is read from the server (INFO, `nc.max_payload`), the
header block is counted, and what does not fit goes to the bucket `hub_claims`:

    headers  Hub-Claim-Check: <bucket>/<object>   Hub-Claim-Size: <bytes>   Hub-Claim-Sha256: <hex>
    body     empty

The object's name derives from the message id, so an item stored again after a crash overwrites the
same object and JetStream drops the repeated reference by its Nats-Msg-Id. Flows never see the
reference: the executor fetches the bytes (and checks size and SHA-256) before the first step, so a
transform gets exactly what it would have got in one message; a step that passes the payload on
unchanged passes the reference on. A dead letter keeps the reference; the bucket keeps objects
`CLAIM_TTL` (longer than the DLQ keeps records). A payload over `max_bytes` is not stored at all: the
ingress quarantines it where it came from, with an alert and the reason (Unstorable).
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

from nats.js.api import ObjectMeta, ObjectStoreConfig, StorageType

from engine.errors import BrokerUnavailable, PublishFailed, UnparseablePayload

CLAIM, CLAIM_SIZE, CLAIM_SHA = "Hub-Claim-Check", "Hub-Claim-Size", "Hub-Claim-Sha256"
CLAIM_HEADERS = (CLAIM, CLAIM_SIZE, CLAIM_SHA)
BUCKET = "hub_claims"
CLAIM_TTL = 30 * 86400.0            # seconds; the DLQ keeps records 14 days, a replay must find the bytes
DEFAULT_MAX_PAYLOAD = 1024 * 1024   # nats-server's default, when the client cannot say
MAX_CLAIM_BYTES = 64 * 1024 * 1024  # a mail or webhook body past this is refused, not stored


class Unstorable(Exception):
    """A payload the hub will not store at all (over `max_bytes`, or refused by the Object Store for
    good): the ingress leaves it where it came from, marked, with an alert naming `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def max_payload(js: Any) -> int:
    """The server's max_payload from its INFO (what the connection was told), else the default."""
    value = getattr(getattr(js, "_nc", None), "max_payload", None)
    return value if isinstance(value, int) and value > 0 else DEFAULT_MAX_PAYLOAD


def header_bytes(headers: dict[str, str] | bytes | str | None) -> int:
    """Size of the NATS/1.0 header block these headers become on the wire."""
    if headers is None:
        return 0
    if isinstance(headers, bytes | str):
        return len(headers)
    return len("NATS/1.0\r\n") + sum(len(k) + len(v) + 4 for k, v in headers.items()) + 2


def fits(js: Any, data: bytes, headers: dict[str, str] | bytes | str | None, margin: int = 256) -> bool:
    """True when headers + body stay under the server's limit (`margin` covers ids added later)."""
    return header_bytes(headers) + len(data) + margin <= max_payload(js)


def is_claim(headers: dict[str, str] | None) -> bool:
    return bool(headers) and CLAIM in headers  # type: ignore[operator]


class ClaimChecks:
    """Put and fetch claim-checked payloads in one bucket (created on first use, replicated like the
    hub's ingress stream)."""

    def __init__(self, js: Any, bucket: str = BUCKET, max_bytes: int = MAX_CLAIM_BYTES) -> None:
        self.js = js
        self.bucket = bucket
        self.max_bytes = max_bytes
        self._store: Any = None

    async def _bucket(self) -> Any:
        if self._store is None:
            from nats.js.errors import BucketNotFoundError, NotFoundError

            try:
                self._store = await self.js.object_store(self.bucket)
            except BucketNotFoundError:
                replicas = 1
                try:
                    replicas = (await self.js.stream_info("HUB_INGRESS")).config.num_replicas or 1
                except NotFoundError:
                    pass
                self._store = await self.js.create_object_store(self.bucket, ObjectStoreConfig(
                    description="Payloads too big for one message (claim checks)", storage=StorageType.FILE,
                    ttl=CLAIM_TTL, replicas=replicas))
        return self._store

    async def put(self, name: str, data: bytes) -> dict[str, str]:
        """Store `data` under `name`; answers the headers that reference it. Unstorable over max_bytes;
        PublishFailed when JetStream did not confirm (the caller leaves the item where it is)."""
        if len(data) > self.max_bytes:
            raise Unstorable(f"{len(data)} bytes exceed the claim-check limit of {self.max_bytes} bytes")
        try:
            store = await self._bucket()
            info = await store.put(name, io.BytesIO(data), meta=ObjectMeta(name=name))
        except Exception as exc:
            raise PublishFailed(f"claim check {self.bucket}/{name}: not stored: {type(exc).__name__}: {exc}") from exc
        if info.size != len(data):
            raise PublishFailed(f"claim check {self.bucket}/{name}: stored {info.size} of {len(data)} bytes")
        return {CLAIM: f"{self.bucket}/{name}", CLAIM_SIZE: str(len(data)),
                CLAIM_SHA: hashlib.sha256(data).hexdigest()}

    async def fetch(self, headers: dict[str, str]) -> bytes:
        """The payload a reference names, checked; BrokerUnavailable when JetStream does not answer (an
        outage: wait), UnparseablePayload when the object is gone or not what was stored (permanent)."""
        from nats.js.errors import NotFoundError, ObjectNotFoundError

        bucket, _, name = headers[CLAIM].partition("/")
        try:
            store = self._store if bucket == self.bucket and self._store is not None else \
                await self.js.object_store(bucket)
            if bucket == self.bucket:
                self._store = store
            result = await store.get(name)
        except (ObjectNotFoundError, NotFoundError) as exc:
            raise UnparseablePayload(f"claim check {headers[CLAIM]}: the object is gone ({exc}); it was kept "
                                     f"{CLAIM_TTL / 86400:g} days", step="source") from None
        except Exception as exc:
            raise BrokerUnavailable(f"claim check {headers[CLAIM]}: not readable now: {type(exc).__name__}: {exc}",
                                    step="source") from exc
        data = result.data or b""
        want_size, want_sha = headers.get(CLAIM_SIZE), headers.get(CLAIM_SHA)
        if (want_size and int(want_size) != len(data)) or (want_sha and hashlib.sha256(data).hexdigest() != want_sha):
            raise UnparseablePayload(f"claim check {headers[CLAIM]}: the object is not the one referenced "
                                     f"({len(data)} bytes, expected {want_size})", step="source")
        return data
