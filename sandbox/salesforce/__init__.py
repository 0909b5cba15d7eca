"""A Salesforce org for the demo and the tests: the OAuth 2.0 token endpoint, REST (sObject Collections,
records, limits), Bulk API 2.0 ingest jobs and the Pub/Sub API (gRPC), all on loopback ports.

    org = await SalesforceOrg().start()
    org.url                 # instance and login URL (http://127.0.0.1:PORT)
    org.pubsub_target       # host:port of the Pub/Sub API
    org.add_client("plu-hub", "secret")                       # a connected app (client credentials)
    org.change("Account", "PLU_Account_Id__c", "A-DE-1", {"BillingCity": "Köln"})   # a user edit -> CDC
    org.publish_event("Contract_Signed__e", {...})            # a Salesforce flow publishes an event
    org.clock.advance(73 * 3600)                              # with a ManualClock: past the retention
    await org.stop()

Run alone: `python -m sandbox.salesforce [--port 18160] [--pubsub-port 18161]` prints the URLs and the
connected app's credentials, and stops on Ctrl-C.
"""

from __future__ import annotations

import os

# the demo starts nats-server and other children while gRPC threads run; gRPC's fork handlers are not
# needed for that and only log a warning each time (set before grpc is first imported)
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import asyncio  # noqa: E402
import io  # noqa: E402
import uuid  # noqa: E402
from typing import Any

import fastavro
from aiohttp import web

from engine.clock import SYSTEM, Clock
from sandbox.salesforce.auth import ConnectedApp, Sessions
from sandbox.salesforce.bulk import BulkJobs
from sandbox.salesforce.eventbus import RETENTION, EventBus
from sandbox.salesforce.model import platform_event_schema, plu_objects, schema_id, schema_json
from sandbox.salesforce.cdc import change_event
from sandbox.salesforce.records import RecordStore, Transaction
from sandbox.salesforce.rest import ApiUsage, RestApi

ORG_ID = "00D5g000004PLUHUB"
USER = "integration@plu.example"
USER_ID = "0055g00000HUBUSER"


class SalesforceOrg:
    def __init__(self, *, clock: Clock = SYSTEM, daily_api_limit: int = 1_000_000, retention: float = RETENTION,
                 keepalive: float = 270.0, idle_close: float = 60.0, bulk_pace: float | None = None,
                 bulk_internal_batch: int = 10_000,
                 session_timeout: float = 7200.0, port: int = 0, pubsub_port: int = 0) -> None:
        self.clock = clock
        self.org_id = ORG_ID
        self.objects = plu_objects()
        self.bus = EventBus(clock, retention)
        self.store = RecordStore(self.objects, self.bus, clock, ORG_ID, USER_ID)
        self.jobs = BulkJobs(self.store, bulk_pace, bulk_internal_batch)
        self.usage = ApiUsage(clock, daily_api_limit)
        self.sessions = Sessions(ORG_ID, "", clock, session_timeout)
        self.sessions.add_user(USER, USER_ID)
        self.rest = RestApi(self)
        self.keepalive, self.idle_close = keepalive, idle_close
        self.url = ""
        self.pubsub_target = ""
        self.published = 0
        self.collections_sizes: list[int] = []   # records per sObject Collections request
        self._port, self._pubsub_port = port, pubsub_port
        self._runner: web.AppRunner | None = None
        self._grpc: Any = None
        self.pubsub: Any = None
        self.event_schemas: dict[str, tuple[dict[str, Any], Any]] = {}
        for obj in self.objects.values():
            if obj.platform_event:
                schema = platform_event_schema(obj)
                self.event_schemas[obj.name] = (schema, fastavro.parse_schema(schema))
                self.bus.add_topic(obj.event_topic, schema, schema_id(schema), can_publish=True)

    @property
    def schemas(self) -> dict[str, str]:
        """Every schema id the bus has used, to its JSON (GetSchema)."""
        return {t.schema_id: schema_json(t.schema) for t in self.bus.topics.values()}

    async def start(self) -> "SalesforceOrg":
        from sandbox.salesforce.pubsub import serve

        self._runner = web.AppRunner(self.rest.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self.sessions.login_url = self.url
        self._grpc, grpc_port, self.pubsub = await serve(self, port=self._pubsub_port, keepalive=self.keepalive,
                                                         idle_close=self.idle_close)
        self.pubsub_target = f"127.0.0.1:{grpc_port}"
        return self

    async def stop(self) -> None:
        await self.jobs.stop()
        if self._grpc is not None:
            await self._grpc.stop(grace=0.5)
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> "SalesforceOrg":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- what happens inside Salesforce (for tests and the demo) --------------------------------

    def add_client(self, client_id: str, secret: str, certificate_key: Any = None) -> None:
        """A connected app; client credentials run as the integration user; JWT bearer needs the key."""
        self.sessions.add_app(ConnectedApp(client_id, secret, USER, certificate_key))

    def change(self, sobject: str, ext_field: str, ext_value: str, fields: dict[str, Any],
               origin: str = "") -> dict[str, Any]:
        """A user creates or edits a record in Salesforce (no API origin): committed, change event out."""
        obj = self.store.obj(sobject)
        ext = self.store.external_field(obj, ext_field)
        tx = Transaction()
        values = self.store.check_record(obj, {**fields, ext_field: ext_value})
        result = self.store.upsert(obj, ext, values, origin, tx)
        self.store.apply(tx)
        return result

    def seed(self, sobject: str, ext_field: str, ext_value: str, fields: dict[str, Any]) -> str:
        """Load a record as a data migration before Change Data Capture was on: no change event."""
        obj = self.store.obj(sobject)
        tx = Transaction()
        values = self.store.check_record(obj, {**fields, ext_field: ext_value})
        result = self.store.upsert(obj, self.store.external_field(obj, ext_field), values, "", tx)
        tx.staged = [(o, i, r, [], origin) for o, i, r, _, origin in tx.staged]  # committed, nothing changed
        self.store.apply(tx)
        return result["id"]

    def record(self, sobject: str, ext_field: str, ext_value: str) -> dict[str, Any] | None:
        record_id = self.store.find(sobject, ext_field, ext_value)
        return self.store.get(sobject, record_id) if record_id else None

    def count(self, sobject: str) -> int:
        return len(self.store.records[sobject])

    def publish_event(self, event_name: str, fields: dict[str, Any]) -> int:
        """Salesforce publishes a platform event (a flow ran on a signed contract); returns its replay."""
        obj = self.objects[event_name]
        schema, parsed = self.event_schemas[event_name]
        values = {"CreatedDate": int(self.clock.time() * 1000), "CreatedById": USER_ID, "EventUuid": str(uuid.uuid4())}
        for name, value in fields.items():
            if name not in obj.fields:
                raise KeyError(f"{event_name} has no field {name}")
            values[name] = value
        out = io.BytesIO()
        fastavro.schemaless_writer(out, parsed, values)
        topic = self.bus.topics[obj.event_topic]
        return self.bus.publish(topic, out.getvalue(), values["EventUuid"])

    def gap_event(self, sobject: str, record_id: str, change_type: str = "GAP_UPDATE") -> int:
        """A change Salesforce could not describe (done in the database, too large): header only."""
        obj = self.store.obj(sobject)
        schema = self.store.cdc_schemas[sobject][0]
        ids = [] if change_type == "GAP_OVERFLOW" else [record_id]
        event = change_event(obj, schema, record_id, {}, [], "", str(uuid.uuid4()), 1,
                             int(self.clock.time() * 1000), 0, USER_ID, change_type)
        event["ChangeEventHeader"]["recordIds"] = ids
        return self.store.publish_change(obj, event)


async def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Run the Salesforce emulator on loopback.")
    parser.add_argument("--port", type=int, default=18160, help="REST, Bulk and OAuth port (0: a free one)")
    parser.add_argument("--pubsub-port", type=int, default=18161, help="Pub/Sub API (gRPC) port (0: a free one)")
    parser.add_argument("--accounts", type=int, default=0, help="create this many accounts first (each one a "
                        "CDC event on /data/AccountChangeEvent)")
    parser.add_argument("--daily-limit", type=int, default=1_000_000, help="the org's daily API requests")
    args = parser.parse_args()
    org = await SalesforceOrg(port=args.port, pubsub_port=args.pubsub_port, daily_api_limit=args.daily_limit).start()
    org.add_client("plu-hub", "sandbox-secret")
    for i in range(args.accounts):
        org.change("Account", "PLU_Account_Id__c", f"A-{i:07d}", {"Name": f"Account {i}", "Country__c": "DE",
                                                                  "BillingCity": "Berlin"})
    print(f"Salesforce emulator: {org.url} (OAuth, REST, Bulk 2.0), Pub/Sub API at {org.pubsub_target}; "
          "client plu-hub / sandbox-secret", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await org.stop()


if __name__ == "__main__":
    try:
        asyncio.run(_main())
    except KeyboardInterrupt:
        pass
