"""nats-py's client with pre-encoded headers on the hot path.

nats-py checks every header key with a regex and re-sanitises every value on each publish, which
cost more than a third of a pass-through flow's CPU (bench/hot_path.py, cProfile). The hub's output
headers are built by engine/messages.py from constant names and single-line values (inbound header
values arrive one line each), so the flow encodes the block once, as bytes, and this client sends
bytes as they are. Dict headers take nats-py's own path, unchanged.
"""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client
from nats.protocol.command import hpub_cmd


class HubClient(Client):
    async def _send_publish(self, subject: str, reply: str, payload: bytes, payload_size: int,
                            headers: Any) -> None:
        if type(headers) is not bytes:
            return await super()._send_publish(subject, reply, payload, payload_size, headers)
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += payload_size
        await self._send_command(hpub_cmd(subject, reply, headers, payload))
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()


async def connect(**options: Any) -> HubClient:
    """Like `nats.connect`, returning a HubClient."""
    nc = HubClient()
    await nc.connect(**options)
    return nc


def encode_headers(headers: dict[str, str]) -> bytes:
    """The NATS/1.0 header block of single-line values (see the module docstring for why it is safe)."""
    return ("NATS/1.0\r\n" + "".join([f"{k}: {v}\r\n" for k, v in headers.items()]) + "\r\n").encode()


def shared_header_lines(headers: dict[str, str]) -> str:
    """The start of a header block that many messages of a batch share; `finish_headers` adds each
    message's own lines, so only those are formatted per message."""
    return encode_headers(headers).decode()[:-2]


def finish_headers(shared: str, *lines: tuple[str, str]) -> bytes:
    return (shared + "".join([f"{k}: {v}\r\n" for k, v in lines]) + "\r\n").encode()
