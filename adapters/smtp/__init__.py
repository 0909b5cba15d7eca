"""SMTP endpoints as flow call targets (aiosmtplib): a `send` call mails a payload built by a transform.

Importing this package registers the `smtp` adapter; the names below are what callers and tests use.
"""

from adapters.smtp.adapter import SmtpAdapter
from adapters.smtp.compose import build_message, parse_payload, wire_bytes
from adapters.smtp.config import MailAttachment, MailPayload, SmtpEndpointConfig, is_loopback
from adapters.smtp.replies import reply_error, send_error

__all__ = ["MailAttachment", "MailPayload", "SmtpAdapter", "SmtpEndpointConfig", "build_message", "is_loopback",
           "parse_payload", "reply_error", "send_error", "wire_bytes"]
