"""IMAP mailboxes as a flow source (aioimaplib): the `imap` endpoint says where and how to log in, and
ImapIngress (named by engine.sources.ImapSource) lands each mail in JetStream before moving it.

Importing this package registers the `imap` adapter; the names below are what callers and tests use.
"""

from adapters.imap.config import ImapAdapter, ImapEndpointConfig
from adapters.imap.ingress import ImapIngress, header_value, message_id_of
from adapters.imap.session import ConnectionLost, ImapRefused, ImapSession, mailbox_name

__all__ = ["ConnectionLost", "ImapAdapter", "ImapEndpointConfig", "ImapIngress", "ImapRefused", "ImapSession",
           "header_value", "mailbox_name", "message_id_of"]
