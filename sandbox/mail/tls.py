"""A throw-away certificate authority for the mail sandbox, made when the sandbox starts.

Real mail servers speak TLS, so the hub's SMTP (STARTTLS) and IMAP (implicit TLS) clients are tested with
certificate checks on, not with verification switched off: the servers present a certificate for
127.0.0.1 / localhost signed by this CA, and clients trust the CA through `client_context()` or `ca_file`.
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

import trustme


class SandboxTls:
    """One CA and one server certificate for 127.0.0.1, localhost and the sandbox's host name."""

    def __init__(self, hostname: str) -> None:
        self._ca = trustme.CA(organization_name="PLU mail sandbox")
        self._cert = self._ca.issue_cert("127.0.0.1", "localhost", hostname)
        self._dir = tempfile.TemporaryDirectory(prefix="plu-mail-tls-")
        self.ca_file = Path(self._dir.name) / "sandbox-ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_file))

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate (PEM), for clients configured with certificate text instead of a file."""
        return self._ca.cert_pem.bytes()

    def server_context(self) -> ssl.SSLContext:
        """What the servers present: the leaf certificate and its key."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._cert.configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context (hostname checked) that trusts only the sandbox CA; cheap, unlike
        `ssl.create_default_context()`, which loads the system's CA store (~30 ms) every time."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._ca.configure_trust(ctx)
        return ctx

    def close(self) -> None:
        self._dir.cleanup()
