"""Protocol adapters. Importing this package registers every built-in adapter."""

from engine.registry import ADAPTERS, register  # noqa: F401

from adapters import http, imap, mqtt, nats, powersales, sftp, smtp, soap  # noqa: F401,E402  (registration is the side effect)
from adapters import salesforce  # noqa: F401,E402  (issue 16)
