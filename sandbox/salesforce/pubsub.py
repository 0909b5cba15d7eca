"""The emulator's Pub/Sub API: the `eventbus.v1.PubSub` gRPC service from our proto, over grpc.aio.

Behaviours kept from Salesforce's documentation:
- every call needs `accesstoken`, `instanceurl` and `tenantid` metadata naming a live session of
  this org, else UNAUTHENTICATED with `error-code: sfdc.platform.eventbus.grpc.service.auth.error`;
- Subscribe is pull-based: events go out only against `num_requested`, and at most 100 may be
  outstanding (more is counted as 100); the first FetchRequest names the topic and the start
  (LATEST, EARLIEST, or CUSTOM after a replay id); a CUSTOM id the bus no longer retains is
  INVALID_ARGUMENT with `...subscription.fetch.replayid.corrupted`; a later request naming another
  topic is INVALID_ARGUMENT;
- with nothing to send, an empty FetchResponse carrying `latest_replay_id` goes out as a
  keep-alive (Salesforce: within 270 s; `keepalive` here so tests need not wait that long); a
  stream with nothing requested is closed after `idle_close` (60 s) unless the client asks for more;
- a session that ends during a stream ends the stream (UNAUTHENTICATED), as the real service does;
- Publish checks each event against the topic's schema and answers one PublishResult per event.
Every error carries an `rpc-id` trailer and "rpcId: ..." in its message.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import uuid
from typing import Any, AsyncIterator

import fastavro
import grpc

from adapters.salesforce.proto import pubsub_api_pb2 as pb
from adapters.salesforce.proto import pubsub_api_pb2_grpc as pb_grpc
from sandbox.salesforce.eventbus import decode_replay, encode_replay

AUTH_ERROR = "sfdc.platform.eventbus.grpc.service.auth.error"
REPLAY_CORRUPTED = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
TOPIC_NOT_FOUND = "sfdc.platform.eventbus.grpc.topic.not.found"
SCHEMA_NOT_FOUND = "sfdc.platform.eventbus.grpc.schema.not.found"
BAD_REQUEST = "sfdc.platform.eventbus.grpc.fetch.request.invalid"
MAX_PENDING = 100
MAX_EVENT = 1024 * 1024


async def _fail(context: grpc.aio.ServicerContext, status: grpc.StatusCode, code: str, message: str) -> None:
    rpc_id = str(uuid.uuid4())
    context.set_trailing_metadata((("error-code", code), ("rpc-id", rpc_id)))
    await context.abort(status, f"{message} rpcId: {rpc_id}")


class PubSubService(pb_grpc.PubSubServicer):
    def __init__(self, org: Any, keepalive: float = 270.0, idle_close: float = 60.0) -> None:
        self.org = org
        self.keepalive = keepalive
        self.idle_close = idle_close
        self.subscribes = 0
        self.delivered = 0

    async def _session(self, context: grpc.aio.ServicerContext) -> Any:
        meta = {k: v for k, v in context.invocation_metadata() or ()}
        session = self.org.sessions.check(meta.get("accesstoken"))
        if session is None or meta.get("instanceurl", "").rstrip("/") != self.org.url.rstrip("/") or \
                meta.get("tenantid") != self.org.org_id:
            await _fail(context, grpc.StatusCode.UNAUTHENTICATED, AUTH_ERROR,
                        "An authentication exception occurred. Provide valid authentication via metadata headers.")
        return session

    async def _topic(self, context: grpc.aio.ServicerContext, name: str) -> Any:
        topic = self.org.bus.topics.get(name)
        if topic is None:
            await _fail(context, grpc.StatusCode.NOT_FOUND, TOPIC_NOT_FOUND, f"Topic {name} not found.")
        return topic

    async def GetTopic(self, request: pb.TopicRequest, context: grpc.aio.ServicerContext) -> pb.TopicInfo:
        await self._session(context)
        topic = await self._topic(context, request.topic_name)
        return pb.TopicInfo(topic_name=topic.name, tenant_guid=self.org.org_id, can_publish=topic.can_publish,
                            can_subscribe=True, schema_id=topic.schema_id, rpc_id=str(uuid.uuid4()))

    async def GetSchema(self, request: pb.SchemaRequest, context: grpc.aio.ServicerContext) -> pb.SchemaInfo:
        await self._session(context)
        text = self.org.schemas.get(request.schema_id)
        if text is None:
            await _fail(context, grpc.StatusCode.NOT_FOUND, SCHEMA_NOT_FOUND, f"Schema {request.schema_id} not found.")
        return pb.SchemaInfo(schema_json=text, schema_id=request.schema_id, rpc_id=str(uuid.uuid4()))

    async def Publish(self, request: pb.PublishRequest, context: grpc.aio.ServicerContext) -> pb.PublishResponse:
        await self._session(context)
        topic = await self._topic(context, request.topic_name)
        if not topic.can_publish:
            await _fail(context, grpc.StatusCode.PERMISSION_DENIED, "sfdc.platform.eventbus.grpc.publish.denied",
                        f"Publishing to {topic.name} is not allowed.")
        parsed = fastavro.parse_schema(topic.schema)
        results = []
        for event in request.events:
            problem = None
            if event.schema_id != topic.schema_id:
                problem = f"schema {event.schema_id} is not the topic's current schema"
            elif len(event.payload) > MAX_EVENT:
                problem = "event exceeds the 1 MB event size"
            else:
                try:
                    fastavro.schemaless_reader(io.BytesIO(event.payload), parsed)
                except Exception as exc:  # a payload that does not decode with the schema
                    problem = f"payload does not match the schema: {type(exc).__name__}"
            if problem:
                results.append(pb.PublishResult(error=pb.Error(code=pb.PUBLISH, msg=problem),
                                                correlation_key=event.id))
                continue
            replay = self.org.bus.publish(topic, event.payload, event.id or str(uuid.uuid4()), event.schema_id)
            results.append(pb.PublishResult(replay_id=encode_replay(replay), correlation_key=event.id))
        self.org.published += sum(1 for r in results if not r.HasField("error"))
        return pb.PublishResponse(results=results, schema_id=topic.schema_id, rpc_id=str(uuid.uuid4()))

    async def PublishStream(self, request_iterator: AsyncIterator[pb.PublishRequest],
                            context: grpc.aio.ServicerContext) -> AsyncIterator[pb.PublishResponse]:
        async for request in request_iterator:
            yield await self.Publish(request, context)

    async def ManagedSubscribe(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "managed subscriptions are not emulated")
        yield  # pragma: no cover

    async def Subscribe(self, request_iterator: AsyncIterator[pb.FetchRequest],
                        context: grpc.aio.ServicerContext) -> AsyncIterator[pb.FetchResponse]:
        await self._session(context)
        self.subscribes += 1
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        if not first.topic_name:
            await _fail(context, grpc.StatusCode.INVALID_ARGUMENT, BAD_REQUEST,
                        "The first FetchRequest must name a topic.")
        bus = self.org.bus
        topic = await self._topic(context, first.topic_name)
        if first.replay_preset == pb.CUSTOM:
            replay = decode_replay(first.replay_id)
            if replay is None or not bus.valid_start(topic, replay):
                await _fail(context, grpc.StatusCode.INVALID_ARGUMENT, REPLAY_CORRUPTED,
                            "The Replay ID validation failed.")
            cursor = replay
        elif first.replay_preset == pb.EARLIEST:
            cursor = bus.cursor_earliest(topic)
        else:
            cursor = topic.latest
        state: dict[str, Any] = {"pending": min(MAX_PENDING, max(0, first.num_requested)), "error": None}
        more = asyncio.Event()
        reader = asyncio.create_task(self._read_requests(request_iterator, topic.name, state, more))
        loop = asyncio.get_running_loop()
        try:
            idle_since = loop.time()
            while True:
                more.clear()
                if state["error"]:
                    await _fail(context, grpc.StatusCode.INVALID_ARGUMENT, BAD_REQUEST, state["error"])
                if reader.done() and reader.exception() is not None:
                    return  # the client went away
                if self.org.sessions.check(dict(context.invocation_metadata() or ()).get("accesstoken")) is None:
                    await _fail(context, grpc.StatusCode.UNAUTHENTICATED, AUTH_ERROR, "The session has expired.")
                arrived = topic.arrived
                batch = bus.read(topic, cursor, state["pending"]) if state["pending"] else []
                if batch:
                    cursor = batch[-1].replay
                    state["pending"] -= len(batch)
                    self.delivered += len(batch)
                    idle_since = loop.time()
                    yield pb.FetchResponse(
                        events=[pb.ConsumerEvent(event=pb.ProducerEvent(id=e.event_id, schema_id=e.schema_id,
                                                                        payload=e.payload),
                                                 replay_id=encode_replay(e.replay)) for e in batch],
                        latest_replay_id=encode_replay(cursor), rpc_id=str(uuid.uuid4()),
                        pending_num_requested=state["pending"])
                    continue
                if state["pending"]:
                    timeout = self.keepalive
                else:
                    timeout = self.idle_close - (loop.time() - idle_since)
                    if timeout <= 0:
                        return  # nothing requested for too long: the server ends the stream
                waits = [asyncio.ensure_future(arrived.wait()), asyncio.ensure_future(more.wait())]
                done, pending = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for w in pending:
                    w.cancel()
                if not done and state["pending"]:
                    # keep-alive: no events to send; the latest replay id, never past an undelivered event
                    latest = cursor if bus.read(topic, cursor, 1) else max(cursor, topic.latest)
                    yield pb.FetchResponse(latest_replay_id=encode_replay(latest), rpc_id=str(uuid.uuid4()),
                                           pending_num_requested=state["pending"])
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    @staticmethod
    async def _read_requests(requests: AsyncIterator[pb.FetchRequest], topic: str, state: dict[str, Any],
                             more: asyncio.Event) -> None:
        try:
            async for request in requests:
                if request.topic_name and request.topic_name != topic:
                    state["error"] = (f"The topic {request.topic_name} does not match the subscription's topic "
                                      f"{topic}.")
                else:
                    state["pending"] = min(MAX_PENDING, state["pending"] + max(0, request.num_requested))
                more.set()
        finally:
            more.set()


async def serve(org: Any, host: str = "127.0.0.1", port: int = 0, keepalive: float = 270.0,
                idle_close: float = 60.0) -> tuple[grpc.aio.Server, int, PubSubService]:
    server = grpc.aio.server()
    service = PubSubService(org, keepalive, idle_close)
    pb_grpc.add_PubSubServicer_to_server(service, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound, service
