"""What an sftp source tells ops about files it has not (yet) taken: failures, deadlines, losses.

The server deletes a file `lifetime` after it appeared, fetched or not. A file still unfetched
`warn_before` that raises `sftp_deadline` (firing; `resolved` once it is fetched after all), a file
that vanished before any runner fetched it `sftp_file_lost`, both on `ops.alert.<flow>` and once per
file of all runners (an atomic KV create decides who says it; if the alert cannot be published the mark
is taken back, so the next look says it). A file that keeps failing is warned about in the log once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import nats.errors
import structlog

from adapters.sftp.ledger import Ledger
from adapters.sftp.session import RemoteFile
from engine.alerts import publish_alert
from engine.errors import PublishFailed
from engine.sources import SftpDrop

log = structlog.get_logger("hub.sftp")
JETSTREAM_TROUBLE = (nats.errors.Error, PublishFailed)  # before CONNECTION_TROUBLE: a NATS timeout is an OSError


class FileReports:
    """Files listed but not done, and what was said about them; `changed` wakes the ingress's waiters."""

    def __init__(self, js: Any, flow: str, spec: SftpDrop, ledger: Ledger, changed: Callable[[], None]) -> None:
        self.js, self.flow, self.spec, self.ledger, self.changed = js, flow, spec, ledger, changed
        self.pending: dict[str, RemoteFile] = {}  # identity -> file: listed, not done yet
        self.failing: dict[str, str] = {}         # identity -> why its last attempt failed
        self.warned: set[str] = set()
        self.failed = self.lost = self.deadline_alerts = 0
        self.last_error: str | None = None
        self._js_down = False  # a JetStream outage is warned about once

    async def alert(self, alert: str, state: str, **fields: Any) -> bool:
        """Publish an alert event; False (logged) when JetStream did not take it."""
        try:
            await publish_alert(self.js, self.flow, alert, state, **fields)
        except Exception as exc:
            log.warning("sftp_alert_failed", flow=self.flow, alert=alert, error=short(exc))
            return False
        return True

    def jetstream_trouble(self, exc: BaseException) -> str:
        """A round ended by JetStream (down, no leader): warned once per outage; answers the error text."""
        self.last_error = short(exc)
        if not self._js_down:
            self._js_down = True
            log.warning("sftp_jetstream_unavailable", flow=self.flow, error=self.last_error,
                        then="files stay on the server, tried again at the next poll")
        self.changed()
        return self.last_error

    def jetstream_back(self) -> None:
        if self._js_down:
            log.info("sftp_jetstream_back", flow=self.flow)
        self._js_down = False

    def failure(self, remote: RemoteFile, exc: BaseException) -> None:
        self.failed += 1
        self.last_error = short(exc)
        first = remote.identity not in self.failing
        self.failing[remote.identity] = self.last_error
        if first:
            log.warning("sftp_fetch_failed", flow=self.flow, file=remote.path, error=self.last_error,
                        then="left on the server, tried again at the next poll")
        self.changed()

    async def done(self, remote: RemoteFile) -> None:
        """The file is taken: forget it, and end what was said about it."""
        self.pending.pop(remote.identity, None)
        if self.failing.pop(remote.identity, None) is not None:
            log.info("sftp_file_recovered", flow=self.flow, file=remote.path)
        if remote.identity in self.warned:
            self.warned.discard(remote.identity)
            await self.alert("sftp_deadline", "resolved", file=remote.path)

    async def vanished(self, listed: dict[str, RemoteFile]) -> None:
        """Pending files missing from this listing: lost, unless replaced under the same name."""
        names = {f.name for f in listed.values()}
        for ident, gone in [(i, f) for i, f in self.pending.items() if i not in listed]:
            del self.pending[ident]
            if gone.name not in names:
                await self.lost_file(gone)

    async def lost_file(self, remote: RemoteFile) -> None:
        """A file that vanished before any runner fetched it: alert once, by name."""
        self.pending.pop(remote.identity, None)
        if await self.ledger.is_done(remote) or not await self.ledger.first_time("lost", remote):
            return
        if not await self.alert("sftp_file_lost", "firing", file=remote.path, size=remote.size,
                                age=round(time.time() - remote.mtime, 1), lifetime=self.spec.lifetime,
                                error=self.failing.pop(remote.identity, None)):
            await self.ledger.forget("lost", remote)
            return
        self.lost += 1
        self.changed()

    async def deadlines(self) -> None:
        """Files still not fetched this close to deletion: alert once per file, of all runners."""
        try:
            await self._deadline_alerts(self.spec.lifetime - self.spec.warn_before, time.time())
        except JETSTREAM_TROUBLE as exc:  # said again at the next poll: nothing was marked
            log.warning("sftp_deadline_check_failed", flow=self.flow, error=short(exc))

    async def _deadline_alerts(self, threshold: float, now: float) -> None:
        for remote in list(self.pending.values()):
            age = now - remote.mtime
            if age <= threshold or remote.identity in self.warned:
                continue
            self.warned.add(remote.identity)
            if not await self.ledger.first_time("warned", remote):
                continue
            if not await self.alert("sftp_deadline", "firing", file=remote.path, age=round(age, 1),
                                    deleted_in=round(max(0.0, self.spec.lifetime - age), 1),
                                    error=self.failing.get(remote.identity)):
                self.warned.discard(remote.identity)
                await self.ledger.forget("warned", remote)
                continue
            self.deadline_alerts += 1
            self.changed()


def spec_problems(flow: str, spec: SftpDrop, keep: float) -> list[str]:
    """What makes a source's deadline settings unusable (checked when the ingress starts)."""
    problems = []
    if spec.warn_before >= spec.lifetime:
        problems.append(f"flow {flow!r}: sftp warn_before ({spec.warn_before:g}s) must be shorter than lifetime "
                        f"({spec.lifetime:g}s)")
    if spec.lifetime > keep:
        problems.append(f"flow {flow!r}: sftp lifetime over {keep / 86400:g} days: done marks would expire while "
                        "the file is still on the server")
    return problems


def short(exc: BaseException | None) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
