"""nats-py's client with pre-encoded headers on the hot path, and a JetStream context whose
`publish_async` hears a refusal.

nats-py checks every header key with a regex and re-sanitises every value on each publish, which
cost more than a third of a pass-through flow's CPU (bench/hot_path.py, cProfile). The hub's output
headers are built by engine/messages.py from constant names and single-line values (inbound header
values arrive one line each), so the flow encodes the block once, as bytes, and this client sends
bytes as they are. Dict headers take nats-py's own path, unchanged.

nats-py 2.16's `publish_async` never completes its future when JetStream answers with an error (a
stream at its limits with `discard: new`, a message over the stream's max_msg_size): its reply
handler raises the error inside the subscription callback instead of setting it on the future. The
publisher then waited out its timeout and took the refusal for an outage, and a flow retried that
output for ever. `HubJetStream` sets the error on the future; engine/errors.py names it.
"""

from __future__ import annotations

import asyncio
import random
from functools import partial
from typing import Any, Callable

import orjson
from nats.aio.client import Client, Server
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NoStreamResponseError, TooManyStalledMsgsError
from nats.protocol.command import hpub_cmd

_NO_RESPONDERS = "503"


class HubJetStream(JetStreamContext):
    """nats-py's JetStream context with `publish_async` rewritten: an error answer fails its future
    (module docstring), and the per-publish cost is the publish itself. nats-py's spent more than the
    send on bookkeeping: `wait_for` around a semaphore, `secrets.token_hex` (a getrandom syscall) for
    the reply token, and a Msg, a queue hop and a task wake per ack (py-spy, bench/meter_pull.py: about
    a third of a pull's CPU). Here the token is a counter, the room for pending publishes a count, and
    on a HubClient the acks are read as they are parsed (`subscribe_direct`): bench/publish_async.py."""

    def __init__(self, conn: Any, **opts: Any) -> None:
        super().__init__(conn, **opts)
        self._room = opts.get("publish_async_max_pending", 4000)
        self._room_freed = asyncio.Event()
        self._token = 0
        self._reply_prefix = ""
        self._replies_ready: asyncio.Future[None] | None = None

    async def publish_async(self, subject: str, payload: bytes = b"", wait_stall: float | None = None,
                            stream: str | None = None, headers: Any = None,
                            msg_ttl: float | None = None) -> "asyncio.Future[api.PubAck]":
        if stream is not None or msg_ttl is not None:  # header-adding variants the hub does not use
            return await super().publish_async(subject, payload, wait_stall, stream, headers, msg_ttl)
        if not self._reply_prefix:
            await self._init_async_reply()
        while self._room <= 0:
            self._room_freed.clear()
            try:
                await asyncio.wait_for(self._room_freed.wait(), wait_stall)
            except TimeoutError:
                raise TooManyStalledMsgsError from None
        self._room -= 1
        self._token += 1
        token = str(self._token)
        future: asyncio.Future[api.PubAck] = asyncio.get_running_loop().create_future()
        future.add_done_callback(partial(self._settled, token))
        self._publish_async_futures[token] = future
        self._publish_async_completed_event.clear()
        try:
            await self._nc.publish(subject, payload, reply=self._reply_prefix + token, headers=headers)
        except BaseException:
            future.cancel()  # frees its room; the caller sees the publish's own error
            raise
        return future

    def _settled(self, token: str, _: Any) -> None:
        self._publish_async_futures.pop(token, None)
        if not self._publish_async_futures:
            self._publish_async_completed_event.set()
        self._room += 1
        self._room_freed.set()

    async def _init_async_reply(self) -> None:
        if self._replies_ready is None:
            ready = self._replies_ready = asyncio.get_running_loop().create_future()
            try:
                prefix = self._nc._inbox_prefix[:] + b"." + self._nc._nuid.next() + b"."
                self._publish_async_futures = {}
                if isinstance(self._nc, HubClient):
                    await self._nc.subscribe_direct(prefix.decode() + "*", self._on_ack)
                else:
                    await self._nc.subscribe(prefix.decode() + "*", cb=self._handle_async_reply)
            except BaseException as exc:
                self._replies_ready = None
                ready.set_exception(exc)
                ready.exception()  # retrieved: raised below
                raise
            self._async_reply_prefix = prefix
            self._reply_prefix = prefix.decode()
            ready.set_result(None)
        await self._replies_ready

    async def _handle_async_reply(self, msg: Msg) -> None:
        self._settle(msg.subject, msg.data, bool(msg.headers and msg.headers.get(api.Header.STATUS) == _NO_RESPONDERS))

    def _on_ack(self, subject: bytes, data: bytes, headers: bytes | None) -> None:
        self._settle(subject.decode(), data, bool(headers and headers.startswith(b"NATS/1.0 503")))

    def _settle(self, subject: str, data: bytes, no_responders: bool) -> None:
        future = self._publish_async_futures.get(subject[len(self._reply_prefix):])
        if future is None or future.done():
            return
        if no_responders:
            future.set_exception(NoStreamResponseError())
            return
        try:
            resp = orjson.loads(data)
            if (err := resp.get("error")) is not None:
                APIError.from_error(err)  # raises the class of its code
            ack = api.PubAck(stream=resp["stream"], seq=resp["seq"], domain=resp.get("domain"),
                             duplicate=resp.get("duplicate"))
        except Exception as exc:  # noqa: BLE001 - the refusal, or an unreadable ack: the publisher's to judge
            future.set_exception(exc)
        else:
            future.set_result(ack)


class HubClient(Client):
    def __init__(self) -> None:
        super().__init__()
        self._direct: dict[int, Callable[[bytes, bytes, bytes | None], None]] = {}

    async def subscribe_direct(self, subject: str, handler: Callable[[bytes, bytes, bytes | None], None]) -> Any:
        """A subscription whose messages go to `handler(subject, data, raw headers)` as they are parsed,
        without a Msg, a queue and a task per message (engine/kv_pipe.py's acks). `handler` must not block."""
        sub = await self.subscribe(subject)
        self._direct[sub._id] = handler
        return sub

    def jetstream(self, **opts: Any) -> HubJetStream:
        return HubJetStream(self, **opts)

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        handler = self._direct.get(sid)
        if handler is None:
            return await super()._process_msg(sid, subject, reply, data, headers)
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        handler(subject, data, headers)

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
    """Like `nats.connect`, returning a HubClient that reconnects to another node first."""
    nc = HubClient()
    options.setdefault("reconnect_to_server_handler", other_server_first(nc))
    await nc.connect(**options)
    return nc


def other_server_first(nc: Client) -> Any:
    """nats-py shuffles its pool on a reconnect, so one time in N it first tries the server it just
    lost: a frozen node accepts the TCP connection and then says nothing until connect_timeout (5 s
    lost, measured on the local cluster). This picks among the servers that failed least, counting
    the one just left (or just tried) as failed once more, at random among equals so runners spread;
    once every server has failed an attempt, it waits `reconnect_time_wait` between attempts."""

    def choose(servers: list[Server], info: dict[str, Any]) -> tuple[Server | None, float]:
        last = nc._current_server.uri.netloc if nc._current_server is not None else None
        scored = [(s.reconnects + (s.uri.netloc == last), s) for s in servers]
        least = min(score for score, _ in scored)
        pick = random.choice([s for score, s in scored if score == least])
        every_one_failed = min(s.reconnects for s in servers) > 0
        return pick, (nc.options["reconnect_time_wait"] if every_one_failed else 0.0)

    return choose


def encode_headers(headers: dict[str, str]) -> bytes:
    """The NATS/1.0 header block of single-line values (see the module docstring for why it is safe)."""
    return ("NATS/1.0\r\n" + "".join([f"{k}: {v}\r\n" for k, v in headers.items()]) + "\r\n").encode()


def shared_header_lines(headers: dict[str, str]) -> str:
    """The start of a header block that many messages of a batch share; `finish_headers` adds each
    message's own lines, so only those are formatted per message."""
    return encode_headers(headers).decode()[:-2]


def finish_headers(shared: str, *lines: tuple[str, str]) -> bytes:
    return (shared + "".join([f"{k}: {v}\r\n" for k, v in lines]) + "\r\n").encode()
