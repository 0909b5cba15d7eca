"""Salesforce, the CRM at the centre: the Pub/Sub API in (a `salesforce:` flow source: Change Data
Capture and platform events, replay checkpoints), REST and Bulk API 2.0 out (a `salesforce` endpoint:
sObject Collections upserts, Bulk ingest jobs, platform event publishing), OAuth 2.0 client
credentials or JWT bearer. The wire contract of the Pub/Sub API is our own proto
(protos/salesforce/pubsub_api.proto), generated into `proto/`.

Importing this package registers the `salesforce` adapter.
"""

import os

# the hub starts nats-server and other children while gRPC threads run; gRPC's fork handlers are not
# needed for that and only log a warning each time
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from adapters.salesforce.adapter import SalesforceAdapter  # noqa: E402
from adapters.salesforce.config import SalesforceEndpointConfig  # noqa: E402
from adapters.salesforce.ingress import PubSubIngress, read_checkpoint, write_checkpoint  # noqa: E402

__all__ = ["PubSubIngress", "SalesforceAdapter", "SalesforceEndpointConfig", "read_checkpoint", "write_checkpoint"]
