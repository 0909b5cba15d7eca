"""What an sftp source has done with each file version, in the KV bucket `hub_sftp_done`, shared by runners.

`done.<id>` is written last, after the Object Store and JetStream confirmed (principle 1), so a crash
before it repeats the transfer and the landing, which the Object Store (same name) and JetStream (same
Nats-Msg-Id) absorb. `warned.<id>` and `lost.<id>` are written with an atomic create, so however many
runners watch the drop, an alert about one file is raised once. Ids hash the flow and the file's
identity (path, size, mtime): a file replaced under the same name is a new file.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from adapters.sftp.session import RemoteFile
from engine.kv import bucket
from engine.messages import derived_id

BUCKET = "hub_sftp_done"
KEEP = 30 * 86400.0  # longer than any drop keeps a file (24 h here); a key outliving its file is useless


class Ledger:
    """The done marks and alert marks of one flow, with a local cache of what is known done."""

    def __init__(self, js: Any, flow: str) -> None:
        self.js = js
        self.flow = flow
        self.kv: Any = None
        self._done: set[str] = set()

    async def open(self) -> None:
        self.kv = await bucket(self.js, BUCKET, KEEP)

    def key(self, kind: str, remote: RemoteFile) -> str:
        return f"{kind}.{derived_id('sftp', self.flow, remote.identity)}"

    async def is_done(self, remote: RemoteFile) -> bool:
        """True once any runner marked this file version done (asks KV until it is)."""
        if remote.identity in self._done:
            return True
        try:
            await self.kv.get(self.key("done", remote))
        except KeyNotFoundError:
            return False
        self._done.add(remote.identity)
        return True

    async def mark_done(self, remote: RemoteFile, outcome: str, **facts: Any) -> None:
        record = {"flow": self.flow, "file": remote.path, "size": remote.size, "mtime": remote.mtime,
                  "outcome": outcome, "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **facts}
        await self.kv.put(self.key("done", remote), json.dumps(record).encode())
        self._done.add(remote.identity)

    async def first_time(self, kind: str, remote: RemoteFile) -> bool:
        """True for the one caller (of all runners, ever) that records `kind` for this file first."""
        try:
            await self.kv.create(self.key(kind, remote), json.dumps({"file": remote.path}).encode())
        except KeyWrongLastSequenceError:
            return False
        return True

    async def forget(self, kind: str, remote: RemoteFile) -> None:
        """Undo `first_time` (its alert could not be published: the next look tries again)."""
        try:
            await self.kv.delete(self.key(kind, remote))
        except Exception:  # best effort: the worst case is one alert not repeated
            pass

    def keep_only(self, seen: set[str]) -> None:
        """Forget cached identities no longer listed (the janitor took them), so the cache stays small."""
        self._done &= seen
