r"""The `sftp:` flow source: every new file in a drop directory, claim-checked into the Object Store.

Per file, in this order, each step confirmed before the next: stream the bytes into the Object Store
(SHA-256 checked, adapters/sftp/transfer.py), store the landing record on `hub.ingress.<flow>`
(Landing.store, Nats-Msg-Id from name+size+mtime), mark it done in KV (adapters/sftp/ledger.py). A
crash between two steps repeats the earlier ones at the next start: the object is put again under the
same name, the landing is dropped by JetStream as a duplicate, so the flow announces the file once.
A file whose name does not match the pattern (compiled with re.ASCII: `\d` is 0-9 only, a name with
full-width digits does not pass), whose name is not valid UTF-8 (read and kept by its bytes), or named
.pdf but not starting with %PDF-, is kept in the Object Store under quarantine/, dead-lettered with the
reason (adapters/sftp/records.py) and announced by an `sftp_quarantined` alert; the rest of the drop
goes on. The backoff is reset only once a session has listed the directory: a server that accepts
the login and then fails is retried 0.5 s doubling to 30 s, not at a constant 0.5 s.

Deadline and loss alerts: adapters/sftp/reports.py. paramiko blocks, so it runs on a worker thread of
this ingress's own; a dropped connection reconnects with a backoff of 0.5 s doubling to 30 s, one
warning per outage; a refused host key is an error (and `sftp_host_key`), retried the same way since
known_hosts is read again at every attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog
from nats.js.errors import NotFoundError

from adapters.sftp import records
from adapters.sftp.config import Credentials, SftpEndpointConfig
from adapters.sftp.ledger import KEEP, Ledger
from adapters.sftp.reports import JETSTREAM_TROUBLE, FileReports, short, spec_problems
from adapters.sftp.session import CONNECTION_TROUBLE, HostKeyRefused, LoginRefused, RemoteFile, SftpSession
from adapters.sftp.transfer import HashingReader, SourceReadFailed, TransferMismatch, object_store, put_verified
from engine.errors import ConfigError, PublishFailed
from engine.ingress import Landing
from engine.messages import encode
from engine.outage import ReconnectingIngress
from engine.sources import SftpDrop
from engine.spec import Flow
from engine.tasks import cancel_and_wait

log = structlog.get_logger("hub.sftp")
REFUSED = (HostKeyRefused, LoginRefused)


class SftpIngress(ReconnectingIngress):
    """Watches one directory of one SFTP server for a flow; counters and `state` show what it did."""

    STOP_GRACE = 5.0  # stop() lets the file in hand finish this long, then cancels (it is fetched again)

    spec: SftpDrop
    endpoint: SftpEndpointConfig

    def __init__(self, flow: Flow, spec: SftpDrop, endpoint: SftpEndpointConfig, landing: Landing,
                 services: Any) -> None:
        super().__init__(flow, spec, endpoint, landing, services)
        self.fetched = self.bytes = self.quarantined = self.duplicates = 0
        # states (self.state, engine/ingress.py): connecting, listing, fetching, idle, down, refused, stopped
        self.last_error: str | None = None
        # tests and drills: awaited after the object put ("put") and after the landing ("stored")
        self.between_steps: Callable[[str, RemoteFile], Awaitable[None]] | None = None
        self.pattern = re.compile(spec.pattern, re.ASCII)  # \d, \w: ASCII only, as file names are meant
        self.js = landing.js
        self.ledger = Ledger(self.js, flow.name)
        self.reports = FileReports(self.js, flow.name, spec, self.ledger, self._changed_now)
        self._store: Any = None
        self._credentials: Credentials | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._key_alerted = False  # an sftp_host_key alert is firing

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        name = self.spec.endpoint
        if not isinstance(self.endpoint, SftpEndpointConfig):
            raise ConfigError([f"flow {self.flow.name!r}: source endpoint {name!r} is not an sftp endpoint"])
        self._credentials = Credentials(name, self.endpoint)
        if problems := spec_problems(self.flow.name, self.spec, KEEP):
            raise ConfigError(problems)
        try:
            await self.js.find_stream_name_by_subject(f"ops.alert.{self.flow.name}")
        except NotFoundError:
            raise ConfigError([f"flow {self.flow.name!r}: no stream captures ops.alert.{self.flow.name}: the "
                               "sftp_deadline and sftp_file_lost alerts would be lost"]) from None
        await self.ledger.open()
        self._store = await object_store(self.js, self.spec.bucket)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sftp-{self.flow.name}")
        self._task = asyncio.create_task(self._run(), name=f"sftp-ingress-{self.flow.name}")

    async def stop(self) -> None:
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            await asyncio.wait({task}, timeout=self.STOP_GRACE)
            await cancel_and_wait([task])
            if not task.cancelled() and task.exception() is not None:
                log.warning("sftp_ingress_ended", flow=self.flow.name, error=short(task.exception()))
        if self._pool is not None:
            self._pool.shutdown(wait=False)  # a paramiko call still running ends at its timeout
        self._set_state("stopped")

    def _changed_now(self) -> None:
        self._changed.set()

    failed = property(lambda self: self.reports.failed, doc="Attempts that left a file on the server.")
    lost = property(lambda self: self.reports.lost, doc="Files reported deleted before they were fetched.")
    deadline_alerts = property(lambda self: self.reports.deadline_alerts, doc="sftp_deadline alerts raised.")

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # --- connection ----------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._credentials is not None
        while not self._stop.is_set():
            session = SftpSession(self.endpoint, self._credentials)
            self._set_state("connecting")
            try:
                await self._blocking(session.open)
                await self._serve(session)
            except REFUSED as exc:
                await self._down(exc, refused=True)
            except (*CONNECTION_TROUBLE, SourceReadFailed) as exc:
                await self._down(exc)
            except Exception as exc:  # a bug must not end the ingress: keep it visible and go on
                log.error("sftp_ingress_failed", flow=self.flow.name, error=short(exc), exc_info=True)
                await self._down(exc, quiet=True)
            finally:
                with contextlib.suppress(Exception):
                    await self._blocking(session.close)
            if self._stop.is_set():
                break
            self._set_state("refused" if self.state == "refused" else "down")
            await self.outage.pause(self._stop)

    async def _down(self, exc: BaseException, refused: bool = False, quiet: bool = False) -> None:
        """A failed connection or session: report once per outage, and again only if its kind changes
        (a server that comes back with a new host key is refused, not merely down)."""
        self.last_error = short(exc)
        if refused:
            self.state = "refused"
        if not self.outage.failed("refused" if refused else "unavailable"):
            return
        retry = self.outage.retry
        if refused:
            log.error("sftp_refused", flow=self.flow.name, server=self._where(), error=str(exc), retry=retry)
            if isinstance(exc, HostKeyRefused) and not self._key_alerted:
                self._key_alerted = await self.reports.alert("sftp_host_key", "firing", server=self._where(),
                                                             error=str(exc))
        elif not quiet:
            log.warning("sftp_unavailable", flow=self.flow.name, server=self._where(), error=self.last_error,
                        retry=retry)

    async def _up(self) -> None:
        ended = self.outage.recovered()
        if ended is not None:
            log.info("sftp_reconnected", flow=self.flow.name, server=self._where(), **ended)
        if self._key_alerted:
            self._key_alerted = not await self.reports.alert("sftp_host_key", "resolved", server=self._where())
        self.last_error = None
        self._changed.set()

    # --- the drop directory --------------------------------------------------------------------

    async def _serve(self, session: SftpSession) -> None:
        first = True
        while not self._stop.is_set():
            self._set_state("listing")
            try:
                files = await self._blocking(session.listdir, self.spec.directory)
            except FileNotFoundError:
                raise FileNotFoundError(f"directory {self.spec.directory!r} does not exist on {self._where()}") from None
            if first:  # the session works (a login alone does not say so): the outage, if any, is over
                await self._up()
                first = False
            try:
                await self._cycle(session, files)
            except JETSTREAM_TROUBLE as exc:  # the SFTP side is fine: keep the session, look again later
                self.last_error = self.reports.jetstream_trouble(exc)
            else:
                self.reports.jetstream_back()
            self._set_state("idle")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.spec.poll)

    async def _cycle(self, session: SftpSession, files: list[RemoteFile]) -> None:
        """Report what vanished, take what is new (oldest first), then warn about deadlines."""
        listed = {f.identity: f for f in files}
        self.ledger.keep_only(set(listed))
        try:
            await self.reports.vanished(listed)
            for remote in files:
                if self._stop.is_set():
                    return
                if await self.ledger.is_done(remote):
                    self.reports.pending.pop(remote.identity, None)
                    continue
                self.reports.pending[remote.identity] = remote
                if not await self._take(session, remote):
                    break
        finally:
            await self.reports.deadlines()

    async def _take(self, session: SftpSession, remote: RemoteFile) -> bool:
        """Fetch or quarantine one file. False: stop this round (JetStream is failing), try at the next poll."""
        self._set_state("fetching")
        try:
            await self._transfer(session, remote)
        except FileNotFoundError:  # listed a moment ago, gone now: the janitor was faster
            await self.reports.lost_file(remote)
        except TransferMismatch as exc:  # changed while read, or stored wrong: this file only
            self.reports.failure(remote, exc)
        except JETSTREAM_TROUBLE as exc:  # every file would fail the same way: end this round
            self.reports.failure(remote, exc)
            return False
        except (*CONNECTION_TROUBLE, SourceReadFailed) as exc:
            if not await self._blocking(session.alive):
                raise
            self.reports.failure(remote, exc)  # the server refused this file only (permissions, an I/O error)
        return True

    async def _transfer(self, session: SftpSession, remote: RemoteFile) -> None:
        """Object Store, then JetStream (landing or dead letter), then the done mark; each confirmed."""
        name_problem = records.name_problem(self.pattern, remote)
        fh = await self._blocking(session.open_file, remote)
        try:
            reader = HashingReader(fh)
            expect = records.PDF_MAGIC if remote.name.lower().endswith(".pdf") else None
            head = await self._blocking(reader.head, len(records.PDF_MAGIC))
            problem = name_problem or records.content_problem(head, expect)
            name = remote.name if problem is None else records.QUARANTINE_PREFIX + remote.name
            stored = await put_verified(self.js, self._store, self.spec.bucket, name, reader, remote.size,
                                        description=f"sftp {self._where()}{remote.path}")
        finally:
            with contextlib.suppress(Exception):
                await self._blocking(fh.close)
        await self._step("put", remote)
        now = time.time()
        if problem is not None:
            subject, data, headers = records.quarantine_message(self.flow.name, self.landing.subject, remote, stored,
                                                                problem, name_problem is not None, now)
            try:
                await self.js.publish(subject, data, headers=headers, timeout=self.landing.publish_timeout)
            except Exception as exc:
                raise PublishFailed(f"{subject}: quarantine record not stored: {exc!r}") from exc
            log.warning("sftp_quarantined", flow=self.flow.name, file=remote.path, reason=problem, object=name)
            if not await self.reports.alert("sftp_quarantined", "firing", file=remote.path, reason=problem,
                                            object=f"{stored.bucket}/{stored.name}", size=stored.size,
                                            path_bytes_hex=remote.raw_path.hex() if remote.raw_path else None):
                raise PublishFailed(f"ops.alert.{self.flow.name}: sftp_quarantined alert not stored")
        elif not await self.landing.store(encode(records.landing_record(self.pattern, remote, stored, now)),
                                          remote.identity, headers={"content-type": "application/json"}):
            self.duplicates += 1
        await self._step("stored", remote)
        await self.ledger.mark_done(remote, "quarantined" if problem else "fetched", bucket=stored.bucket,
                                    object=stored.name, sha256=stored.sha256, reason=problem)
        await self.reports.done(remote)
        if problem is not None:
            self.quarantined += 1
        else:
            self.fetched += 1
            self.bytes += stored.size
        self._changed.set()

    async def _step(self, step: str, remote: RemoteFile) -> None:
        if self.between_steps is not None:
            await self.between_steps(step, remote)
