"""Unknown outcomes (issue 12, item 7): a create the target does not deduplicate is never resent
blindly after its answer was lost; a `verify` decides, or ops get an OutcomeUnknown record."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from engine.errors import ConfigError, TargetUnavailable, may_have_taken_effect
from engine.validation import load_project
from tests.helpers import StreamReader, project_from, settled, started_hub, wait_until
from sandbox.fault_targets import CreateTarget

VERIFY = '{operation: find, input: lookup, done: "found", not_done: "!found"}'


def config(u: str, url: str, extra: str = "") -> str:
    return f"""
    streams:
      - {{name: IN{u}, subjects: ["{u}.in.>"]}}
      - {{name: OUT{u}, subjects: ["{u}.out.>"]}}
    endpoints:
      erp:
        adapter: http
        base_url: "{url}"
        timeout: 400ms
        circuit_breaker: null
        idempotent: {{create: false}}     # SAP-like: ignores Idempotency-Key
        operations:
          create: {{method: POST, path: /switches}}
          find: {{method: GET, path: /switches}}
      {extra}
    """


def flow(u: str, verify: str | None = VERIFY, after: str = "") -> str:
    option = f", verify: {verify}" if verify else ""
    return f"""
    name: {u}
    source: {{subject: {u}.in.x}}
    steps:
      - call: {{endpoint: erp, operation: create, input: request, into: created{option}}}
      {after}
      - publish: {u}.out.x
    on_error: {{retry: [20ms, 20ms], redeliver: [200ms, 200ms, 200ms], jitter: 0}}
    """


async def send(js, u: str, key: str) -> None:
    body = {"request": {"key": key, "tariff": "green"}, "lookup": {"key": key}}
    await js.publish(f"{u}.in.x", json.dumps(body).encode(), headers={"ce-id": f"msg-{key}"})


async def test_a_create_that_times_out_once_is_made_once_via_verify(tmp_path: Path, nats_url: str, js, unique: str):
    """The ERP makes the switch but its answer is lost (timeout): the hub does not send it again; the
    lookup finds it, its answer stands in for the lost one, and the flow goes on. One create."""
    async with CreateTarget() as erp:
        erp.plan = ["lost"]
        hub = await started_hub(project_from(tmp_path, config(unique, erp.url), flow(unique)), nats_url)
        try:
            out = await StreamReader.open(js, f"{unique}.out.x")
            await send(js, unique, "S-1")
            result = (await out.wait_for(1))[0]
            assert json.loads(result.data)["created"]["found"] is True
            assert erp.creates("S-1") == 1 and erp.posts == 1 and erp.lookups == 1
            await wait_until(lambda: settled(js, f"IN{unique}", unique))
            assert hub.runners[unique].failures.dead_lettered == 0
        finally:
            await hub.stop()


async def test_without_verify_a_lost_answer_goes_to_the_dlq_as_outcome_unknown(
        tmp_path: Path, nats_url: str, js, unique: str):
    """No verify: not resent (not in-process, not redelivered); the DLQ record says OutcomeUnknown with
    the endpoint, operation and idempotency key ops reconcile by."""
    async with CreateTarget() as erp:
        erp.plan = ["lost"]
        hub = await started_hub(project_from(tmp_path, config(unique, erp.url), flow(unique, verify=None)), nats_url)
        try:
            dlq = await StreamReader.open(js, f"dlq.{unique}")
            await send(js, unique, "S-2")
            record = (await dlq.wait_for(1))[0]
            h = record.headers
            assert h["Hub-Dlq-Error-Class"] == "OutcomeUnknown" and h["Hub-Dlq-Transient"] == "false"
            assert "erp: create" in h["Hub-Dlq-Error"] and "msg-S-2" in h["Hub-Dlq-Error"]
            assert "not sent again" in h["Hub-Dlq-Error"] and h["Hub-Dlq-Calls"] == "1"
            assert erp.posts == 1 and erp.creates("S-2") == 1
        finally:
            await hub.stop()


async def test_a_create_verified_not_done_is_sent_again_once(tmp_path: Path, nats_url: str, js, unique: str):
    """The request timed out before the ERP applied it: the lookup says not done, so sending it again
    is safe, and it is made once."""
    async with CreateTarget() as erp:
        erp.plan = ["unapplied"]
        hub = await started_hub(project_from(tmp_path, config(unique, erp.url), flow(unique)), nats_url)
        try:
            out = await StreamReader.open(js, f"{unique}.out.x")
            await send(js, unique, "S-3")
            result = json.loads((await out.wait_for(1))[0].data)
            assert result["created"]["status"] == "CREATED"
            assert erp.posts == 2 and erp.creates("S-3") == 1
        finally:
            await hub.stop()


async def test_a_verify_that_cannot_tell_yet_is_asked_again_on_redelivery_never_resent(
        tmp_path: Path, nats_url: str, js, unique: str):
    """The lookup itself fails: the message waits (VerifyPending) and, redelivered, verifies first
    instead of creating again; the record is found and the flow completes. One create."""
    async with CreateTarget() as erp:
        erp.plan = ["lost"]
        erp.lookup_failures = 1
        hub = await started_hub(project_from(tmp_path, config(unique, erp.url), flow(unique)), nats_url)
        try:
            out = await StreamReader.open(js, f"{unique}.out.x")
            await send(js, unique, "S-4")
            await out.wait_for(1)
            assert erp.posts == 1 and erp.creates("S-4") == 1 and erp.lookups == 2
            assert hub.runners[unique].failures.redelivered == 1
        finally:
            await hub.stop()


async def test_a_create_that_succeeded_is_not_sent_again_when_a_later_step_fails(
        tmp_path: Path, nats_url: str, js, unique: str):
    """The create answered; the next call fails and the message is redelivered: the kept answer is
    used, the create is not made a second time."""
    async with CreateTarget() as erp, CreateTarget() as notify:
        notify.lookup_failures = 1  # the notification endpoint fails once
        extra = (f'notify: {{adapter: http, base_url: "{notify.url}", method: GET, path: /switches, '
                 'circuit_breaker: null}')
        after = "- call: {endpoint: notify, input: lookup, into: notified}"
        project = project_from(tmp_path, config(unique, erp.url, extra), flow(unique, after=after))
        hub = await started_hub(project, nats_url)
        try:
            out = await StreamReader.open(js, f"{unique}.out.x")
            await send(js, unique, "S-5")
            result = json.loads((await out.wait_for(1))[0].data)
            assert result["created"]["status"] == "CREATED" and "notified" in result
            assert erp.posts == 1 and erp.creates("S-5") == 1 and notify.lookups == 2
        finally:
            await hub.stop()


async def test_a_refused_connection_sent_nothing_and_is_retried_as_any_call(tmp_path: Path, nats_url: str, js,
                                                                            unique: str):
    """Nothing listens: the adapter says nothing was sent, so the non-idempotent create is retried on its
    schedule and ends as TargetUnavailable with no call counted, never as OutcomeUnknown."""
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    hub = await started_hub(project_from(tmp_path, config(unique, closed), flow(unique)), nats_url)
    try:
        dlq = await StreamReader.open(js, f"dlq.{unique}")
        await send(js, unique, "S-6")
        h = (await dlq.wait_for(1))[0].headers
        assert h["Hub-Dlq-Error-Class"] == "TargetUnavailable"
        assert h["Hub-Dlq-Calls"] == "0" and h["Hub-Dlq-Deliveries"] == "4"
        assert len(json.loads(h["Hub-Dlq-History"])) == 12  # 4 deliveries x 3 attempts, each one entry
    finally:
        await hub.stop()
    assert not may_have_taken_effect(TargetUnavailable("refused", sent=False))


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(("verify", "endpoint_extra", "expected"), [
    ('{operation: find, done: "found", not_done: "!found"}', "idempotent: true",
     "verify is only used for a non-idempotent operation"),
    ('{operation: lookup_switch, done: "found", not_done: "!found"}', "idempotent: {create: false}",
     "has no operation 'lookup_switch'"),
    ('{operation: find, done: "found ==", not_done: "!found"}', "idempotent: {create: false}",
     "not a valid JMESPath expression"),
])
def test_a_bad_verify_is_reported_with_file_line_and_path(tmp_path: Path, verify: str, endpoint_extra: str,
                                                          expected: str) -> None:
    """`runner.py validate` names the flow file, the line and steps[0].call.verify…"""
    cfg = write(tmp_path, "config.yaml", f"""
        streams:
          - {{name: IN, subjects: ["v.in.>"]}}
        endpoints:
          erp:
            adapter: http
            base_url: "http://127.0.0.1:9"
            {endpoint_extra}
            operations: {{create: {{method: POST, path: /s}}, find: {{method: GET, path: /s}}}}
        """)
    flow_file = write(tmp_path, "f.yaml", f"""
        name: v
        source: {{subject: v.in.x}}
        steps:
          - call:
              endpoint: erp
              operation: create
              verify: {verify}
        """)
    with pytest.raises(ConfigError) as caught:
        load_project(cfg, [flow_file])
    issue = next(i for i in caught.value.issues if expected in i)
    assert issue.startswith(f"{flow_file}:8: steps[0].call.verify")


def test_an_idempotent_map_naming_an_unknown_operation_is_an_error(tmp_path: Path) -> None:
    """A typo in `idempotent: {…}` would leave a create resent blindly: config:line says so."""
    cfg = write(tmp_path, "config.yaml", """
        endpoints:
          erp:
            adapter: http
            base_url: "http://127.0.0.1:9"
            operations: {create: {method: POST, path: /s}}
            idempotent: {craete: false}
        """)
    with pytest.raises(ConfigError) as caught:
        load_project(cfg, [])
    assert any(i.startswith(f"{cfg}:7: endpoints.erp.idempotent.craete") and "craete" in i
               for i in caught.value.issues), caught.value.issues
