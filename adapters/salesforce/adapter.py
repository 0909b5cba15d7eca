"""The `salesforce` adapter: a flow's `call` to an org, by the endpoint's named operations.

    upsert       the payload is one record; sent with others in one sObject Collections request;
                 answers {id, created, sobject, <external id>}
    bulk_upsert  the payload is a stored batch (`batch` source); answers the submitted Bulk API job
    publish      the payload is a platform event's fields; answers its replay id
    get          the payload is {"id": record id}; answers the fields asked for
    bulk_status  the payload is a submitted job; answers {state, processed, failed, error}
    bulk_results the payload is a finished job; dead-letters failed rows, sends unprocessed ones back,
                 answers the job's reconciliation record
"""

from __future__ import annotations

from typing import Any

from adapters.salesforce.auth import TokenSource
from adapters.salesforce.bulk import BulkJobs
from adapters.salesforce.collections import CollectionsBatcher
from adapters.salesforce.config import BUILT_IN, SalesforceEndpointConfig
from adapters.salesforce.limits import OrgLimits
from adapters.salesforce.pubsub import PubSubClient
from adapters.salesforce.rest import RestClient
from engine.adapter import Adapter, CallContext
from engine.errors import RoutingError, ValidationFailed
from engine.messages import derived_id
from engine.registry import register


@register
class SalesforceAdapter(Adapter):
    name = "salesforce"
    Config = SalesforceEndpointConfig
    operations_doc = ("The endpoint's `operations` (upsert, bulk_upsert, publish, get), and the built-in "
                      "bulk_status and bulk_results.")
    limits_itself = True  # max_concurrency counts HTTP requests (a request carries up to 200 records)

    config: SalesforceEndpointConfig

    def __init__(self, endpoint: str, config: SalesforceEndpointConfig, services: Any) -> None:
        super().__init__(endpoint, config, services)
        self.tokens = TokenSource(endpoint, config)
        self.limits = OrgLimits(endpoint, config.allowance)
        self.rest = RestClient(endpoint, config, self.tokens, self.limits)
        self.pubsub: PubSubClient | None = None
        self.batchers: dict[str, CollectionsBatcher] = {}
        self.bulk: BulkJobs | None = None

    def check_operation(self, operation: str | None) -> str | None:
        known = sorted([*self.config.operations, *BUILT_IN])
        if operation is None:
            return f"a salesforce call names an operation; this endpoint has: {', '.join(known)}"
        if operation not in self.config.operations and operation not in BUILT_IN:
            return f"unknown operation {operation!r}; this endpoint has: {', '.join(known)}"
        return None

    async def start(self) -> None:
        await self.rest.start()
        self.bulk = BulkJobs(self.rest, getattr(self.services, "js", None))
        for name, op in self.config.operations.items():
            if op.upsert is not None:
                self.batchers[name] = CollectionsBatcher(self.rest, op.upsert, self.config.collections)

    async def close(self) -> None:
        for batcher in self.batchers.values():
            await batcher.close()
        if self.pubsub is not None:
            await self.pubsub.close()
        await self.rest.close()

    def _pubsub(self) -> PubSubClient:
        if self.pubsub is None:
            self.pubsub = PubSubClient(self.endpoint, self.config, self.tokens, self.rest.http)
            self.pubsub.open()
        return self.pubsub

    async def call(self, operation: str | None, payload: Any, ctx: CallContext) -> Any:
        why = self.check_operation(operation)
        if why:
            raise RoutingError(f"{self.endpoint}: {why}")
        assert operation is not None and self.bulk is not None
        timeout = ctx.timeout
        if operation == "bulk_status":
            return await self.bulk.status(payload, timeout)
        if operation == "bulk_results":
            job_op = self.config.operations.get(str(payload.get("operation")) if isinstance(payload, dict) else "")
            if job_op is None or job_op.bulk_upsert is None:
                raise RoutingError(f"{self.endpoint}: the job's operation {payload.get('operation')!r} is not a "
                                   "bulk_upsert operation of this endpoint")
            return await self.bulk.results(job_op.bulk_upsert, payload, timeout)
        op = self.config.operations[operation]
        if op.upsert is not None:
            return await self.batchers[operation].upsert(payload, timeout)
        if op.bulk_upsert is not None:
            return await self.bulk.submit(operation, op.bulk_upsert, payload, timeout)
        if op.publish is not None:
            if not isinstance(payload, dict):
                raise ValidationFailed(f"publish {op.publish.topic}: the event must be a JSON object")
            event_id = derived_id("salesforce-event", self.endpoint, ctx.msg_id)  # a retry publishes the same id
            return await self._pubsub().publish(op.publish.topic, payload, event_id, timeout)
        assert op.get is not None
        record_id = payload.get("id") if isinstance(payload, dict) else None
        if not isinstance(record_id, str) or not record_id.isalnum() or len(record_id) not in (15, 18):
            raise ValidationFailed(f"get {op.get.sobject}: the payload needs `id`, a 15 or 18 character record id")
        record = await self.rest.request("GET", f"/sobjects/{op.get.sobject}/{record_id}?fields="
                                         f"{','.join(op.get.fields)}", timeout=timeout)
        record = {k: v for k, v in (record or {}).items() if k != "attributes"}
        record.setdefault("Id", record_id)
        return record
