"""SFTP drop directories as a flow source (paramiko): the `sftp` endpoint says where, which pinned host key
and which login; SftpIngress (named by engine.sources.SftpSource) streams each new file into the Object
Store, lands its claim check in JetStream, then marks it done in KV.

Importing this package registers the `sftp` adapter; the names below are what callers and tests use.
"""

from adapters.sftp.config import Credentials, SftpAdapter, SftpEndpointConfig
from adapters.sftp.ingress import SftpIngress
from adapters.sftp.session import HostKeyRefused, LoginRefused, RemoteFile, SftpSession
from adapters.sftp.transfer import HashingReader, Stored, put_verified

__all__ = ["Credentials", "HashingReader", "HostKeyRefused", "LoginRefused", "RemoteFile", "SftpAdapter",
           "SftpEndpointConfig", "SftpIngress", "SftpSession", "Stored", "put_verified"]
