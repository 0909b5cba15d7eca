"""A remote file streamed into the JetStream Object Store (claim check), checked on the way in and after.

nats-py's `ObjectStore.put` takes a file-like object: it calls `readinto` with one 128 KiB buffer, in
the default executor (so the blocking paramiko read is off the event loop), publishes that chunk and
waits for its ack before the next one. HashingReader is that object: it fills each buffer from the
SFTP file, computes SHA-256 as the bytes pass and remembers the first and last chunk's digests. At no
point is more of the file in memory than the one buffer plus the bounded read-ahead (session.ReadAhead).

After the put: the size must be the listed size, the digest the Object Store recorded must be ours,
and the server is asked for the object's chunk count and its first and last chunks, which must be the
bytes we sent (a re-read of the stored range, not of our own memory).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

from nats.js.api import ObjectMeta, ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError

from engine.errors import PublishFailed

READ_STEP = 1024 * 1024  # ask paramiko for at most this much per read call


class TransferMismatch(PublishFailed):
    """What the Object Store holds is not what was read (size, digest or a re-read chunk differ): the
    file is not marked done and is fetched again at the next poll."""


class SourceReadFailed(Exception):
    """Reading the remote file failed mid-transfer (the connection dropped): `cause` is paramiko's error."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


class HashingReader:
    """A read-only file-like over a remote file for `ObjectStore.put`: SHA-256 and byte count as it goes."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.count = 0
        self.chunks = 0
        self.first_chunk: str | None = None  # hex SHA-256 of the first stored chunk
        self._last = b""
        self._head = b""
        self.error: BaseException | None = None

    def head(self, n: int) -> bytes:
        """The first `n` bytes (read once, then handed out again by readinto)."""
        while len(self._head) < n:
            data = self._read(n - len(self._head))
            if not data:
                break
            self._head += data
        return self._head[:n]

    def _read(self, n: int) -> bytes:
        try:
            return self.fh.read(n)
        except Exception as exc:  # keep paramiko's error for the caller: the put only re-raises it
            self.error = exc
            raise SourceReadFailed(exc) from exc

    def readinto(self, buf: bytearray | memoryview) -> int:
        """Fill the whole buffer (so each call is one Object Store chunk) unless the file ends first."""
        view = memoryview(buf)
        size, filled = len(view), 0
        if self._head and self.count == 0:
            filled = len(self._head)
            view[:filled] = self._head
        while filled < size:
            data = self._read(min(size - filled, READ_STEP))
            if not data:
                break
            view[filled:filled + len(data)] = data
            filled += len(data)
        if filled:
            piece = view[:filled]
            self.sha.update(piece)
            if self.chunks == 0:
                self.first_chunk = hashlib.sha256(piece).hexdigest()
            self._last = bytes(piece)  # hashed when asked, once: not a third SHA-256 pass over every chunk
            self.chunks += 1
            self.count += filled
        return filled

    @property
    def last_chunk(self) -> str | None:
        """Hex SHA-256 of the last chunk read (None before any)."""
        return hashlib.sha256(self._last).hexdigest() if self.chunks else None

    def readable(self) -> bool:
        return True


@dataclass(frozen=True)
class Stored:
    """An object as verified in the Object Store."""

    bucket: str
    name: str
    size: int
    sha256: str  # hex
    nuid: str


async def object_store(js: Any, name: str) -> Any:
    """Bind the bucket, creating it (file storage, replicas of the hub's own ingress stream) on first use."""
    try:
        return await js.object_store(name)
    except BucketNotFoundError:
        replicas = 1
        try:
            replicas = (await js.stream_info("HUB_INGRESS")).config.num_replicas or 1
        except NotFoundError:
            pass
        return await js.create_object_store(name, ObjectStoreConfig(
            description="Files fetched by an sftp source (claim checks)", storage=StorageType.FILE,
            replicas=replicas))


def digest_hex(info_digest: str | None) -> str | None:
    """Hex SHA-256 of an ObjectInfo digest `SHA-256=<base64url>`; None when absent or malformed."""
    if not info_digest or not info_digest.upper().startswith("SHA-256="):
        return None
    try:
        return base64.urlsafe_b64decode(info_digest[8:]).hex()
    except (ValueError, TypeError):
        return None


async def put_verified(js: Any, store: Any, bucket: str, name: str, reader: HashingReader, expected_size: int,
                       description: str | None = None) -> Stored:
    """Stream `reader` into `store` under `name` and check it; SourceReadFailed when the SFTP side broke,
    TransferMismatch when the stored object is not what was read, PublishFailed when JetStream failed."""
    try:
        info = await store.put(name, reader, meta=ObjectMeta(name=name, description=description))
    except SourceReadFailed:
        raise
    except Exception as exc:
        if reader.error is not None:
            raise SourceReadFailed(reader.error) from exc
        raise PublishFailed(f"object {bucket}/{name}: not stored: {type(exc).__name__}: {exc}") from exc
    sha = reader.sha.hexdigest()
    where = f"object {bucket}/{name}"
    if reader.count != expected_size or info.size != reader.count:
        raise TransferMismatch(f"{where}: listed {expected_size} bytes, read {reader.count}, stored {info.size}")
    if digest_hex(info.digest) != sha:
        raise TransferMismatch(f"{where}: Object Store digest {info.digest} is not the SHA-256 read ({sha})")
    await _reread(js, bucket, info, reader, where)
    return Stored(bucket, name, info.size, sha, info.nuid)


async def _reread(js: Any, bucket: str, info: Any, reader: HashingReader, where: str) -> None:
    """Ask the server for the chunk count and the first and last chunks of the object just stored."""
    if reader.chunks == 0:
        return
    stream, subject = f"OBJ_{bucket}", f"$O.{bucket}.C.{info.nuid}"
    try:
        state = (await js.stream_info(stream, subjects_filter=subject)).state
        count = (state.subjects or {}).get(subject, 0)
        first = await js.get_msg(stream, seq=1, subject=subject, next=True)
        last = await js.get_last_msg(stream, subject)
    except Exception as exc:
        raise PublishFailed(f"{where}: stored chunks not readable back: {type(exc).__name__}: {exc}") from exc
    got = (count, hashlib.sha256(first.data or b"").hexdigest(), hashlib.sha256(last.data or b"").hexdigest())
    if got != (reader.chunks, reader.first_chunk, reader.last_chunk):
        raise TransferMismatch(f"{where}: the server holds {count} chunk(s) and different bytes than were sent "
                               f"({reader.chunks} chunk(s))")
