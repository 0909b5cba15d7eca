"""The `salesforce:` flow source: a Pub/Sub API subscription whose events are stored in JetStream
before their replay id is checkpointed.

Each FetchResponse's events are decoded (schema by id, cached), stored in one confirmed batch on
`hub.ingress.<flow>` (identity: topic and event id, so a repeat is dropped by JetStream), and only
then is the last replay id written to KV (`hub_salesforce_replay`, one key per flow) and as many
events requested again (`num_requested`: flow control, the batch never grows). A keep-alive's
`latest_replay_id` is checkpointed too, so an idle channel's checkpoint stays young.

Where a subscription starts: after the checkpoint (CUSTOM); with none, `start` (EARLIEST by default);
with a checkpoint older than `retention` (72 h), or one the service refuses
(`...replayid.corrupted`), from EARLIEST, after an `ops.alert.<flow>` event `replay_gap` naming the
span that may be lost. A crash between store and checkpoint repeats only what JetStream drops.
The session is renewed on UNAUTHENTICATED; other trouble reconnects with a backoff (engine/outage.py).
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from typing import Any, AsyncIterator

import aiohttp
import grpc
import orjson
import structlog

from adapters.salesforce.auth import TokenSource
from adapters.salesforce.cdc import decode_event
from adapters.salesforce.config import SalesforceEndpointConfig
from adapters.salesforce.proto import pubsub_api_pb2 as pb
from adapters.salesforce.pubsub import REPLAY_CORRUPTED, PubSubClient, error_code, grpc_error
from engine.alerts import publish_alert
from engine.clock import SYSTEM, Clock
from engine.errors import BrokerUnavailable, ConfigError, HubError, PublishFailed
from engine.kv import bucket
from engine.outage import ReconnectingIngress
from engine.tasks import cancel_and_wait

log = structlog.get_logger("hub.salesforce")
CHECKPOINTS = "hub_salesforce_replay"
CALL_TIMEOUT = 30.0


class ReplayRefused(Exception):
    """The service no longer retains the replay id we asked to resume after."""


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


class PubSubIngress(ReconnectingIngress):
    STOP_GRACE = 5.0

    endpoint: SalesforceEndpointConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # the hub's clock (Hub(clock=...), `demo --at`, through Services): a checkpoint's time is written
        # and its age against the retention read on it, one clock for both
        self.clock: Clock = getattr(self.services, "clock", None) or SYSTEM
        self.received = self.stored = self.duplicates = self.keepalives = self.subscriptions = 0
        self.gaps: list[dict[str, Any]] = []
        self.tokens: TokenSource | None = None
        self.client: PubSubClient | None = None
        self._http: aiohttp.ClientSession | None = None
        self._kv: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._in_hand = False
        self._refused = False
        self._gap_alerted: tuple[Any, ...] | None = None   # the gap last named: a retry does not name it again
        self.checkpoint: dict[str, Any] | None = None
        self._headers = {"content-type": "application/json", "Hub-Salesforce-Topic": self.spec.topic}

    @property
    def key(self) -> str:
        return self.flow.name

    def _where(self) -> str:
        return self.endpoint.pubsub

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if not isinstance(self.endpoint, SalesforceEndpointConfig):
            raise ConfigError([f"flow {self.flow.name!r}: source endpoint {self.spec.endpoint!r} is not a "
                               "salesforce endpoint"])
        self.tokens = TokenSource(self.spec.endpoint, self.endpoint, self.clock)
        self.tokens.resolve_secrets()
        self._http = aiohttp.ClientSession()
        self.client = PubSubClient(self.spec.endpoint, self.endpoint, self.tokens, self._http)
        self.client.open()
        self._kv = await bucket(self.landing.js, CHECKPOINTS)
        self._task = asyncio.create_task(self._run(), name=f"salesforce-ingress-{self.flow.name}")

    async def stop(self) -> None:
        """Finish the batch in hand (stored and checkpointed), then end the subscription."""
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            if not self._in_hand:
                task.cancel()
            await asyncio.wait({task}, timeout=self.STOP_GRACE)
            await cancel_and_wait([task])
        if self.client is not None:
            await self.client.close()
        if self._http is not None:
            await self._http.close()
        self._set_state("stopped")

    # --- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stop.is_set():
            self._set_state("connecting")
            try:
                await self._subscribe()
                continue  # the service ended the stream: resubscribe from the checkpoint
            except ReplayRefused:
                self._refused = True
                continue
            except (HubError, grpc.aio.AioRpcError, aiohttp.ClientError, OSError) as exc:
                problem: BaseException = exc
            except Exception as exc:  # a bug must not end the ingress: keep it visible and go on
                log.error("salesforce_ingress_failed", flow=self.flow.name, error=repr(exc), exc_info=True)
                problem = exc
            if self.outage.failed(type(problem).__name__):
                log.warning("salesforce_unavailable", flow=self.flow.name, where=self._where(), error=str(problem),
                            retry=self.outage.retry)
            self._set_state("down")
            await self.outage.pause(self._stop)

    async def _subscribe(self) -> None:
        assert self.client is not None and self.client.stub is not None and self.tokens is not None
        checkpoint = await self._load()
        preset, replay_id, gap = self._start_point(checkpoint)
        if gap is not None and self._gap_alerted != (gap["checkpoint_replay_id"], gap["reason"]):
            await self._alert_gap(gap)  # before anything newer is checkpointed
            self._gap_alerted = (gap["checkpoint_replay_id"], gap["reason"])
        session = await self.client.session(CALL_TIMEOUT)
        requests: asyncio.Queue[pb.FetchRequest | None] = asyncio.Queue()
        requests.put_nowait(pb.FetchRequest(topic_name=self.spec.topic, replay_preset=preset, replay_id=replay_id,
                                            num_requested=self.spec.batch))

        async def outgoing() -> AsyncIterator[pb.FetchRequest]:
            while (request := await requests.get()) is not None:
                yield request

        call = self.client.stub.Subscribe(outgoing(), metadata=self.client.metadata(session))
        self.subscriptions += 1
        try:
            first = True
            async for response in call:
                if first:
                    first = False
                    if ended := self.outage.recovered():
                        log.info("salesforce_reconnected", flow=self.flow.name, **ended)
                    self._set_state("subscribed")
                    self._refused = False
                # keep `batch` events requested: top up once half are delivered (topping up after every
                # response makes the server answer in ever smaller pieces), before storing, so the next
                # events travel while these are stored; what arrives is checkpointed only once stored
                owed = response.pending_num_requested
                if owed <= self.spec.batch // 2:
                    requests.put_nowait(pb.FetchRequest(num_requested=self.spec.batch - owed))
                if response.events:
                    await self._take(response.events)
                    if self._stop.is_set():
                        return
                else:
                    self.keepalives += 1
                    if response.latest_replay_id:
                        await self._save(response.latest_replay_id)
                    self._changed.set()
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                self.tokens.invalidate(session)  # the session ended: log in again, resubscribe at once
                log.info("salesforce_session_renewed", flow=self.flow.name)
                return
            if error_code(exc) == REPLAY_CORRUPTED:
                raise ReplayRefused() from None
            raise grpc_error(self.spec.endpoint, f"Subscribe {self.spec.topic}", exc) from None
        finally:
            requests.put_nowait(None)
            call.cancel()

    def _start_point(self, checkpoint: dict[str, Any] | None) -> tuple[int, bytes, dict[str, Any] | None]:
        """(preset, replay id, gap or None) of the next subscription."""
        now = self.clock.time()
        edge = now - self.spec.retention
        at = None
        if checkpoint is not None:
            try:
                at = datetime.fromisoformat(checkpoint["at"]).timestamp()
            except (KeyError, TypeError, ValueError):
                at = None
        if self._refused:
            return pb.EARLIEST, b"", self._gap(checkpoint, at, edge, "the service no longer retains the replay id")
        if checkpoint is None or checkpoint.get("topic") != self.spec.topic:
            return (pb.EARLIEST if self.spec.start == "earliest" else pb.LATEST), b"", None
        if at is None or at < edge:
            return pb.EARLIEST, b"", self._gap(checkpoint, at, edge, "the checkpoint is older than the retention")
        return pb.CUSTOM, bytes.fromhex(checkpoint["replay_id"]), None

    def _gap(self, checkpoint: dict[str, Any] | None, at: float | None, edge: float, reason: str) -> dict[str, Any]:
        return {"topic": self.spec.topic, "reason": reason, "resumed": "earliest",
                "gap_from": iso(at) if at is not None else None, "gap_until": iso(edge),
                "checkpoint_replay_id": (checkpoint or {}).get("replay_id"),
                "retention_s": self.spec.retention}

    async def _alert_gap(self, gap: dict[str, Any]) -> None:
        """Name the span whose events may be lost, before anything newer is checkpointed."""
        try:
            await publish_alert(self.landing.js, self.flow.name, "replay_gap", "firing", **gap)
        except Exception as exc:
            raise BrokerUnavailable(f"replay gap alert not published: {exc!r}") from exc
        self.gaps.append(gap)

    async def _take(self, events: Any) -> None:
        """Store a batch, then checkpoint its last replay id."""
        assert self.client is not None
        self._in_hand = True
        try:
            items = []
            for consumer_event in events:
                event = consumer_event.event
                record: dict[str, Any] = {"topic": self.spec.topic, "replay_id": consumer_event.replay_id.hex(),
                                          "event_id": event.id, "schema_id": event.schema_id}
                try:
                    schema, parsed = await self.client.schema(event.schema_id, CALL_TIMEOUT)
                    record["payload"] = decode_event(event.payload, parsed, schema,
                                                     self.client.with_bytes[event.schema_id])
                except HubError:
                    raise
                except Exception as exc:  # kept, not lost: the flow's transform sends it to the DLQ
                    record["decode_error"] = f"{type(exc).__name__}: {exc}"
                    record["raw"] = event.payload.hex()
                items.append((orjson.dumps(record), f"{self.spec.topic}|{event.id}", self._headers))
            self.received += len(items)
            results = await self.landing.store_many(items)
            failed = [r for r in results if isinstance(r, PublishFailed)]
            if failed:
                raise BrokerUnavailable(f"{len(failed)} of {len(items)} events not stored: {failed[0]}")
            self.stored += sum(1 for r in results if r is True)
            self.duplicates += sum(1 for r in results if r is False)
            await self._save(events[-1].replay_id)
            self._changed.set()
        finally:
            self._in_hand = False

    # --- checkpoints -----------------------------------------------------------------------------

    async def _load(self) -> dict[str, Any] | None:
        try:
            entry = await self._kv.get(self.key)
        except Exception as exc:
            if type(exc).__name__ == "KeyNotFoundError":
                return None
            raise BrokerUnavailable(f"checkpoint of {self.flow.name} unreadable: {exc!r}") from exc
        return json.loads(entry.value) if entry.value else None

    async def _save(self, replay_id: bytes) -> None:
        value = {"topic": self.spec.topic, "replay_id": replay_id.hex(), "at": iso(self.clock.time())}
        try:
            await self._kv.put(self.key, json.dumps(value).encode())
        except Exception as exc:
            raise BrokerUnavailable(f"checkpoint of {self.flow.name} not written: {exc!r}") from exc
        self.checkpoint = value


async def read_checkpoint(js: Any, flow: str) -> dict[str, Any] | None:
    """A flow's replay checkpoint (for ops and tests)."""
    kv = await bucket(js, CHECKPOINTS)
    try:
        entry = await kv.get(flow)
    except Exception:
        return None
    return json.loads(entry.value) if entry.value else None


async def write_checkpoint(js: Any, flow: str, topic: str, replay_id: str, at: str) -> None:
    """Set a flow's checkpoint by hand (ops moving a subscription; tests staging an old one)."""
    kv = await bucket(js, CHECKPOINTS)
    await kv.put(flow, json.dumps({"topic": topic, "replay_id": replay_id, "at": at}).encode())

