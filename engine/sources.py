"""The sources a flow may read from, as the YAML says them (`source:` of a flow file).

A subject source reads JetStream directly; every other source first lands what it receives in
JetStream (principle 1: store first, then acknowledge the outside world) on a subject of the hub's
own, `hub.schedule.<flow>` or `hub.ingress.<flow>`, which the flow's durable consumer then reads.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from engine.durations import Duration
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

    cron: str | None = Field(None, description="Five-field cron expression (minute hour day month weekday).",
                             examples=["30 1 * * *", "0 6 1 * *"])
    every: Duration | None = Field(None, description="Fixed interval instead of cron, aligned to the epoch.",
                                   examples=["15m", "1h"])
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
    poll: Duration = Field(30.0, description="How often to look when the server has no IDLE (or IDLE is off).",
                           examples=["30s"])
    idle: bool = Field(True, description="Wait with IMAP IDLE where the server offers it (new mail wakes it).")


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


SOURCE_MODELS: dict[str, type[BaseModel]] = {
    "subject": StreamSource, "request": RequestSource, "schedule": ScheduleSource, "imap": ImapSource,
    "sftp": SftpSource,
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
