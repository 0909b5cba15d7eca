"""An AsyncAPI 3.0 document of every subject the flows consume and publish, from the hub's side.

Written directly rather than through FastStream's AsyncAPI support: FastStream 0.7 builds the
document from its own subscriber and publisher objects (we would have to fake one per flow), and its
3.0 message object has no `headers` (a TODO in faststream/specification/asyncapi/v2_6_0/schema/
message.py) and no operation `reply`, while this document must carry the CloudEvents headers and
the request/reply pairs. The document is plain data, validated in tests against the published
AsyncAPI 3.0.0 JSON Schema (tests/data/asyncapi-3.0.0.schema.json).

Per subject a channel (templated subjects become channel parameters), its message (the payload
schema from schemas/ when a consuming flow declares one, CloudEvents headers, the correlation id),
and per flow a `receive` operation on what it reads and a `send` operation per subject it publishes.
"""

from __future__ import annotations

import re
from typing import Any

from engine.messages import CE_CORRELATION
from engine.sources import INGRESS_SUBJECT_PREFIX, SCHEDULE_SUBJECT_PREFIX
from engine.subject_map import FlowSubjects, read_project
from engine.subjects import pattern_covers, placeholders
from engine.validation import Project, resolve_schema

VERSION = "0.1.0"
_PLACEHOLDER = re.compile(r"\{([^}]*)\}")

CLOUDEVENTS_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "CloudEvents 1.0 in binary mode on NATS headers, plus the hub's identity and trace headers.",
    "properties": {
        "ce-id": {"type": "string", "description": "Event id; equal to Nats-Msg-Id (JetStream de-duplication)."},
        "ce-source": {"type": "string", "description": "Producer, e.g. /plu-hub/flows/<flow> or /crm/salesforce."},
        "ce-type": {"type": "string", "description": "Event type: the subject it was published on."},
        "ce-time": {"type": "string", "format": "date-time", "description": "When the producer made it (UTC)."},
        "ce-specversion": {"type": "string", "const": "1.0"},
        "ce-correlationid": {"type": "string", "description": "Carried unchanged from the first event to every "
                             "output, across flows and systems."},
        "traceparent": {"type": "string", "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                        "description": "W3C trace context: the span that published this message."},
        "Nats-Msg-Id": {"type": "string", "description": "JetStream de-duplication id (= ce-id)."},
        "content-type": {"type": "string", "examples": ["application/json"]},
        "Hub-Idempotency-Key": {"type": "string", "description": "Business key of the effect; a replay keeps it."},
        "Hub-Replay-For": {"type": "string", "description": "A DLQ replay: only this flow takes the message."},
    },
    "required": ["ce-id", "ce-source", "ce-type", "ce-specversion"],
}

DEAD_LETTER_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "The failed message's own headers plus what failed, where, how often and when.",
    "properties": {
        **{name: {"type": "string", "description": text} for name, text in (
            ("Hub-Dlq-Flow", "The flow that gave up."), ("Hub-Dlq-Step", "Its failing step, e.g. steps[3]."),
            ("Hub-Dlq-Error-Class", "Error class from the hub's taxonomy (engine/errors.py)."),
            ("Hub-Dlq-Error", "The error text."), ("Hub-Dlq-Transient", "true or false."),
            ("Hub-Dlq-Attempts", "Attempts made."), ("Hub-Dlq-First-Failure", "ISO time."),
            ("Hub-Dlq-Last-Failure", "ISO time."), ("Hub-Dlq-Subject", "Subject of the original message."),
            ("Hub-Dlq-Stream", "Its stream."), ("Hub-Dlq-Sequence", "Its stream sequence."),
            ("Hub-Dlq-Consumer", "The durable consumer (= flow)."),
            ("Hub-Dlq-Original-Msg-Id", "Its Nats-Msg-Id."),
            ("Hub-Dlq-History", "JSON list of the failures: at, delivery, step, error_class, error."))},
        "Nats-Msg-Id": {"type": "string", "description": "dlq:<flow>:<stream>:<sequence>: one record per delivery."},
    },
    "required": ["Hub-Dlq-Flow", "Hub-Dlq-Error-Class", "Hub-Dlq-Error", "Hub-Dlq-Subject"],
}

ERROR_REPLY: dict[str, Any] = {
    "type": "object", "description": "A request the flow could not answer: never silence.",
    "properties": {"error": {"type": "object", "properties": {
        "class": {"type": "string"}, "message": {"type": "string"},
        "transient": {"type": "boolean", "description": "true: try again later."}},
        "required": ["class", "message", "transient"]}},
    "required": ["error"],
}


def channel_id(subject: str) -> str:
    """A component-safe name for a subject (`{x}` loses its braces, `*` and `>` are spelt out)."""
    return subject.replace("{", "").replace("}", "").replace("*", "any").replace(">", "all")


def _param(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def _address(subject: str) -> tuple[str, dict[str, Any]]:
    """The channel address (parameters named AsyncAPI's way) and its parameters."""
    params = {_param(p): {"description": f"From the payload field `{p}` (lower-cased)."} for p in placeholders(subject)}
    return _PLACEHOLDER.sub(lambda m: "{" + _param(m.group(1)) + "}", subject), params


class _Builder:
    def __init__(self, project: Project) -> None:
        self.project = project
        self.flows = read_project(project)
        self.channels: dict[str, Any] = {}
        self.messages: dict[str, Any] = {}
        self.schemas: dict[str, Any] = {"CloudEventsHeaders": CLOUDEVENTS_HEADERS,
                                        "DeadLetterHeaders": DEAD_LETTER_HEADERS, "ErrorReply": ERROR_REPLY}
        self.operations: dict[str, Any] = {}

    def _schema_ref(self, name: str) -> dict[str, str]:
        if name not in self.schemas:
            schema = resolve_schema(name).model_json_schema(ref_template="#/components/schemas/{model}")
            for sub, body in schema.pop("$defs", {}).items():
                self.schemas.setdefault(sub, body)
            self.schemas[name] = schema
        return {"$ref": f"#/components/schemas/{name}"}

    def _payload_for(self, subject: str) -> tuple[dict[str, Any], str]:
        """(payload schema, content type) of a subject, from a consuming flow's `schema:` when one declares it."""
        if subject.startswith("dlq."):
            return {"description": "The failed message's payload, byte for byte."}, "application/octet-stream"
        if subject.startswith(INGRESS_SUBJECT_PREFIX + "."):
            return ({"type": "string", "format": "binary", "description": "What arrived from outside, as it came "
                     "(a raw mail, a file's notice, a webhook item)."}, "application/octet-stream")
        for fs in self.flows:
            if fs.schema and fs.consumes and (fs.consumes == subject or (
                    not placeholders(subject) and pattern_covers(fs.consumes, subject))):
                return self._schema_ref(fs.schema), "application/json"
        return {"type": "object", "description": "JSON; no flow declares a schema for it."}, "application/json"

    def channel(self, subject: str, description: str = "") -> str:
        cid = channel_id(subject)
        if cid in self.channels:
            return cid
        address, params = _address(subject)
        payload, content_type = self._payload_for(subject)
        headers = {"$ref": "#/components/schemas/DeadLetterHeaders" if subject.startswith("dlq.")
                   else "#/components/schemas/CloudEventsHeaders"}
        self.messages[cid] = {"name": cid, "title": subject, "contentType": content_type, "headers": headers,
                              "payload": payload,
                              "correlationId": {"location": f"$message.header#/{CE_CORRELATION}",
                                                "description": "Carried from input to every output."}}
        channel: dict[str, Any] = {"address": address, "messages": {cid: {"$ref": f"#/components/messages/{cid}"}}}
        if params:
            channel["parameters"] = params
        if description:
            channel["description"] = description
        self.channels[cid] = channel
        return cid

    def _ref(self, cid: str) -> dict[str, Any]:
        return {"channel": {"$ref": f"#/channels/{cid}"}, "messages": [{"$ref": f"#/channels/{cid}/messages/{cid}"}]}

    def flow(self, fs: FlowSubjects) -> None:
        name, flow = fs.flow.name, fs.flow
        summary = " ".join((flow.description or "").split())
        assert fs.consumes is not None
        if fs.kind == "request":
            cid = self.channel(fs.consumes, "Request/reply (core NATS): the requester waits for the answer.")
            reply = f"{cid}.reply"
            self.messages[reply] = {"name": reply, "title": f"answer on {fs.consumes}", "contentType": "application/json",
                                    "payload": {"oneOf": [{"type": "object", "description": "The flow's answer."},
                                                          {"$ref": "#/components/schemas/ErrorReply"}]}}
            self.channels[reply] = {"address": None, "description": "The requester's inbox (its NATS reply subject).",
                                    "messages": {reply: {"$ref": f"#/components/messages/{reply}"}}}
            op = {"action": "receive", **self._ref(cid), "summary": f"flow {name}", "description": summary,
                  "reply": {"channel": {"$ref": f"#/channels/{reply}"},
                            "messages": [{"$ref": f"#/channels/{reply}/messages/{reply}"}]}}
        else:
            note = {"schedule": "Ticks of the flow's schedule, stored so any runner may run them.",
                    "ingress": "What the flow's ingress source stored before acknowledging it outside."}.get(fs.kind, "")
            cid = self.channel(fs.consumes, note)
            op = {"action": "receive", **self._ref(cid), "summary": f"flow {name} (durable consumer {name})",
                  "description": summary}
        self.operations[f"{name}.receive"] = {k: v for k, v in op.items() if v != ""}
        for pub in fs.publishes:
            cid = self.channel(pub.subject)
            what = {"publish": f"{pub.step}: publish", "item": f"{pub.step}: one message per pulled item",
                    "dead-letter": "a message the flow gave up on, with the reason",
                    "alert": "alert events (firing, resolved)"}.get(pub.how, f"{pub.step} ({pub.how})")
            key = f"{name}.send.{cid}"
            if key not in self.operations:
                self.operations[key] = {"action": "send", **self._ref(cid), "summary": f"flow {name}: {what}"}

    def status_subject(self) -> None:
        subject = self.project.config.ops.status_subject
        cid = channel_id(subject)
        self.channels[cid] = {"address": subject, "description": "Every runner answers with its own report "
                              "(`runner.py status` gathers them): core NATS, not stored.",
                              "messages": {cid: {"$ref": f"#/components/messages/{cid}"}}}
        self.messages[cid] = {"name": cid, "title": "status request", "payload": {"type": "null"}}
        reply = f"{cid}.reply"
        self.channels[reply] = {"address": None, "description": "The asker's inbox.",
                                "messages": {reply: {"$ref": f"#/components/messages/{reply}"}}}
        self.messages[reply] = {"name": reply, "title": "a runner's report", "contentType": "application/json",
                                "payload": {"type": "object", "required": ["runner", "ready", "flows"],
                                            "description": "engine/operations.Operations.report"}}
        self.operations["runner.status"] = {
            "action": "receive", **self._ref(cid), "summary": "each runner reports its state",
            "reply": {"channel": {"$ref": f"#/channels/{reply}"},
                      "messages": [{"$ref": f"#/channels/{reply}/messages/{reply}"}]}}


def _servers(project: Project) -> dict[str, Any]:
    urls = project.config.nats.urls
    if not urls:
        return {"embedded": {"host": "127.0.0.1", "protocol": "nats",
                             "description": "The runner's embedded nats-server (its URL is in <data_dir>/hub.url "
                             "while it runs)."}}
    out = {}
    for i, url in enumerate(urls, 1):
        scheme, _, rest = url.partition("://")
        out[f"nats{i}"] = {"host": rest or url, "protocol": scheme if rest else "nats"}
    return out


def asyncapi_document(project: Project) -> dict[str, Any]:
    b = _Builder(project)
    for fs in b.flows:
        b.flow(fs)
    b.status_subject()
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "PLU integration hub", "version": VERSION,
                 "description": "Every subject the hub's flows consume and publish (generated by `runner.py docs` "
                 "from flows/ and config; do not edit). Messages are JSON with CloudEvents headers unless said "
                 "otherwise; each flow reads its subject through a durable JetStream consumer named after it. "
                 "Subjects of the hub's own: " + f"`{SCHEDULE_SUBJECT_PREFIX}.<flow>` (schedule ticks), "
                 f"`{INGRESS_SUBJECT_PREFIX}.<flow>` (ingress), `dlq.<flow>`, `ops.alert.<flow>`."},
        "defaultContentType": "application/json",
        "servers": _servers(project),
        "channels": dict(sorted(b.channels.items())),
        "operations": dict(sorted(b.operations.items())),
        "components": {"schemas": dict(sorted(b.schemas.items())), "messages": dict(sorted(b.messages.items()))},
    }


def subjects_of(document: dict[str, Any]) -> set[str]:
    """The addresses in a document (for tests and the landscape)."""
    return {c["address"] for c in document["channels"].values() if c.get("address")}

