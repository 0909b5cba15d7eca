"""The `salesforce` endpoint's YAML: the org (login URL, API version, Pub/Sub address), how the hub
logs in, and the operations flows may call.

    salesforce:
      adapter: salesforce
      login_url: https://plu.my.salesforce.com        # token endpoint host (My Domain for client credentials)
      api_version: "62.0"
      pubsub: api.pubsub.salesforce.com:7443
      auth: {client_credentials: {client_id: 3MVG9..., client_secret: {env: SALESFORCE_CLIENT_SECRET}}}
      operations:
        upsert_invoice: {upsert: {sobject: Invoice__c, external_id: Invoice_Id__c}}        # Collections
        load_meter_months: {bulk_upsert: {sobject: Meter_Month__c, external_id: Hub_Key__c,
                                          fields: [Hub_Key__c, Site_Id__c, Total__c]}}       # Bulk API 2.0
        key_customer_candidate: {publish: {topic: /event/Key_Customer_Candidate__e}}        # platform event
        get_account: {get: {sobject: Account, fields: [Name, BillingCity]}}                 # a record by id
      allowance: {share: 0.5, reserve: 5000}           # pace calls to half the org's daily API allowance

Besides its own operations every endpoint answers `bulk_status` (a job's state) and `bulk_results`
(a finished job's failed and unprocessed rows: dead letters and retries).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.adapter import EndpointConfig
from engine.durations import Duration
from engine.secrets import SecretRef

BUILT_IN = ("bulk_status", "bulk_results")
_API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _api_name(value: str) -> str:
    if not _API_NAME.match(value):
        raise ValueError(f"{value!r} is not a Salesforce API name (letters, digits, _; e.g. Invoice__c)")
    return value


class ClientCredentials(_Strict):
    """OAuth 2.0 client credentials: the connected app's key and secret; the session runs as the app's
    execution user. Needs the org's My Domain as `login_url`."""

    client_id: str = Field(description="The connected app's consumer key.")
    client_secret: SecretRef = Field(description="The consumer secret, by reference.",
                                     examples=[{"env": "SALESFORCE_CLIENT_SECRET"}])


class JwtBearer(_Strict):
    """OAuth 2.0 JWT bearer: an assertion signed (RS256) with the key whose certificate the connected
    app holds; no secret travels, Salesforce's recommendation for server integrations."""

    client_id: str = Field(description="The connected app's consumer key (the JWT's `iss`).")
    username: str = Field(description="The integration user (the JWT's `sub`).", examples=["hub@plu.example"])
    private_key: SecretRef = Field(description="PEM private key, by reference.",
                                   examples=[{"file": "/run/secrets/salesforce_jwt.pem"}])
    audience: str = Field("https://login.salesforce.com", description="The JWT's `aud`: login.salesforce.com, "
                          "test.salesforce.com for a sandbox, or the My Domain URL.")


class SalesforceAuth(_Strict):
    client_credentials: ClientCredentials | None = None
    jwt_bearer: JwtBearer | None = None

    @model_validator(mode="after")
    def _one(self) -> "SalesforceAuth":
        if (self.client_credentials is None) == (self.jwt_bearer is None):
            raise ValueError("give exactly one of client_credentials, jwt_bearer")
        return self


class UpsertOperation(_Strict):
    sobject: str = Field(description="The object's API name.", examples=["Invoice__c"])
    external_id: str = Field(description="The external id field that identifies a record.",
                             examples=["Invoice_Id__c"])

    _names = field_validator("sobject", "external_id")(_api_name)


class BulkUpsertOperation(UpsertOperation):
    fields: list[str] = Field(min_length=1, description="CSV columns in order; the external id among them.",
                              examples=[["Hub_Key__c", "Site_Id__c", "Total__c"]])
    retries: int = Field(3, ge=0, le=20, description="How often a row that failed transiently (UNABLE_TO_LOCK_ROW) "
                         "or was never processed goes into a later job before it is dead-lettered.")

    @model_validator(mode="after")
    def _key_column(self) -> "BulkUpsertOperation":
        for name in self.fields:
            _api_name(name)
        if self.external_id not in self.fields:
            raise ValueError(f"fields must include the external id {self.external_id!r}")
        return self


class PublishOperation(_Strict):
    topic: str = Field(pattern=r"^/event/[A-Za-z][A-Za-z0-9_]*__e$", description="The platform event's channel.",
                       examples=["/event/Key_Customer_Candidate__e"])


class GetOperation(_Strict):
    sobject: str = Field(description="The object's API name.", examples=["Account"])
    fields: list[str] = Field(min_length=1, description="Fields to read.", examples=[["Name", "BillingCity"]])

    @model_validator(mode="after")
    def _names(self) -> "GetOperation":
        for name in (self.sobject, *self.fields):
            _api_name(name)
        return self


class Operation(_Strict):
    """Exactly one of: upsert (sObject Collections), bulk_upsert (Bulk API 2.0), publish (a platform
    event over the Pub/Sub API), get (a record by id)."""

    upsert: UpsertOperation | None = None
    bulk_upsert: BulkUpsertOperation | None = None
    publish: PublishOperation | None = None
    get: GetOperation | None = None

    @model_validator(mode="after")
    def _one(self) -> "Operation":
        if sum(v is not None for v in (self.upsert, self.bulk_upsert, self.publish, self.get)) != 1:
            raise ValueError("an operation is exactly one of: upsert, bulk_upsert, publish, get")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("upsert", "bulk_upsert", "publish", "get") if getattr(self, k) is not None)


class CollectionsSettings(_Strict):
    """Upserts from every flow of a runner to one object are sent together: up to `size` records per
    sObject Collections request, each waiting at most `linger` for company."""

    size: int = Field(200, ge=1, le=200, description="Records per request (Salesforce's cap is 200).")
    linger: Duration = Field(0.02, description="How long a record waits for others before its request goes.",
                             examples=["20ms"])


class Allowance(_Strict):
    """Tie the hub's pace to the org's API allowance, read from every answer's Sforce-Limit-Info."""

    share: float = Field(0.5, gt=0, le=1, description="Fraction of the org's daily API requests the hub may "
                         "use: requests are paced to share x daily limit / 24 h.")
    reserve: int = Field(1000, ge=0, description="Requests always left to the org's other users: below this "
                         "many remaining, calls fail as Throttled (the circuit opens, messages wait).")
    burst: int = Field(20, ge=1, description="Requests that may go at once before the pace applies.")


class SalesforceEndpointConfig(EndpointConfig):
    """A Salesforce org: REST and Bulk API 2.0 out, the Pub/Sub API (gRPC) in."""

    login_url: str = Field(description="Where the OAuth token endpoint is: https://login.salesforce.com, "
                           "https://test.salesforce.com or the org's My Domain.",
                           examples=["https://plu.my.salesforce.com"])
    api_version: str = Field("62.0", pattern=r"^\d{2}\.0$", description="REST and Bulk API version (Collections "
                             "upsert needs 46.0 or later).", examples=["62.0"])
    pubsub: str = Field("api.pubsub.salesforce.com:7443", description="host:port of the Pub/Sub API.")
    pubsub_tls: bool = Field(True, description="TLS to the Pub/Sub API (false only for the loopback emulator).")
    auth: SalesforceAuth
    operations: dict[str, Operation] = Field(default_factory=dict, description="Named operations flows call.")
    collections: CollectionsSettings = Field(default_factory=CollectionsSettings)
    allowance: Allowance | None = Field(None, description="Pace calls to a share of the org's daily allowance.")
    timeout: Duration = Field(30.0, description="Deadline of one call when the flow step sets none.")
    max_connections: int = Field(8, ge=1, le=256, description="HTTP connections to the org.")

    @field_validator("login_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v.rstrip("/")

    @field_validator("api_version")
    @classmethod
    def _version(cls, v: str) -> str:
        if float(v) < 46.0:
            raise ValueError("sObject Collections upsert needs API version 46.0 or later")
        return v

    @field_validator("operations")
    @classmethod
    def _no_built_in(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if name in BUILT_IN:
                raise ValueError(f"{name!r} is a built-in operation; name yours differently")
        return v
