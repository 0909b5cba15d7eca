"""What `runner.py docs` writes for other systems and for ops: the AsyncAPI 3.0 document (valid
against the published JSON Schema, every subject of the flows in it), the landscape, the Grafana
dashboard (naming only metrics that exist), all as committed in docs/."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from engine.asyncapi import asyncapi_document, channel_id
from engine.docs import documents
from engine.grafana import dashboard, expressions
from engine.landscape import landscape, unmatched
from engine.metrics import CATALOGUE
from engine.spec import CallStep, PublishStep, PullStep
from engine.validation import flow_files, load_project

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "tests" / "data" / "asyncapi" / "3.0.0-without-id.schema.json"


@pytest.fixture(scope="module")
def project() -> Any:
    return load_project(ROOT / "config" / "sandbox.yaml", flow_files(ROOT / "flows"))


@pytest.fixture(scope="module")
def document(project: Any) -> dict[str, Any]:
    return asyncapi_document(project)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_the_committed_documents_are_current(project: Any):
    """docs/ holds exactly what `runner.py docs` writes for the shipped config and flows (run it when this fails)."""
    for name, text in documents(project).items():
        assert (ROOT / "docs" / name).read_text(encoding="utf-8") == text, f"docs/{name} is stale: run runner.py docs"


def test_the_asyncapi_document_is_valid_asyncapi_3(document: dict[str, Any], validator: Any):
    """The document validates against the AsyncAPI Initiative's published 3.0.0 JSON Schema, and the
    same validator refuses a document with an operation that is neither send nor receive."""
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(document)]
    assert errors == []
    broken = copy.deepcopy(document)
    next(iter(broken["operations"].values()))["action"] = "publish"  # AsyncAPI 2's word, not 3's
    assert list(validator.iter_errors(broken))


def _resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_reference_in_the_document_resolves(document: dict[str, Any]):
    """Each $ref points at something in the document (the JSON Schema cannot check that)."""
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(document)
    assert len(refs) > 100
    for ref in refs:
        _resolve(document, ref)


def test_every_subject_a_flow_consumes_or_publishes_is_a_channel(project: Any, document: dict[str, Any]):
    """Read from the flow files themselves: each source subject and each publish (and pull item)
    subject is a channel, received or sent by an operation of that flow; templated subjects carry
    their parameters; dead letters have the DLQ headers."""
    channels = document["channels"]
    operations = document["operations"]
    for lf in project.flows:
        flow = lf.flow
        consumed = flow.consumed_subject or flow.source.request  # type: ignore[union-attr]
        op = operations[f"{flow.name}.receive"]
        assert op["action"] == "receive" and op["channel"]["$ref"] == f"#/channels/{channel_id(consumed)}"
        published = [s.publish.subject for s in flow.steps if isinstance(s, PublishStep)]
        published += [s.pull.publish for s in flow.steps if isinstance(s, PullStep)]
        for subject in published:
            cid = channel_id(subject)
            assert channels[cid]["address"].replace("_", ".") == subject.replace("_", ".")
            assert operations[f"{flow.name}.send.{cid}"]["action"] == "send"
            for name in re.findall(r"\{([^}]*)\}", subject):
                assert name.replace(".", "_") in channels[cid]["parameters"]
        if not flow.is_request:
            dlq = document["components"]["messages"][channel_id(f"dlq.{flow.name}")]
            assert dlq["headers"] == {"$ref": "#/components/schemas/DeadLetterHeaders"}


def test_payloads_headers_and_request_reply(document: dict[str, Any]):
    """A subject a flow validates carries that schema; messages carry CloudEvents headers and the
    correlation id; tariff.quote is a request with its reply (the answer or the structured error)."""
    messages = document["components"]["messages"]
    assert messages["crm.contract.signed"]["payload"] == {"$ref": "#/components/schemas/ContractSigned"}
    assert document["components"]["schemas"]["ContractSigned"]["required"][:2] == ["contract_id", "account_id"]
    assert messages["erp.contract.switched"]["headers"] == {"$ref": "#/components/schemas/CloudEventsHeaders"}
    assert messages["erp.contract.switched"]["correlationId"]["location"] == "$message.header#/ce-correlationid"
    quote = document["operations"]["tariff-quote.receive"]
    assert quote["reply"]["channel"] == {"$ref": "#/channels/tariff.quote.reply"}
    assert document["channels"]["tariff.quote.reply"]["address"] is None
    assert {"$ref": "#/components/schemas/ErrorReply"} in messages["tariff.quote.reply"]["payload"]["oneOf"]


def test_the_landscape_joins_systems_endpoints_flows_and_subjects(project: Any):
    """The diagram draws the CRM on its subjects, the ERPs behind their endpoints, the flows between,
    and every system pattern in config names something."""
    text = landscape(project)
    assert text.startswith("flowchart LR")
    for edge in ("sy_CRM__Salesforce_ -.- su_crm_contract_signed",
                 "su_crm_contract_signed --> fl_contract_switch_request",
                 "fl_contract_switch_request -->|call| ep_erp_de",
                 "sy_Country_ERPs --- ep_erp_de",
                 "fl_contract_switch_track --> su_erp_contract__outcome_",
                 "su_erp_contract__outcome_ -.-> su_erp_contract_switched",
                 "ep__webhooks_vendor3_readings -->|webhook| fl_meter_vendor3_push",
                 "sy_Website -.- su_tariff_quote"):
        assert edge in text, edge
    for lf in project.flows:  # every flow is drawn, every call has its edge
        assert f"fl_{re.sub('[^A-Za-z0-9]', '_', lf.flow.name)}([" in text
        for step in lf.flow.steps:
            if isinstance(step, CallStep) and "{" not in step.call.endpoint:
                assert f"-->|call| ep_{step.call.endpoint}" in text
    assert "dlq_" not in text  # the hub's own plumbing stays out
    assert unmatched(project) == []
    assert "```mermaid\n" + text + "\n```" in (ROOT / "docs" / "flow-reference.md").read_text(encoding="utf-8")


def test_the_dashboard_charts_only_metrics_the_runners_expose():
    """Every metric name in the dashboard's queries is one the runners serve (or prometheus-client's
    process metrics), and every flow-level metric family is charted somewhere."""
    board = dashboard()
    exposed = set(CATALOGUE)
    for name, (kind, _, _) in CATALOGUE.items():
        if kind == "histogram":
            exposed |= {name + "_bucket", name + "_sum", name + "_count"}
    used = set()
    for expr in expressions(board):
        used |= set(re.findall(r"\b((?:hub|process)_[a-z_]+)\b", expr))
    assert used - exposed <= {"process_cpu_seconds_total", "process_resident_memory_bytes"}
    charted = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    missing = {n for n in CATALOGUE if n.startswith("hub_flow_") and n not in charted}
    assert missing == set()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in board["panels"])


def test_a_nats_endpoint_a_flow_calls_is_a_channel_it_sends_to(tmp_path: Path):
    """A `call` to a `nats` endpoint (request/reply to another service on the bus) shows up as a send
    operation of that flow on the endpoint's subject."""
    from tests.helpers import project_from

    project = project_from(tmp_path, """
    streams:
      - {name: NA, subjects: ["na.>"]}
    endpoints:
      bridge: {adapter: nats, subject: "crm.bridge.{kind}", mode: request}
    """, """
    name: na-ask
    source: {subject: na.in}
    steps:
      - call: {endpoint: bridge}
    """)
    document = asyncapi_document(project)
    op = document["operations"]["na-ask.send.crm.bridge.kind"]
    assert op["action"] == "send" and "endpoint bridge" in op["summary"]
    assert document["channels"]["crm.bridge.kind"]["parameters"] == {
        "kind": {"description": "From the payload field `kind` (lower-cased)."}}
