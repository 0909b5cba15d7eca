"""The `sftp` endpoint: which server, which pinned host key, which login, for the `sftp:` flow source.

Registered as an adapter so validation, the docs and the JSON Schema know its keys like any endpoint's;
but a drop directory is read, never called, so `call` refuses and it has no circuit breaker by default
(the ingress reconnects with its own backoff). The host key is pinned: `known_hosts` is required and a
key it does not list is refused, never added.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from engine.adapter import EndpointConfig, SourceOnlyAdapter
from engine.breaker import BreakerSettings
from engine.durations import Duration
from engine.errors import ConfigError
from engine.registry import register
from engine.secrets import SecretRef, resolve_setting


class SftpEndpointConfig(EndpointConfig):
    """An SFTP server (SSH) the hub reads files from, its host key pinned in a known_hosts file."""

    host: str = Field(description="Server host name or address.", examples=["sftp.pdfgen.example", "127.0.0.1"])
    port: int = Field(22, ge=1, le=65535, description="SSH port.")
    username: str = Field(description="Login user.", examples=["plu-hub"])
    password: str | SecretRef | None = Field(
        None, description="Login password; use a secret reference (a literal is for throw-away sandboxes only).",
        examples=[{"env": "PDF_SFTP_PASSWORD"}])
    private_key: str | None = Field(None, description="Path of an OpenSSH private key file for public-key login "
                                    "(tried before the password when both are set).",
                                    examples=["/run/secrets/pdf_sftp_ed25519"])
    passphrase: SecretRef | None = Field(None, description="Passphrase of an encrypted private_key.",
                                         examples=[{"env": "PDF_SFTP_KEY_PASSPHRASE"}])
    known_hosts: str = Field(
        description="known_hosts file pinning the server's host key (`[host]:port keytype AAAA...` for a port "
        "other than 22). An unknown or changed key is refused with its fingerprint, never accepted; the file is "
        "read again at every connection attempt, so a fixed file takes effect without a restart.",
        examples=[".hub/pdf_known_hosts", "/etc/plu/ssh/known_hosts"])
    timeout: Duration = Field(30.0, description="Deadline of connect, login and of any SFTP operation that makes "
                              "no progress.", examples=["30s"])
    circuit_breaker: BreakerSettings | None = Field(
        None, description="Unused: an sftp endpoint is a source, not a call target.")

    @model_validator(mode="after")
    def _some_login(self) -> "SftpEndpointConfig":
        if self.password is None and self.private_key is None:
            raise ValueError("an sftp endpoint needs a password or a private_key to log in")
        if self.passphrase is not None and self.private_key is None:
            raise ValueError("passphrase is for private_key; give the key file too")
        return self


class Credentials:
    """The login secrets of an endpoint, resolved once when the ingress starts (ConfigError names what is wrong)."""

    def __init__(self, endpoint: str, config: SftpEndpointConfig) -> None:
        issues: list[str] = []
        self.password: str | None = None
        self.passphrase: str | None = None
        self.key_file = config.private_key
        self.password = resolve_setting(endpoint, "password", config.password, issues)
        self.passphrase = resolve_setting(endpoint, "passphrase", config.passphrase, issues)
        if self.key_file is not None and not Path(self.key_file).is_file():
            issues.append(f"endpoint {endpoint!r}: private_key {self.key_file} does not exist")
        if not Path(config.known_hosts).is_file():
            issues.append(f"endpoint {endpoint!r}: known_hosts file {config.known_hosts} does not exist: pin the "
                          f"server's host key there (e.g. `ssh-keyscan -p {config.port} {config.host}`, checked "
                          "against the fingerprint the server's owner gives you)")
        if issues:
            raise ConfigError(issues)

    def paramiko_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of paramiko's SSHClient.connect for this login (no agent, no ~/.ssh keys)."""
        kwargs: dict[str, Any] = {"look_for_keys": False, "allow_agent": False}
        if self.key_file is not None:
            kwargs["key_filename"] = self.key_file
            if self.passphrase is not None:
                kwargs["passphrase"] = self.passphrase
        if self.password is not None:
            kwargs["password"] = self.password
        return kwargs


@register
class SftpAdapter(SourceOnlyAdapter):
    """A drop directory read by an `sftp:` flow source (adapters.sftp.ingress.SftpIngress); it cannot be called."""

    name = "sftp"
    Config = SftpEndpointConfig
    operations_doc = "None: an sftp endpoint is read by an `sftp:` flow source and cannot be called."

    def check_operation(self, operation: str | None) -> str | None:
        return (f"sftp endpoints are a source only: read this one with `source: {{sftp: {{endpoint: "
                f"{self.endpoint}}}}}`")
