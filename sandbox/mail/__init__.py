"""Mail servers for tests and the demo: aiosmtpd (SMTP) and pymap (IMAP) over one in-memory store.

`MailSandbox(users={...})` is the entry point (sandbox.py); `StoredMessage` is what `messages()` returns.
"""

from sandbox.mail.sandbox import MailSandbox
from sandbox.mail.store import MailStore, StoredMessage

__all__ = ["MailSandbox", "MailStore", "StoredMessage"]
