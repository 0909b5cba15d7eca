"""The `imap:` flow source: every mail in a folder is stored in JetStream, then moved to `processed`.

Principle 1 in mail form: a mail leaves the watched folder only after `Landing.store()` returned, i.e.
after JetStream confirmed it (or said it already had it: a crash between storing and moving stores it
again, and JetStream drops the copy by its Nats-Msg-Id, taken from the Message-ID). Fetching uses
BODY.PEEK[] so nothing is marked \\Seen before it is safe. A store that fails leaves the mail where it
is and the folder is looked at again later with a backoff. A mail too big for one NATS message goes
by claim check (engine/claim_check.py: the flow gets the same bytes); one over the claim-check limit is
moved to the source's `quarantine` folder (default Quarantine) with a `mail_quarantined` alert, so it is
not fetched for ever. Between looks the ingress waits in IDLE (new mail wakes it) or polls; any connection trouble reconnects with a backoff of 0.5 s doubling to
30 s, with one warning per outage rather than one per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any

import aioimaplib
import structlog

from adapters.imap.config import ImapEndpointConfig, cleartext_risk, tls_context
from adapters.imap.session import ConnectionLost, ImapRefused, ImapSession
from engine.alerts import publish_alert
from engine.claim_check import Unstorable
from engine.errors import ConfigError, PublishFailed
from engine.ingress import Landing
from engine.outage import ReconnectingIngress
from engine.secrets import resolve_setting
from engine.sources import ImapMailbox
from engine.spec import Flow
from engine.tasks import cancel_and_wait

log = structlog.get_logger("hub.imap")
TROUBLE = (OSError, TimeoutError, aioimaplib.AioImapException, ConnectionLost, ImapRefused)


def header_value(text: str, limit: int = 512) -> str:
    """One line of printable ASCII, as NATS headers need: whitespace folded, anything else escaped."""
    folded = " ".join(str(text).split()).encode("ascii", "backslashreplace").decode("ascii")
    return "".join(ch if " " <= ch <= "~" else "?" for ch in folded)[:limit]


def message_id_of(raw: bytes) -> str | None:
    """The Message-ID header of a raw mail, cleaned; None when absent or empty (hostile mail included)."""
    try:
        value = BytesHeaderParser(policy=compat32).parsebytes(raw).get("Message-ID")
    except Exception:  # a parser failure on broken headers must not stop the mailbox
        return None
    return (header_value(value) or None) if value is not None else None


class ImapIngress(ReconnectingIngress):
    """Watches one folder of one mailbox for a flow; counters and `state` show what it did."""

    STOP_GRACE = 5.0  # stop() waits this long for the mail in hand and LOGOUT, then cancels
    FETCH_CHUNK = 16  # mails per UID FETCH: bounds round trips ...
    FETCH_BYTES = 16 * 1024 * 1024  # ... and memory (a bigger mail is fetched alone)

    spec: ImapMailbox
    endpoint: ImapEndpointConfig

    def __init__(self, flow: Flow, spec: ImapMailbox, endpoint: ImapEndpointConfig, landing: Landing,
                 services: Any) -> None:
        super().__init__(flow, spec, endpoint, landing, services)
        self.stored = self.duplicates = self.moved = self.failed = self.quarantined = 0
        # states (self.state, engine/ingress.py): connecting, reading, idle, polling, retrying, down, stopped
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._password = ""
        self._tls: Any = None
        self._failing: set[int] = set()  # UIDs whose store failed: warned once each

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        name = self.spec.endpoint
        if not isinstance(self.endpoint, ImapEndpointConfig):
            raise ConfigError([f"flow {self.flow.name!r}: source endpoint {name!r} is not an imap endpoint"])
        self._password = resolve_setting(name, "password", self.endpoint.password)
        self._tls = tls_context(name, self.endpoint)
        if cleartext_risk(self.endpoint):
            log.warning("imap_cleartext", endpoint=name, host=self.endpoint.host,
                        hint="security: none sends the password in clear; use tls off loopback")
        self._task = asyncio.create_task(self._run(), name=f"imap-ingress-{self.flow.name}")

    async def stop(self) -> None:
        """Finish the mail in hand, leave IDLE, LOGOUT; cancel if that takes longer than STOP_GRACE (a
        server that does not answer a connect): nothing is lost, an unmoved mail is stored again as a duplicate."""
        self._stop.set()
        task, self._task = self._task, None
        if task is None:
            return
        await asyncio.wait({task}, timeout=min(self.endpoint.timeout, self.STOP_GRACE))
        await cancel_and_wait([task])
        if not task.cancelled() and task.exception() is not None:
            log.warning("imap_ingress_ended", flow=self.flow.name, error=repr(task.exception()))
        self._set_state("stopped")

    # --- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stop.is_set():
            session = ImapSession(self.endpoint, self._password, self._tls)
            self._set_state("connecting")
            try:
                await session.open()
                await session.ensure_folder(self.spec.processed)
                await self._serve(session)
            except TROUBLE as exc:
                self._down(exc)
            except Exception as exc:  # a bug must not end the ingress: keep it visible and go on
                log.error("imap_ingress_failed", flow=self.flow.name, error=_short(exc), exc_info=True)
                self._down(exc, quiet=True)
            finally:
                await session.close()
            if self._stop.is_set():
                break
            self._set_state("down")
            await self.outage.pause(self._stop)

    def _down(self, exc: BaseException, quiet: bool = False) -> None:
        """A failed connection or session: warn at the start of an outage only."""
        if self.outage.failed() and not quiet:
            log.warning("imap_unavailable", flow=self.flow.name, server=self._where(), error=_short(exc),
                        retry=self.outage.retry)

    def _up(self) -> None:
        """The folder is selected: the outage, if any, is over (counted only once the session works, so a
        server that accepts logins but fails SELECT still backs off)."""
        ended = self.outage.recovered()
        if ended is not None:
            log.info("imap_reconnected", flow=self.flow.name, server=self._where(), **ended)
        self._changed.set()

    async def _serve(self, session: ImapSession) -> None:
        """Read the folder empty, then wait for more; returns only when stopping."""
        retry, first = self.BACKOFF_START, True
        while not self._stop.is_set():
            self._set_state("reading")
            exists, validity = await session.select(self.spec.folder)
            if first:
                self._up()
                first = False
            found = left = 0
            if exists:
                found, left = await self._drain(session, validity)
            if self._stop.is_set():
                return
            if left:  # a store or a move failed: look again later (new mail still wakes us)
                await self._wait(session, retry, "retrying")
                retry = min(retry * 2, self.BACKOFF_MAX)
                continue
            retry = self.BACKOFF_START
            if not found:  # nothing (more) to read: mail that came meanwhile shows in the next SELECT
                await self._wait(session, None, "idle")

    async def _wait(self, session: ImapSession, seconds: float | None, state: str) -> None:
        if self.spec.idle and session.has("IDLE"):
            renew = self.endpoint.idle_renew
            self._set_state(state)
            await session.idle(renew if seconds is None else min(seconds, renew), self._stop)
            return
        self._set_state("polling" if seconds is None else state)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), self.spec.poll if seconds is None else seconds)

    async def _drain(self, session: ImapSession, validity: int) -> tuple[int, int]:
        """Store and move every mail in the folder; answers (mails found, mails left in place). Sizes
        come first: a mail over the claim-check limit is quarantined unread, and a fetch holds at most
        FETCH_CHUNK mails and FETCH_BYTES bytes (a big mail is fetched alone)."""
        uids = await session.uids()
        left = 0
        sizes = await session.sizes(uids) if uids else {}
        limit = self.landing.claims.max_bytes
        for uid in [u for u in uids if sizes.get(u, 0) > limit]:
            reason = f"{sizes[uid]} bytes exceed the claim-check limit of {limit} bytes"
            if not await self._quarantine(session, uid, None, reason):
                left += 1
        for chunk in _chunks([u for u in uids if sizes.get(u, 0) <= limit], sizes, self.FETCH_CHUNK, self.FETCH_BYTES):
            if self._stop.is_set():
                return len(uids), left
            mails = await session.fetch(chunk)
            landed = await self._land(session, mails, validity)
            left += len(mails) - len(landed)  # a UID missing from the answer is gone (another reader moved it)
            if landed:
                try:
                    await session.move(landed, self.spec.processed)
                except ImapRefused as exc:  # stored already: the next look stores them as duplicates
                    log.warning("imap_move_failed", flow=self.flow.name, uids=landed, error=_short(exc))
                    left += len(landed)
                    continue
                self.moved += len(landed)
                self._changed.set()
        return len(uids), left

    async def _quarantine(self, session: ImapSession, uid: int, message_id: str | None, reason: str) -> bool:
        """A mail the hub cannot store at all: moved to the source's `quarantine` folder (ops find it there, never
        fetched again) with an alert naming it and the reason; False when that did not happen (tried again)."""
        try:
            await session.ensure_folder(self.spec.quarantine)
            await publish_alert(self.landing.js, self.flow.name, "mail_quarantined", "firing", uid=uid,
                                message_id=message_id, folder=self.spec.folder, moved_to=self.spec.quarantine,
                                reason=reason)
            await session.move([uid], self.spec.quarantine)
        except ImapRefused as exc:
            log.warning("imap_quarantine_failed", flow=self.flow.name, uid=uid, error=_short(exc))
            return False
        except Exception as exc:  # JetStream did not take the alert: the mail stays, the next look tries again
            if isinstance(exc, TROUBLE):
                raise
            log.warning("imap_quarantine_failed", flow=self.flow.name, uid=uid, error=_short(exc))
            return False
        self.quarantined += 1
        log.error("imap_quarantined", flow=self.flow.name, uid=uid, message_id=message_id, reason=reason,
                  folder=self.spec.quarantine)
        self._changed.set()
        return True

    async def _land(self, session: ImapSession, mails: list[tuple[int, bytes]], validity: int) -> list[int]:
        """Store a fetched chunk (one wait for all acks); the UIDs JetStream now has (new or duplicate),
        which alone may be moved."""
        items = []
        for uid, raw in mails:
            message_id = message_id_of(raw)
            headers = {"Hub-Mail-Uid": str(uid), "Hub-Mail-Uidvalidity": str(validity),
                       "Hub-Mail-Folder": header_value(self.spec.folder)}
            if message_id:
                headers["Hub-Mail-Message-Id"] = message_id
            items.append((raw, message_id or f"uid:{validity}:{uid}", headers))
        landed = []
        for (uid, _), (_, identity, headers), outcome in zip(mails, items, await self.landing.store_many(items)):
            if isinstance(outcome, Unstorable):
                await self._quarantine(session, uid, headers.get("Hub-Mail-Message-Id"), outcome.reason)
                continue
            if isinstance(outcome, PublishFailed):
                self.failed += 1
                if uid not in self._failing:
                    self._failing.add(uid)
                    log.warning("imap_store_failed", flow=self.flow.name, uid=uid, identity=identity,
                                error=_short(outcome), then="left in the folder, tried again later")
                continue
            self._failing.discard(uid)
            if outcome:
                self.stored += 1
            else:
                self.duplicates += 1
            landed.append(uid)
        self._changed.set()
        return landed


def _chunks(uids: list[int], sizes: dict[int, int], most: int, budget: int) -> list[list[int]]:
    """UIDs in fetch groups of at most `most` mails and `budget` bytes (a bigger mail is a group alone)."""
    groups: list[list[int]] = []
    size = 0
    for uid in uids:
        if not groups or len(groups[-1]) >= most or size + sizes.get(uid, 0) > budget:
            groups.append([])
            size = 0
        groups[-1].append(uid)
        size += sizes.get(uid, 0)
    return groups


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
