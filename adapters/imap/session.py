"""One logged-in IMAP connection, as the ingress needs it: select, list UIDs, fetch, move, IDLE.

aioimaplib leaves a command waiting until its timeout when the server goes away (a restart, a dropped
link); every command here races the connection-lost callback instead, so an outage is noticed at once
and surfaces as ConnectionLost. Mailbox names are quoted and modified-UTF-7 encoded (RFC 3501 5.1.3),
so a folder called "Traité" or "Processed Mail" works; aioimaplib sends arguments as given.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections.abc import Awaitable
from typing import Any, TypeVar

import aioimaplib

from adapters.imap.config import ImapEndpointConfig

T = TypeVar("T")
_FETCH_START = re.compile(rb"^\d+ FETCH \(")
_UID = re.compile(rb"\bUID (\d+)")
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_EXISTS = re.compile(rb"^(\d+) EXISTS$")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")


class ConnectionLost(ConnectionError):
    """The server closed the connection or said BYE."""


class ImapRefused(ConnectionError):
    """The server answered NO/BAD to a command the ingress cannot do without (LOGIN, SELECT)."""


def mailbox_name(name: str) -> str:
    """`name` as an IMAP quoted string in modified UTF-7: "Traité" -> "Trait&AOk-"."""
    out, run = [], []

    def flush() -> None:
        if run:
            b64 = base64.b64encode("".join(run).encode("utf-16-be")).decode("ascii").rstrip("=")
            out.append("&" + b64.replace("/", ",") + "-")
            run.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return '"' + "".join(out).replace("\\", "\\\\").replace('"', '\\"') + '"'


def uid_set(uids: list[int]) -> str:
    return ",".join(str(u) for u in uids)


class ImapSession:
    """Connect and log in with `open()`; every method raises ConnectionLost when the link is gone."""

    def __init__(self, config: ImapEndpointConfig, password: str, tls: ssl.SSLContext | None) -> None:
        self.config = config
        self._password = password
        self._tls = tls
        self._lost = asyncio.Event()
        self.imap: aioimaplib.IMAP4 | None = None

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def has(self, capability: str) -> bool:
        return self.imap is not None and self.imap.has_capability(capability)

    async def _guard(self, aw: Awaitable[T], extra: asyncio.Event | None = None) -> T | None:
        """Await `aw` unless the connection drops first (ConnectionLost) or `extra` is set (None)."""
        task = asyncio.ensure_future(aw)
        waiters = [asyncio.ensure_future(self._lost.wait())]
        if extra is not None:
            waiters.append(asyncio.ensure_future(extra.wait()))
        try:
            await asyncio.wait({task, *waiters}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            for w in waiters:
                w.cancel()
        if task.done():
            return task.result()
        task.cancel()
        if self._lost.is_set():
            raise ConnectionLost(f"{self.config.host}:{self.config.port}: connection lost")
        return None

    async def _ok(self, what: str, aw: Awaitable[Any]) -> Any:
        response = await self._guard(aw)
        if response.result != "OK":
            raise ImapRefused(f"{what}: {response.result} {_text(response)}")
        return response

    async def open(self) -> None:
        c = self.config
        self.imap = aioimaplib.IMAP4(c.host, c.port, timeout=c.timeout, ssl_context=self._tls,
                                     conn_lost_cb=lambda exc: self._lost.set())
        await self._guard(self.imap.wait_hello_from_server())
        await self._ok(f"LOGIN {c.username}", self.imap.login(c.username, self._password))

    async def select(self, folder: str) -> tuple[int, int]:
        """Select `folder`; answers (messages in it, UIDVALIDITY). A synchronous command in aioimaplib, so
        it sees the EXISTS counts it would drop during FETCH or SEARCH."""
        response = await self._ok(f"SELECT {folder}", self.imap.select(mailbox_name(folder)))
        exists = validity = 0
        for line in response.lines:
            if isinstance(line, bytes):
                if m := _EXISTS.match(line):
                    exists = int(m.group(1))
                elif m := _UIDVALIDITY.search(line):
                    validity = int(m.group(1))
        return exists, validity

    async def ensure_folder(self, folder: str) -> None:
        """Create `folder` unless it exists already."""
        listed = await self._ok(f"LIST {folder}", self.imap.list('""', mailbox_name(folder)))
        if any(isinstance(line, bytes) and b"(" in line for line in listed.lines[:-1]):
            return
        response = await self._guard(self.imap.create(mailbox_name(folder)))
        if response.result != "OK" and b"ALREADYEXISTS" not in b" ".join(response.lines):
            raise ImapRefused(f"CREATE {folder}: {response.result} {_text(response)}")

    async def uids(self) -> list[int]:
        """UIDs of the selected folder's messages not flagged \\Deleted, oldest first."""
        response = await self._ok("UID SEARCH", self.imap.uid_search("UNDELETED", charset=None))
        return sorted({int(u) for line in response.lines[:-1] if isinstance(line, bytes)
                       for u in line.split() if u.isdigit()})

    async def sizes(self, uids: list[int]) -> dict[int, int]:
        """RFC822.SIZE of each UID: what a fetch would bring, known before fetching it."""
        response = await self._ok("UID FETCH", self.imap.uid("fetch", uid_set(uids), "(UID RFC822.SIZE)"))
        found = {}
        for line in response.lines[:-1]:
            if isinstance(line, bytes) and (uid := _UID.search(line)) and (size := _SIZE.search(line)):
                found[int(uid.group(1))] = int(size.group(1))
        return found

    async def fetch(self, uids: list[int]) -> list[tuple[int, bytes]]:
        """The raw MIME of each UID (BODY.PEEK[]: nothing gets \\Seen), in the order asked."""
        response = await self._ok("UID FETCH", self.imap.uid("fetch", uid_set(uids), "(UID BODY.PEEK[])"))
        items: list[list[Any]] = []
        for line in response.lines[:-1]:
            if isinstance(line, bytearray):
                if items and items[-1][1] is None:
                    items[-1][1] = bytes(line)
                continue
            if _FETCH_START.match(line):
                items.append([None, None])
            if items and items[-1][0] is None and (m := _UID.search(line)):
                items[-1][0] = int(m.group(1))
        found = {uid: raw for uid, raw in items if uid is not None and raw is not None}
        return [(uid, found[uid]) for uid in uids if uid in found]

    async def move(self, uids: list[int], folder: str) -> None:
        """UID MOVE where offered; else COPY, flag \\Deleted and expunge (only these UIDs with UIDPLUS)."""
        where, target = uid_set(uids), mailbox_name(folder)
        if self.has("MOVE"):
            await self._ok(f"UID MOVE {where} {folder}", self.imap.uid("move", where, target))
            return
        await self._ok(f"UID COPY {where} {folder}", self.imap.uid("copy", where, target))
        await self._ok(f"UID STORE {where}", self.imap.uid("store", where, "+FLAGS.SILENT", r"(\Deleted)"))
        if self.has("UIDPLUS"):
            await self._ok(f"UID EXPUNGE {where}", self.imap.uid("expunge", where))
        else:  # also expunges mail others flagged \Deleted: what they asked for anyway
            await self._ok("EXPUNGE", self.imap.expunge())

    async def idle(self, seconds: float, stop: asyncio.Event) -> bool:
        """IDLE until the server announces new mail (True), `seconds` pass or `stop` is set (False)."""
        imap = self.imap
        while not imap.protocol.idle_queue.empty():  # pushes left over from the previous IDLE
            imap.protocol.idle_queue.get_nowait()
        idle = await self._guard(imap.idle_start(timeout=seconds))
        loop = asyncio.get_running_loop()
        deadline, woke = loop.time() + seconds, False
        while not woke and (remaining := deadline - loop.time()) > 0:
            try:
                push = await self._guard(imap.wait_server_push(timeout=remaining + 1), stop)
            except TimeoutError:
                break
            if push is None or push == aioimaplib.STOP_WAIT_SERVER_PUSH:
                break
            if any(isinstance(line, bytes) and line.startswith(b"BYE") for line in push):
                raise ConnectionLost(f"{self.config.host}:{self.config.port}: server said BYE")
            woke = any(isinstance(line, bytes) and _EXISTS.match(line) for line in push)
        imap.idle_done()
        await self._guard(asyncio.wait_for(idle, self.config.timeout))
        return woke

    async def close(self) -> None:
        """LOGOUT when still connected (bounded), then drop the socket either way."""
        imap, self.imap = self.imap, None
        if imap is None:
            return
        try:
            if not self._lost.is_set() and imap.get_state() in ("AUTH", "SELECTED"):
                await self._guard(asyncio.wait_for(imap.logout(), 2.0))
        except Exception:
            pass
        finally:
            transport = imap.protocol.transport
            if transport is not None:
                transport.close()


def _text(response: Any) -> str:
    lines = [bytes(line) for line in response.lines if isinstance(line, bytes | bytearray)]
    return b" ".join(lines).decode("utf-8", "replace")[:300]
