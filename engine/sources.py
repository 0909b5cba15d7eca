"""The sources a flow may read from, as the YAML says them (`source:` of a flow file).

A subject source reads JetStream directly; every other source first lands what it receives in
JetStream (principle 1: store first, then acknowledge the outside world) on a subject of the hub's
own, `hub.schedule.<flow>` or `hub.ingress.<flow>`, which the flow's durable consumer then reads.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from engine.durations import Duration
from engine.secrets import SecretRef
from engine.subjects import Subject, SubjectPattern

SCHEDULE_SUBJECT_PREFIX = "hub.schedule"   # ticks of scheduled flows: hub.schedule.<flow>
SCHEDULE_STREAM = "HUB_SCHEDULE"
INGRESS_SUBJECT_PREFIX = "hub.ingress"     # what ingress sources received: hub.ingress.<flow>
INGRESS_STREAM = "HUB_INGRESS"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)



class StreamSource(_Strict):
    """Read a JetStream subject through a durable pull consumer named after the flow."""

    subject: SubjectPattern = Field(description="Subject (wildcards allowed) captured by a stream in config.",
                                    examples=["crm.contract.signed", "meter.reading.*"])
    deliver: Literal["all", "new"] = Field(
        "all", description="Where a new durable starts: every stored message, or only new ones.")


class RequestSource(_Strict):
    """Answer core-NATS requests (request/reply) in a queue group named after the flow."""

    request: Subject = Field(description="Subject requesters send to; the flow must end with `reply`.",
                             examples=["tariff.quote"])


class ScheduleSpec(_Strict):
    """When a scheduled flow starts: a cron expression in a time zone, or a fixed interval."""

    cron: str | None = Field(None, description="Five-field cron expression (minute hour day month weekday), "
                             "read in `timezone`. As in Vixie cron, a job at a fixed time runs once when that time "
                             "happens twice (autumn: at the first, summer-time one) and at the jump when it does "
                             "not happen (spring); a job with `*` in its minute or hour runs at the times that occur.",
                             examples=["30 1 * * *", "0 6 1 * *"])
    every: Duration | None = Field(None, description="Fixed interval instead of cron, aligned to the epoch in UTC "
                                   "(elapsed time: DST does not move it).", examples=["15m", "1h"])
    timezone: str = Field("UTC", description="IANA time zone the cron expression is read in (DST-aware).",
                          examples=["Europe/Brussels"])

    @model_validator(mode="after")
    def _one_of(self) -> "ScheduleSpec":
        from engine.schedule import check_schedule

        if (self.cron is None) == (self.every is None):
            raise ValueError("a schedule needs exactly one of: cron, every")
        if problem := check_schedule(self.cron, self.timezone):
            raise ValueError(problem)
        return self


class ScheduleSource(_Strict):
    """Start the flow on a schedule: each tick is stored in JetStream (stream HUB_SCHEDULE, subject
    `hub.schedule.<flow>`) and consumed like any message, so retries, the DLQ and many runners work
    as for a subject source. Every runner publishes the tick under the same id; JetStream keeps one."""

    schedule: ScheduleSpec
    each: list[dict[str, Any]] = Field(
        default_factory=lambda: [{}], min_length=1,
        description="One tick per entry, the entry as the tick's payload (e.g. one per country).",
        examples=[[{"country": "DE"}, {"country": "FR"}]])
    catch_up: bool = Field(True, description="At start, run a slot that was missed while no runner was up "
                           "(the latest one only).")


class IngressSource(_Strict):
    """Base of sources that receive from outside the hub and land it in JetStream first."""

    implementation: ClassVar[str] = ""   # "module:Class" of the engine.ingress.Ingress that runs it

    def endpoint_name(self) -> str | None:
        """The config endpoint this source reads from, if any (validation checks it exists)."""
        return None


class ImapMailbox(_Strict):
    endpoint: str = Field(description="An `imap` endpoint in config (server, account, TLS, password reference).",
                          examples=["hub_mailbox"])
    folder: str = Field("INBOX", description="Folder watched for new mail.")
    processed: str = Field("Processed", description="Folder a mail is moved to once JetStream has stored it.")
    quarantine: str = Field("Quarantine", min_length=1, description="Folder a mail the hub cannot store at all "
                            "(past the claim-check limit, 64 MiB) is moved to unread, with a `mail_quarantined` "
                            "alert; created when missing. Name it as the server spells its folders.",
                            examples=["Quarantine", "INBOX.Quarantine", "Hub/Too-Big"])
    poll: Duration = Field(30.0, description="How often to look when the server has no IDLE (or IDLE is off).",
                           examples=["30s"])
    idle: bool = Field(True, description="Wait with IMAP IDLE where the server offers it (new mail wakes it).")

    @model_validator(mode="after")
    def _quarantine_is_elsewhere(self) -> "ImapMailbox":
        if self.quarantine in (self.folder, self.processed):
            which = "folder" if self.quarantine == self.folder else "processed"
            raise ValueError(f"quarantine {self.quarantine!r} is the {which} folder: a quarantined mail would "
                             "be fetched again (or look processed); name a folder of its own")
        return self


class ImapSource(IngressSource):
    """Every new mail in an IMAP folder: stored in JetStream (raw MIME, `Nats-Msg-Id` from its
    Message-ID) before it is moved to `processed`; a crash in between stores it again as a duplicate
    JetStream drops. The flow gets the raw message; transforms parse it."""

    implementation: ClassVar[str] = "adapters.imap:ImapIngress"
    imap: ImapMailbox

    def endpoint_name(self) -> str | None:
        return self.imap.endpoint


class SftpDrop(_Strict):
    endpoint: str = Field(description="An `sftp` endpoint in config (server, pinned host key, user, key or password).",
                          examples=["pdf_drop"])
    directory: str = Field("/", description="Directory watched for new files.", examples=["/out/invoices"])
    pattern: str = Field(r".*", description="Regular expression a file name must match to be taken; others are "
                         "quarantined with the reason.", examples=[r"^INV-(?P<invoice_id>[A-Za-z0-9_-]+)-\d{14}\.pdf$"])
    bucket: str = Field("hub_files", pattern=r"^[a-z0-9_-]{1,40}$",
                        description="JetStream Object Store bucket the files are streamed into (claim check).")
    poll: Duration = Field(5.0, description="How often the directory is listed.", examples=["5s"])
    lifetime: Duration = Field(86400.0, description="How long the server keeps a file (its janitor's rule).",
                               examples=["24h"])
    warn_before: Duration = Field(3600.0, description="Alert when a file is still not fetched this long before "
                                  "the server deletes it.", examples=["1h"])


class SftpSource(IngressSource):
    """Every new file in an SFTP directory: streamed into the Object Store (SHA-256 checked, never
    held whole in memory), then a message with the object reference is stored in JetStream, then the
    file is remembered as done (KV), so it is never fetched twice and a crash in between repeats
    only what JetStream or the Object Store already drop. The flow gets the reference, not the bytes."""

    implementation: ClassVar[str] = "adapters.sftp:SftpIngress"
    sftp: SftpDrop

    def endpoint_name(self) -> str | None:
        return self.sftp.endpoint


class HmacSignature(_Strict):
    """A sender's HMAC-SHA256 over "<timestamp>.<raw body>", sent as `t=<unix>,v1=<hex>` in a header."""

    secret: SecretRef = Field(description="The shared secret (never in YAML).", examples=[{"env": "VENDOR3_SECRET"}])
    header: str = Field("X-Signature", description="Header carrying `t=<unix>,v1=<hex>`.")
    max_age: Duration = Field(300.0, description="Older (or further in the future) requests are refused; at "
                              "most 1h, the ingress stream's duplicate window (a replay must meet it).")

    @field_validator("max_age")
    @classmethod
    def _within_the_duplicate_window(cls, value: float) -> float:
        from engine.streams import INGRESS_DEDUPE

        if value > INGRESS_DEDUPE:
            raise ValueError(f"max_age {value:g}s exceeds HUB_INGRESS's {INGRESS_DEDUPE:g}s duplicate window: "
                             "a replay signed within max_age but older than the window would be stored again")
        return value


class WebhookEndpoint(_Strict):
    path: str = Field(pattern=r"^/[A-Za-z0-9/_.-]*$", description="Path on the runner's ingress HTTP server "
                      "(config `http_ingress`).", examples=["/webhooks/vendor3/readings"])
    hmac: HmacSignature | None = Field(None, description="Verify an HMAC signature; a bad one is 401, nothing stored.")
    token: SecretRef | None = Field(None, description="Require `Authorization: Bearer <token>` instead.",
                                    examples=[{"env": "FIELD_APP_TOKEN"}])
    items: str | None = Field(None, description="JMESPath to the list in the JSON body whose elements are stored "
                              "as one message each (a batch of readings); default: the body is one message.",
                              examples=["readings"])
    item_id: str | None = Field(None, description="Template of an item's identity (its message id: a repeat is "
                                "dropped); default: a hash of the item.", examples=["{meterId}:{ts}"])
    max_body: int = Field(10 * 1024 * 1024, ge=1024, description="Larger requests are refused with 413.")

    @model_validator(mode="after")
    def _one_auth(self) -> "WebhookEndpoint":
        if (self.hmac is None) == (self.token is None):
            raise ValueError("a webhook needs exactly one of: hmac, token (no unauthenticated ingress)")
        return self


class WebhookSource(IngressSource):
    """HTTP POSTs to a path of the runner's ingress server: authenticated (HMAC within `max_age`, a
    replayed signature refused; or a bearer token), stored in JetStream (each `items` element its own
    message), and only then answered 202. 401 stores nothing; a store failure answers 503."""

    implementation: ClassVar[str] = "adapters.webhook:WebhookIngress"
    webhook: WebhookEndpoint


class MqttSubscription(_Strict):
    endpoint: str = Field(description="An `mqtt` endpoint in config (broker, credentials, TLS).",
                          examples=["vendor4_broker"])
    topics: list[str] = Field(min_length=1, description="Topic filters subscribed to (QoS 1).",
                              examples=[["vendor4/readings/#"]])
    client_id: str = Field(description="Stable client id: the broker keeps the session (and the messages "
                           "published meanwhile) under it while the hub is away.", examples=["plu-hub-vendor4"])
    session_expiry: Duration = Field(7 * 86400.0, description="How long the broker keeps the session offline.")


class MqttSource(IngressSource):
    """Messages from an MQTT broker (QoS 1, persistent session): each is stored in JetStream before it
    is acknowledged to the broker, so what the broker delivered and the hub did not store comes again."""

    implementation: ClassVar[str] = "adapters.mqtt:MqttIngress"
    mqtt: MqttSubscription

    def endpoint_name(self) -> str | None:
        return self.mqtt.endpoint


# --- salesforce (issue 16): the Pub/Sub API, and batches for bulk targets -------------------------


class SalesforceSubscription(_Strict):
    endpoint: str = Field(description="A `salesforce` endpoint in config (org, login, Pub/Sub address).",
                          examples=["salesforce"])
    topic: str = Field(pattern=r"^/(data|event)/[A-Za-z][A-Za-z0-9_]*$",
                       description="A Change Data Capture channel (/data/AccountChangeEvent) or a platform event "
                       "(/event/Contract_Signed__e).", examples=["/data/AccountChangeEvent"])
    start: Literal["earliest", "latest"] = Field(
        "earliest", description="Where the very first subscription starts (no checkpoint yet): the oldest "
        "retained event or only new ones.")
    batch: int = Field(100, ge=1, le=100, description="Events requested at a time (num_requested; at most 100 "
                       "outstanding). Each batch is stored, then its last replay id checkpointed, then more asked.")
    retention: Duration = Field(72 * 3600.0, description="How long the event bus keeps events. A checkpoint "
                                "older than this resumes from the earliest retained event with an alert naming "
                                "the gap.", examples=["72h"])


class SalesforceSource(IngressSource):
    """Events of a Salesforce channel over the Pub/Sub API (gRPC, Avro): each event is stored in
    JetStream (decoded to JSON, CDC bitmaps as field names) before its replay id is checkpointed in KV;
    a restart resumes after the checkpoint (CUSTOM replay), losing and repeating nothing."""

    implementation: ClassVar[str] = "adapters.salesforce:PubSubIngress"
    salesforce: SalesforceSubscription

    def endpoint_name(self) -> str | None:
        return self.salesforce.endpoint


class BatchSpec(_Strict):
    subject: SubjectPattern = Field(description="Subject whose messages are gathered; a stream in config must capture "
                                    "it (`runner.py validate` says so at its line).",
                                    examples=["meter.month.completed"])
    size: int = Field(10_000, ge=1, le=1_000_000, description="Items in a full batch.")
    within: Duration = Field(60.0, description="A batch closes this long after its first item, full or not.",
                             examples=["2m"])
    transform: str | None = Field(None, description="Pure function applied to each item as it joins (module.function "
                                  "in transforms/); one that fails dead-letters that item alone.",
                                  examples=["salesforce_meter.month_record"])
    key: str | None = Field(None, description="Template of an item's identity (after `transform`): a later item "
                            "with the same key replaces the earlier one in the batch.", examples=["{Hub_Key__c}"])
    bucket: str = Field("hub_batches", pattern=r"^[a-z0-9_-]{1,40}$",
                        description="Object Store bucket holding the batches (a batch is bigger than a message).")
    keep: Duration = Field(7 * 86400.0, description="How long a stored batch is kept.", examples=["7d"])

    @field_validator("transform")
    @classmethod
    def _known_transform(cls, value: str | None) -> str | None:
        if value is not None:
            from engine.validation import resolve_transform

            try:
                resolve_transform(value)
            except LookupError as exc:
                raise ValueError(str(exc)) from None
        return value


class BatchSource(IngressSource):
    """Messages of a subject gathered into batches (engine/batching.py): one flow message per batch,
    naming the batch's items in the Object Store; the source messages are acked once it is stored."""

    implementation: ClassVar[str] = "engine.batching:BatchIngress"
    batch: BatchSpec


SOURCE_MODELS: dict[str, type[BaseModel]] = {
    "subject": StreamSource, "request": RequestSource, "schedule": ScheduleSource, "imap": ImapSource,
    "sftp": SftpSource, "webhook": WebhookSource, "mqtt": MqttSource,
    "salesforce": SalesforceSource, "batch": BatchSource,
}


def _source_kind(v: Any) -> str | None:
    if isinstance(v, dict):
        kinds = [k for k in SOURCE_MODELS if k in v]
        return kinds[0] if len(kinds) == 1 else None
    for kind, model in SOURCE_MODELS.items():
        if isinstance(v, model):
            return kind
    return None


Source = Annotated[
    Union[tuple(Annotated[m, Tag(k)] for k, m in SOURCE_MODELS.items())],  # type: ignore[misc]
    Discriminator(_source_kind, custom_error_type="source_kind",
                  custom_error_message="a source needs exactly one of: " + ", ".join(SOURCE_MODELS)),
]
