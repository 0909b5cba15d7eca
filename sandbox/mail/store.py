"""The one mail store the sandbox's SMTP and IMAP servers share: pymap's in-memory (dict) backend.

pymap keeps each user's mailboxes in its config's `set_cache`; SMTP delivery and `inject` append to the
same `MailboxData` objects an IMAP session selects, so a delivered mail shows up over IMAP at once and
wakes an IDLE-ing client. The store outlives the IMAP listener, which is what lets a test restart the
IMAP server and find the messages still there.
"""

from __future__ import annotations

import asyncio
import ssl
from argparse import Namespace
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from pymap.backend.dict import Config, Identity, Login
from pymap.backend.dict.filter import FilterSet
from pymap.backend.dict.mailbox import MailboxData, MailboxSet
from pymap.concurrent import Event, Subsystem
from pymap.parsing.message import AppendMessage
from pymap.parsing.specials import ObjectId
from pymap.parsing.specials.flag import Flag
from pymap.selected import SelectedMailbox
from pymap.user import Passwords, UserMetadata
from pysasl.hashing import BuiltinHash


@dataclass(frozen=True)
class StoredMessage:
    """One message as the store holds it: its IMAP UID, its flags (e.g. "\\Seen") and the raw MIME."""

    uid: int
    flags: frozenset[str]
    raw: bytes


class _PromptMailboxData(MailboxData):
    """pymap's IDLE waits for the *next* change even when the mailbox already moved on since the client's
    last command, so a mail landing just before IDLE began would wait for another one; answer at once."""

    async def update_selected(self, selected: SelectedMailbox, *, wait_on: Event | None = None) -> SelectedMailbox:
        if wait_on is not None and selected.mod_sequence is not None \
                and selected.mod_sequence < self._mod_sequences.highest:
            wait_on = None
        return await super().update_selected(selected, wait_on=wait_on)


class _PromptMailboxSet(MailboxSet):
    """pymap's mailbox set, making its mailboxes `_PromptMailboxData`."""

    def __init__(self) -> None:
        super().__init__()
        self._inbox = _PromptMailboxData(self._content_cache, self._thread_cache)

    async def add_mailbox(self, name: str) -> ObjectId:
        async with self._set_lock.write_lock():
            if name in self._set:
                raise ValueError(name)
            self._set[name] = box = _PromptMailboxData(self._content_cache, self._thread_cache)
            return box.mailbox_id


class _SandboxConfig(Config):
    """pymap's dict-backend config with the sandbox's host name in the greeting (no DNS look-up)."""

    def __init__(self, *args: object, sandbox_hostname: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._sandbox_hostname = sandbox_hostname

    @property
    def greeting(self) -> bytes:
        return b"Server ready " + self._sandbox_hostname.encode("ascii")


class MailStore:
    """Users, their passwords and their mailboxes, for both servers."""

    def __init__(self, hostname: str, server_ssl: ssl.SSLContext | None) -> None:
        args = Namespace(passlib_cfg=None, proxy_protocol=None, inherited_sockets=None, debug=False)
        self.config = _SandboxConfig(
            args, host="127.0.0.1", port=0, demo_data=False, demo_user="", demo_password="",
            sandbox_hostname=hostname,
            # IMAP is implicit TLS (aioimaplib has no STARTTLS), so pymap offers no STARTTLS of its own
            ssl_context=server_ssl or ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
            tls_enabled=False, reject_dnsbl=False, invalid_user_sleep=0.0,
            hash_context=BuiltinHash(rounds=1000),  # the default 500k rounds cost ~0.3 s per login
            cpu_subsystem=Subsystem.for_asyncio(), bad_command_limit=None)
        self.login = Login(self.config)
        self.passwords: dict[str, str] = {}
        self._delivered: dict[str, int] = {}
        self._changed = asyncio.Condition()

    async def add_user(self, address: str, password: str) -> None:
        """A mailbox owner who can log in to IMAP and authenticate to SMTP with `password` (an existing
        user keeps their mail and gets the new password)."""
        hashed = await Passwords(self.config).hash_password(password)
        await Identity(address, self.login, None, frozenset()).set(
            UserMetadata(self.config, address, password=hashed, previous_entity_tag=UserMetadata.REPLACE_ANY))
        self.config.set_cache.setdefault(address, (_PromptMailboxSet(), FilterSet()))
        self.passwords[address] = password
        self._delivered.setdefault(address, 0)

    def has_user(self, address: str) -> bool:
        return address in self.passwords

    def user_for(self, address: str) -> str | None:
        """The user an envelope address belongs to (mail domains and local parts compare without case)."""
        wanted = address.strip("<>").lower()
        return next((user for user in self.passwords if user.lower() == wanted), None)

    def check_password(self, address: str, password: str) -> bool:
        return self.has_user(address) and self.passwords[address] == password

    async def mailbox(self, address: str, name: str = "INBOX", *, create: bool = False) -> MailboxData:
        """One of the user's mailboxes; a missing one is created when asked, else KeyError."""
        if not self.has_user(address):
            raise KeyError(f"no such user {address!r}")
        mailboxes, _ = self.config.set_cache[address]
        try:
            return await mailboxes.get_mailbox(name)
        except KeyError:
            if not create:
                raise KeyError(f"{address} has no mailbox {name!r}") from None
        await mailboxes.add_mailbox(name)
        return await mailboxes.get_mailbox(name)

    async def mailbox_names(self, address: str) -> list[str]:
        mailboxes, _ = self.config.set_cache[address]
        return sorted(entry.name for entry in (await mailboxes.list_mailboxes()).list())

    async def deliver(self, address: str, raw: bytes, mailbox: str = "INBOX",
                      flags: Iterable[str] = ()) -> int:
        """Append a raw MIME message to a mailbox (created if missing) and answer its UID."""
        box = await self.mailbox(address, mailbox, create=True)
        message = await box.append(
            AppendMessage(raw, datetime.now(timezone.utc), frozenset(Flag(f.encode()) for f in flags)),
            recent=True)
        async with self._changed:
            self._delivered[address] += 1
            self._changed.notify_all()
        return message.uid

    async def messages(self, address: str, mailbox: str = "INBOX") -> list[StoredMessage]:
        """What a mailbox holds now, oldest first (a view for test assertions, not an IMAP session)."""
        box = await self.mailbox(address, mailbox)
        return [StoredMessage(m.uid, frozenset(f.value.decode() for f in m.permanent_flags),
                              bytes(m._content))  # noqa: SLF001 - the dict backend keeps no other copy
                async for m in box.messages()]

    def delivered(self, address: str) -> int:
        """How many messages SMTP and `deliver` have put into the user's mailboxes so far."""
        return self._delivered[address]

    async def wait_for_delivery(self, address: str, count: int, timeout: float = 10.0) -> None:
        """Until `count` messages in all have been delivered to the user (TimeoutError after `timeout`)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self._delivered[address] >= count)
