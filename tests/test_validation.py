"""Validation errors name the file, the line and the path, for every kind of mistake."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.durations import parse_duration, parse_rate
from engine.errors import ConfigError
from engine.subjects import patterns_overlap, pattern_covers, render, subject_problem
from engine.validation import flow_files, load_project

CONFIG = """\
streams:
  - {name: CRM, subjects: ["crm.>"]}
  - {name: ERP, subjects: ["erp.>"]}
endpoints:
  crm_api: {adapter: http, base_url: "http://127.0.0.1:9", path: /x}
  erp_de: {adapter: http, base_url: "http://127.0.0.1:9"}
  erp_fr: {adapter: http, base_url: "http://127.0.0.1:9"}
"""

GOOD_FLOW = """\
name: good
source: {subject: crm.contract.signed}
schema: ContractSigned
steps:
  - filter: "country != 'BE'"
  - transform: contracts.to_switch_request
  - call: {endpoint: "erp_{country}", timeout: 5s}
  - publish: erp.contract.switch-requested
"""


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp: Path, flow_text: str, config_text: str = CONFIG) -> list[str]:
    config = write(tmp, "env.yaml", config_text)
    flow = write(tmp, "flow.yaml", flow_text)
    with pytest.raises(ConfigError) as info:
        load_project(config, [flow])
    return info.value.issues


def test_a_good_flow_loads(tmp_path: Path) -> None:
    """A correct flow and config load into a project with the flow's steps."""
    project = load_project(write(tmp_path, "env.yaml", CONFIG), [write(tmp_path, "f.yaml", GOOD_FLOW)])
    assert [lf.flow.name for lf in project.flows] == ["good"]
    assert len(project.flows[0].flow.steps) == 4


@pytest.mark.parametrize("replace,expected", [
    ("timeout: 5s", "flow.yaml:7: steps[2].call.timeout: expected a duration"),
    ("schema: ContractSigned", "flow.yaml:3: schema: unknown schema 'ContractSignd'"),
    ("transform: contracts.to_switch_request", "flow.yaml:6: steps[1].transform: unknown transform"),
    ('endpoint: "erp_{country}"', "flow.yaml:7: steps[2].call.endpoint: unknown endpoint 'billing_{country}'"),
    ("publish: erp.contract.switch-requested", "flow.yaml:8: steps[3].publish.subject: malformed subject 'erp.Contract'"),
    ("subject: crm.contract.signed", "flow.yaml:2: source.subject: no stream in config captures 'billing.x'"),
    ("filter: \"country != 'BE'\"", "flow.yaml:5: steps[0].filter: not a valid JMESPath expression"),
])
def test_each_kind_of_mistake_names_file_line_and_path(tmp_path: Path, replace: str, expected: str) -> None:
    """Each mistake is reported as file:line: path: reason."""
    broken = {
        "timeout: 5s": "timeout: 5 seconds",
        "schema: ContractSigned": "schema: ContractSignd",
        "transform: contracts.to_switch_request": "transform: contracts.nope",
        'endpoint: "erp_{country}"': 'endpoint: "billing_{country}"',
        "publish: erp.contract.switch-requested": "publish: erp.Contract",
        "subject: crm.contract.signed": "subject: billing.x",
        "filter: \"country != 'BE'\"": "filter: \"country != \"",
    }[replace]
    found = problems(tmp_path, GOOD_FLOW.replace(replace, broken))
    assert any(expected in p for p in found), found


def test_unknown_keys_are_errors_with_their_line(tmp_path: Path) -> None:
    """A typo in a key is an error, not silently ignored."""
    found = problems(tmp_path, GOOD_FLOW + "on_error: {retry: [1s], retires: 3}\n")
    assert any("flow.yaml:9: on_error.retires: unknown key" in p for p in found), found


def test_a_step_must_be_exactly_one_kind(tmp_path: Path) -> None:
    found = problems(tmp_path, GOOD_FLOW + "  - enrich: foo\n")
    assert any("flow.yaml:9: steps[4]: a step is exactly one of" in p for p in found), found


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    found = problems(tmp_path, "name: x\nsource: {subject: crm.a\nsteps: []\n")
    assert len(found) == 1 and "flow.yaml:3:" in found[0] and "not valid YAML" in found[0]


def test_duplicate_keys_are_caught(tmp_path: Path) -> None:
    """YAML would silently keep the last of two equal keys; we refuse."""
    found = problems(tmp_path, GOOD_FLOW + "name: other\n")
    assert any("flow.yaml:9: name: duplicate key" in p for p in found), found


def test_two_flows_cannot_share_a_durable(tmp_path: Path) -> None:
    config = write(tmp_path, "env.yaml", CONFIG)
    a, b = write(tmp_path, "a.yaml", GOOD_FLOW), write(tmp_path, "b.yaml", GOOD_FLOW)
    with pytest.raises(ConfigError) as info:
        load_project(config, [a, b])
    assert any("b.yaml:1: name: flow name 'good' is already used by" in p and "a.yaml" in p for p in info.value.issues)


def test_reply_needs_a_request_source(tmp_path: Path) -> None:
    found = problems(tmp_path, GOOD_FLOW + "  - reply\n")
    assert any("steps[4].reply: `reply` needs a request source" in p for p in found), found


def test_a_request_subject_a_stream_captures_is_refused(tmp_path: Path) -> None:
    """JetStream would answer such requests itself (a publish ack) before the flow could."""
    flow = "name: q\nsource: {request: crm.quote}\nsteps:\n  - reply\n"
    found = problems(tmp_path, flow)
    assert any("flow.yaml:2: source.request: stream CRM captures 'crm.quote'" in p for p in found), found


def test_request_source_needs_a_reply(tmp_path: Path) -> None:
    flow = "name: q\nsource: {request: tariff.quote}\nsteps:\n  - transform: readings.passthrough\n"
    found = problems(tmp_path, flow)
    assert any("flow.yaml:3: steps: a request source needs a `reply` step" in p for p in found), found


def test_config_errors_name_the_endpoint_field(tmp_path: Path) -> None:
    """Endpoint keys are checked by the adapter's own model; unknown adapters are named."""
    bad = CONFIG.replace("path: /x}", "path: /x, timeout: soon}") + "  odd: {adapter: carrier-pigeon}\n"
    found = problems(tmp_path, GOOD_FLOW, bad)
    assert any("env.yaml:5: endpoints.crm_api.timeout: expected a duration" in p for p in found), found
    assert any("env.yaml:8: endpoints.odd.adapter: unknown adapter 'carrier-pigeon'" in p for p in found), found


def test_overlapping_streams_are_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, GOOD_FLOW, CONFIG.replace('["erp.>"]', '["erp.>", "crm.contract.*"]'))
    assert any("streams[1].subjects: subject 'crm.contract.*' overlaps 'crm.>'" in p for p in found), found


def test_env_references_in_config_must_be_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HUB_TEST_UNSET", raising=False)
    found = problems(tmp_path, GOOD_FLOW, CONFIG.replace('"http://127.0.0.1:9", path', '"${HUB_TEST_UNSET}", path'))
    assert any("env.yaml:5: endpoints.crm_api.base_url: environment variable HUB_TEST_UNSET is not set" in p
               for p in found), found


@pytest.mark.parametrize("text,seconds", [("200ms", 0.2), ("5s", 5), ("1.5m", 90), ("2h", 7200), ("7d", 604800)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["30", "5 seconds", "", "-1s", "1w"])
def test_durations_without_a_known_unit_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_rates() -> None:
    assert parse_rate("50/s") == 50
    assert parse_rate("250000/h") == pytest.approx(69.44, rel=1e-3)
    with pytest.raises(ValueError):
        parse_rate("fast")


def test_subject_rules() -> None:
    assert subject_problem("crm.contract.signed") is None
    assert "lower-case" in (subject_problem("crm.Contract") or "")
    assert subject_problem("meter.reading.*") is not None
    assert subject_problem("meter.reading.*", pattern=True) is None
    assert subject_problem("$JS.API.x") is not None
    assert subject_problem("erp.contract.{country}", template=True) is None
    assert pattern_covers("crm.>", "crm.contract.*") and not pattern_covers("crm.*", "crm.a.b")
    assert patterns_overlap("crm.>", "crm.contract.*") and not patterns_overlap("crm.a", "erp.a")
    assert render("erp.{country}.{site.id}", {"country": "DE", "site": {"id": "S1"}}) == "erp.de.s1"


def test_the_committed_flow_reference_is_current() -> None:
    """docs/ is generated from the models; regenerate with `runner.py docs` when this fails."""
    from engine.docs import reference

    root = Path(__file__).resolve().parents[1]
    project = load_project(root / "config" / "sandbox.yaml", flow_files(root / "flows"))  # for its landscape
    assert (root / "docs" / "flow-reference.md").read_text(encoding="utf-8") == reference(project)


WEBHOOK_FLOW = """\
name: {name}
source:
  webhook: {{path: /hooks/readings, token: {{env: HOOK_TOKEN}}}}
steps:
  - publish: crm.reading.pushed
"""


def test_two_webhook_flows_cannot_share_a_path(tmp_path: Path) -> None:
    """The second flow on one path is refused at load, naming the first (the runner's server would refuse to start)."""
    config = write(tmp_path, "env.yaml", CONFIG)
    first, second = (write(tmp_path, f"{n}.yaml", WEBHOOK_FLOW.format(name=n)) for n in ("hook-a", "hook-b"))
    with pytest.raises(ConfigError) as info:
        load_project(config, [first, second])
    [issue] = info.value.issues
    assert issue.startswith(f"{second}:3: source.webhook.path:") and "already served by flow hook-a" in issue


def test_an_hmac_window_longer_than_the_ingress_duplicate_window_is_refused(tmp_path: Path) -> None:
    flow = WEBHOOK_FLOW.format(name="hook").replace("token: {env: HOOK_TOKEN}", "hmac: {secret: {env: S}, max_age: 2h}")
    [issue] = problems(tmp_path, flow)
    assert ":3: source.webhook.hmac.max_age:" in issue and "duplicate window" in issue


BATCH_FLOW = """\
name: month-batches
source:
  batch:
    subject: {subject}
    size: 100
    within: 1m
steps:
  - publish: crm.batch.ready
"""


def test_a_batch_source_whose_subject_no_stream_captures_is_refused_at_its_line(tmp_path: Path) -> None:
    """`validate` names the batch subject no stream captures (file:line: source.batch.subject), as the hub
    would refuse to start the flow; a captured one loads."""
    [issue] = problems(tmp_path, BATCH_FLOW.format(subject="meter.month.completed"))
    assert issue.startswith(f"{tmp_path / 'flow.yaml'}:4: source.batch.subject: no stream in config captures "
                            "'meter.month.completed'"), issue
    project = load_project(write(tmp_path, "env.yaml", CONFIG),
                           [write(tmp_path, "ok.yaml", BATCH_FLOW.format(subject="crm.month.>"))])
    assert [lf.flow.name for lf in project.flows] == ["month-batches"]
