"""The Pub/Sub API client (grpcio asyncio): auth metadata, topics and schemas (fetched by id with
GetSchema and cached: a schema id names one schema for good), platform event publishing, and the
mapping of gRPC failures onto the taxonomy.

Every call carries `accesstoken`, `instanceurl` and `tenantid` (the org id from the login). A gRPC
error carries Salesforce's own code in the `error-code` trailer; UNAUTHENTICATED means the session
ended (log in again), `...replayid.corrupted` that a replay id is no longer retained.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import fastavro
import grpc

from adapters.salesforce.auth import OrgSession, TokenSource
from adapters.salesforce.cdc import encode_event, has_bytes
from adapters.salesforce.config import SalesforceEndpointConfig
from adapters.salesforce.proto import pubsub_api_pb2 as pb
from adapters.salesforce.proto import pubsub_api_pb2_grpc as pb_grpc
from engine.errors import (BusinessError, HubError, TargetRejected, TargetServerError, TargetTimeout,
                           TargetUnavailable, Throttled)

REPLAY_CORRUPTED = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
MAX_MESSAGE = 16 * 1024 * 1024   # a FetchResponse of 100 events of up to 1 MB each is allowed to be large


def error_code(exc: grpc.aio.AioRpcError) -> str:
    """Salesforce's error code from the trailers ("" when the error did not come from the service)."""
    for key, value in exc.trailing_metadata() or ():
        if key == "error-code":
            return str(value)
    return ""


def grpc_error(endpoint: str, what: str, exc: grpc.aio.AioRpcError) -> HubError:
    code, detail = exc.code(), f"{endpoint}: {what}: {exc.code().name}: {exc.details()} {error_code(exc)}".strip()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED):
        return TargetUnavailable(detail)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TargetTimeout(detail)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Throttled(detail)
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return TargetServerError(detail)
    return TargetRejected(detail)


class PubSubClient:
    def __init__(self, endpoint: str, config: SalesforceEndpointConfig, tokens: TokenSource, http: Any) -> None:
        self.endpoint = endpoint
        self.config = config
        self.tokens = tokens
        self.http = http                     # an aiohttp session for logins
        self.channel: grpc.aio.Channel | None = None
        self.stub: pb_grpc.PubSubStub | None = None
        self._schemas: dict[str, tuple[dict[str, Any], Any]] = {}
        self.with_bytes: dict[str, bool] = {}   # schema id -> its records can hold bytes
        self._topics: dict[str, pb.TopicInfo] = {}
        self.schema_fetches = 0

    def open(self) -> None:
        options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.keepalive_time_ms", 60_000)]
        if self.config.pubsub_tls:
            self.channel = grpc.aio.secure_channel(self.config.pubsub, grpc.ssl_channel_credentials(), options)
        else:
            self.channel = grpc.aio.insecure_channel(self.config.pubsub, options)
        self.stub = pb_grpc.PubSubStub(self.channel)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None

    @staticmethod
    def metadata(session: OrgSession) -> tuple[tuple[str, str], ...]:
        return (("accesstoken", session.access_token), ("instanceurl", session.instance_url),
                ("tenantid", session.org_id), ("x-client-trace-id", str(uuid.uuid4())))

    async def session(self, timeout: float) -> OrgSession:
        return await self.tokens.session(self.http, timeout)

    async def unary(self, what: str, method: str, request: Any, timeout: float) -> Any:
        """A unary call with the session; one new login when Salesforce says the session ended."""
        assert self.stub is not None, "open() the client first"
        deadline = time.monotonic() + timeout
        for attempt in (1, 2):
            session = await self.session(max(0.1, deadline - time.monotonic()))
            try:
                return await getattr(self.stub, method)(request, metadata=self.metadata(session),
                                                        timeout=max(0.1, deadline - time.monotonic()))
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED and attempt == 1:
                    self.tokens.invalidate(session)
                    continue
                raise grpc_error(self.endpoint, what, exc) from None
        raise AssertionError("unreachable")

    async def topic(self, name: str, timeout: float) -> pb.TopicInfo:
        if name not in self._topics:
            self._topics[name] = await self.unary(f"GetTopic {name}", "GetTopic", pb.TopicRequest(topic_name=name),
                                                  timeout)
        return self._topics[name]

    async def schema(self, schema_id: str, timeout: float) -> tuple[dict[str, Any], Any]:
        """(schema, parsed schema) for an id; fetched once (a schema id never changes meaning)."""
        if schema_id not in self._schemas:
            info = await self.unary(f"GetSchema {schema_id}", "GetSchema", pb.SchemaRequest(schema_id=schema_id),
                                    timeout)
            schema = json.loads(info.schema_json)
            self._schemas[schema_id] = (schema, fastavro.parse_schema(schema))
            self.with_bytes[schema_id] = has_bytes(schema)
            self.schema_fetches += 1
        return self._schemas[schema_id]

    async def publish(self, topic_name: str, fields: dict[str, Any], event_id: str, timeout: float) -> dict[str, Any]:
        """Publish one platform event with the topic's current schema; its replay id, or the error."""
        deadline = time.monotonic() + timeout
        topic = await self.topic(topic_name, timeout)
        if not topic.can_publish:
            raise TargetRejected(f"{self.endpoint}: {topic_name} does not allow publishing")
        schema, parsed = await self.schema(topic.schema_id, max(0.1, deadline - time.monotonic()))
        session = await self.session(max(0.1, deadline - time.monotonic()))
        values = dict(fields)
        values.setdefault("CreatedDate", int(time.time() * 1000))   # required by every event schema
        values.setdefault("CreatedById", session.user_id)
        known = {f["name"] for f in schema["fields"]}
        unknown = sorted(set(values) - known)
        if unknown:
            raise BusinessError(f"{topic_name} has no field {', '.join(unknown)}")
        try:
            payload = encode_event(values, parsed)
        except (ValueError, TypeError) as exc:
            raise BusinessError(f"{topic_name}: the event does not fit its schema: {exc}") from None
        request = pb.PublishRequest(topic_name=topic_name, events=[
            pb.ProducerEvent(id=event_id, schema_id=topic.schema_id, payload=payload)])
        answer = await self.unary(f"Publish {topic_name}", "Publish", request, max(0.1, deadline - time.monotonic()))
        result = answer.results[0] if answer.results else None
        if result is None:
            raise TargetServerError(f"{self.endpoint}: Publish {topic_name} answered no result")
        if result.HasField("error"):
            code = pb.ErrorCode.Name(result.error.code)
            raise BusinessError(f"{topic_name}: event {event_id} not published: {code}: "
                                f"{result.error.msg}")
        return {"topic": topic_name, "event_id": event_id, "replay_id": result.replay_id.hex()}
