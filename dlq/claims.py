"""Dead letters whose payload came by claim check (engine/claim_check.py): the record's body is empty
and its `Hub-Claim-Check` headers name an object in the Object Store (`hub_claims`, kept 30 days).

`show` and `edit` fetch the bytes (checked against the recorded size and SHA-256) so ops see and edit
the payload itself, not an empty body. A plain replay sends the reference again, once the object is
found to be still there and the same (its size and digest in the store's own metadata: no download);
an edited payload never rides on the old reference (the flow would fetch the unedited bytes): it goes
inline when it fits the server's max_payload, else it is stored as an object of its own.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from engine.claim_check import CLAIM, CLAIM_HEADERS, CLAIM_SHA, CLAIM_SIZE, CLAIM_TTL, ClaimChecks, fits


@dataclass
class Claim:
    ref: str                   # bucket/object
    size: int | None
    sha256: str | None
    data: bytes | None = None  # the fetched bytes, once fetched and checked
    problem: str | None = None  # why they could not be fetched

    @classmethod
    def of(cls, headers: dict[str, str]) -> "Claim | None":
        if CLAIM not in headers:
            return None
        size = headers.get(CLAIM_SIZE)
        return cls(headers[CLAIM], int(size) if size and size.isdigit() else None, headers.get(CLAIM_SHA))

    def describe(self) -> str:
        """One line for `show`: where the bytes are, how many, their digest, and whether they were read."""
        size = f"{self.size:,} bytes" if self.size is not None else "size unknown"
        state = ("fetched, size and SHA-256 checked" if self.data is not None
                 else f"NOT fetched: {self.problem}" if self.problem else "not fetched")
        return f"by claim check {self.ref}, {size}, sha256 {self.sha256 or '?'} ({state})"

    def as_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "size": self.size, "sha256": self.sha256, "fetched": self.data is not None,
                "problem": self.problem}


async def fetch(js: Any, claim: Claim) -> Claim:
    """Fill `claim.data` with the checked bytes, or `claim.problem` with why not."""
    try:
        claim.data = await ClaimChecks(js).fetch({CLAIM: claim.ref, CLAIM_SIZE: str(claim.size or ""),
                                                  CLAIM_SHA: claim.sha256 or ""})
    except Exception as exc:
        claim.problem = str(exc)
    return claim


async def still_there(js: Any, claim: Claim) -> str | None:
    """None when the referenced object is in the store as recorded (checked on its metadata), else why
    a replay of the reference would fail in the flow."""
    from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError

    bucket, _, name = claim.ref.partition("/")
    try:
        info = await (await js.object_store(bucket)).get_info(name)
    except (BucketNotFoundError, ObjectNotFoundError, NotFoundError):
        return (f"its payload came by claim check and {claim.ref} is gone (objects are kept "
                f"{CLAIM_TTL / 86400:g} days): the payload cannot be replayed; purge the record")
    if claim.size is not None and info.size != claim.size:
        return f"its claim-checked payload {claim.ref} is {info.size} bytes, the record says {claim.size}: not replayed"
    if claim.sha256 and info.digest and _hex(info.digest) != claim.sha256:
        return f"its claim-checked payload {claim.ref} is not the one recorded (SHA-256 differs): not replayed"
    return None


def _hex(digest: str) -> str | None:
    """The Object Store's `SHA-256=<base64url>` digest as hex (the claim header's spelling)."""
    kind, _, value = digest.partition("=")
    if kind.upper() != "SHA-256":
        return None
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()
    except ValueError:
        return None


async def carried(js: Any, headers: dict[str, str], data: bytes, msg_id: str) -> tuple[bytes, dict[str, str]]:
    """How an edited payload of a claim-checked record travels: inline without the old reference when
    it fits, else as a new object (named after the replay's message id) and its reference."""
    headers = {k: v for k, v in headers.items() if k not in CLAIM_HEADERS}
    if fits(js, data, headers):
        return data, headers
    reference = await ClaimChecks(js).put(msg_id.replace(":", "-"), data)
    return b"", {**headers, **reference}
