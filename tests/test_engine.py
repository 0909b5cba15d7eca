"""The engine end to end against a real nats-server: steps, headers, acks, failures, shutdown."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import nats

from engine.messages import CE_CORRELATION, event_headers
from engine.streams import ensure_streams
from sandbox.http_sink import HttpSink
from tests.helpers import StreamReader, project_from, settled, started_hub, wait_until


def config_for(u: str, extra: str = "") -> str:
    return f"""
    streams:
      - {{name: IN{u}, subjects: ["{u}.in.>"]}}
      - {{name: OUT{u}, subjects: ["{u}.out.>"]}}
    {extra}
    """


def contract(country: str, n: int = 1) -> dict:
    return {"contract_id": f"C{n}", "account_id": "A1", "country": country, "tariff_code": "T1",
            "signed_on": "2026-11-20", "sites": [{"site_id": "S1", "postcode": "1000", "city": "Liège"}]}


async def test_a_flow_filters_validates_transforms_and_publishes(tmp_path: Path, nats_url: str, js, unique: str):
    """Valid messages come out transformed with CloudEvents headers and the input's correlation id;
    filtered ones are acked and vanish; nothing stays unacked."""
    project = project_from(tmp_path, config_for(unique), f"""
        name: {unique}
        source: {{subject: {unique}.in.contract}}
        schema: ContractSigned
        steps:
          - filter: "country != 'BE'"
          - transform: contracts.to_switch_request
          - publish: {unique}.out.switch.{{country}}
    """)
    hub = await started_hub(project, nats_url)
    out = await StreamReader.open(js, f"{unique}.out.>")
    try:
        for n, country in enumerate(["DE", "BE", "FR"]):
            await js.publish(f"{unique}.in.contract", json.dumps(contract(country, n)).encode(),
                             headers=event_headers("/test", "t", correlation_id=f"corr-{n}"))
        msgs = await out.wait_for(2)
        assert sorted(m.subject for m in msgs) == [f"{unique}.out.switch.de", f"{unique}.out.switch.fr"]
        by_country = {json.loads(m.data)["country"]: m for m in msgs}
        assert json.loads(by_country["DE"].data)["request_key"] == "C0:v1"
        assert by_country["DE"].headers[CE_CORRELATION] == "corr-0"
        assert by_country["FR"].headers[CE_CORRELATION] == "corr-2"
        for m in msgs:
            h = m.headers
            assert h["ce-specversion"] == "1.0" and h["ce-source"] == f"/plu-hub/flows/{unique}"
            assert h["Nats-Msg-Id"] == h["ce-id"] and uuid.UUID(h["ce-id"])
            assert h["traceparent"].startswith("00-")

        async def all_acked() -> bool:
            info = await js.consumer_info(f"IN{unique}", unique)
            return info.num_ack_pending == 0 and info.num_pending == 0 and info.delivered.stream_seq == 3

        await wait_until(all_acked)
        assert hub.runners[unique].stats.filtered == 1
    finally:
        await hub.stop()


async def test_broken_payloads_go_to_the_dlq_with_the_reason_and_the_flow_keeps_going(
        tmp_path: Path, nats_url: str, js, unique: str):
    """Not JSON, or failing the schema: a DLQ record naming the problem; later messages still flow."""
    project = project_from(tmp_path, config_for(unique), f"""
        name: {unique}
        source: {{subject: {unique}.in.contract}}
        schema: ContractSigned
        steps:
          - publish: {unique}.out.ok
    """)
    hub = await started_hub(project, nats_url)
    dlq = await StreamReader.open(js, f"dlq.{unique}")
    out = await StreamReader.open(js, f"{unique}.out.ok")
    try:
        await js.publish(f"{unique}.in.contract", b"<xml/>", headers={"ce-id": "bad-1"})
        bad = contract("DE") | {"sites": [{"site_id": "S1", "postcode": "1", "city": "X"}]}
        await js.publish(f"{unique}.in.contract", json.dumps(bad).encode(), headers={"ce-id": "bad-2"})
        await js.publish(f"{unique}.in.contract", json.dumps(contract("DE")).encode(), headers={"ce-id": "good"})
        await out.wait_for(1)
        records = {m.headers["ce-id"]: m for m in await dlq.wait_for(2)}
        assert records["bad-1"].headers["Hub-Dlq-Error-Class"] == "UnparseablePayload"
        assert records["bad-1"].data == b"<xml/>"  # the original payload, untouched
        assert records["bad-2"].headers["Hub-Dlq-Error-Class"] == "ValidationFailed"
        assert "sites[0].postcode" in records["bad-2"].headers["Hub-Dlq-Error"]
        assert records["bad-2"].headers["Hub-Dlq-Subject"] == f"{unique}.in.contract"
        assert records["bad-2"].headers["Hub-Dlq-Stream"] == f"IN{unique}"
    finally:
        await hub.stop()


async def test_http_call_rejection_is_dead_lettered_but_a_server_error_is_redelivered(
        tmp_path: Path, nats_url: str, js, unique: str):
    """A 4xx cannot succeed as it is (DLQ); a 5xx is an outage (redelivered later, never DLQ'd)."""
    async with HttpSink() as sink:
        project = project_from(tmp_path, config_for(unique, f"""
    endpoints:
      target: {{adapter: http, base_url: "{sink.url}", path: "/r/{{id}}"}}
        """), f"""
        name: {unique}
        source: {{subject: {unique}.in.x}}
        steps:
          - call: {{endpoint: target, timeout: 2s}}
        on_error: {{retry: [], redeliver: [200ms, 200ms]}}
        """)
        hub = await started_hub(project, nats_url)
        dlq = await StreamReader.open(js, f"dlq.{unique}")
        try:
            sink.fail_next(1, status=422, body="tariff code unknown")
            await js.publish(f"{unique}.in.x", json.dumps({"id": "a"}).encode(), headers={"ce-id": "a"})
            rec = (await dlq.wait_for(1))[0]
            assert rec.headers["Hub-Dlq-Error-Class"] == "TargetRejected"
            assert "tariff code unknown" in rec.headers["Hub-Dlq-Error"]
            sink.reset()
            sink.fail_next(2, status=500)
            await js.publish(f"{unique}.in.x", json.dumps({"id": "b"}).encode(), headers={"ce-id": "b"})
            got = await sink.wait_for(3)  # two 500s, then the redelivery that succeeds
            assert [r.path for r in got] == ["/r/b"] * 3
            assert got[-1].headers["Idempotency-Key"] == "b"


            await wait_until(lambda: settled(js, f"IN{unique}", unique))
            assert len(dlq.messages) == 1
        finally:
            await hub.stop()


async def test_request_reply_flow_answers_and_reports_errors(tmp_path: Path, nats_url: str, unique: str):
    """A request source answers with the transformed payload, and a broken request gets an error reply."""
    project = project_from(tmp_path, config_for(unique), f"""
        name: {unique}
        source: {{request: {unique}.quote}}
        schema: MeterReading
        steps:
          - transform: readings.to_crm_reading
          - reply
    """)
    hub = await started_hub(project, nats_url)
    nc = await nats.connect(nats_url)
    try:
        reading = {"meter_id": "M1", "site_id": "S1", "read_at": "2026-11-01T00:00:00+00:00", "value": 2.5,
                   "unit": "kWh", "source": "manual"}
        answer = json.loads((await nc.request(f"{unique}.quote", json.dumps(reading).encode(), timeout=5)).data)
        assert answer["meter"] == "M1" and answer["quantity"] == 2.5
        broken = json.loads((await nc.request(f"{unique}.quote", b'{"meter_id": 1}', timeout=5)).data)
        assert broken["error"]["class"] == "ValidationFailed" and "site_id" in broken["error"]["message"]
    finally:
        await nc.close()
        await hub.stop()


async def test_streams_are_declared_idempotently(tmp_path: Path, nats_url: str, js, unique: str):
    """Running start twice changes nothing; a changed limit is applied as an update."""
    project = project_from(tmp_path, config_for(unique))
    first = await ensure_streams(js, project.config)
    again = await ensure_streams(js, project.config)
    assert first[f"IN{unique}"] in ("created",) and again[f"IN{unique}"] == "unchanged"
    changed = project_from(tmp_path, config_for(unique).replace(f'["{unique}.in.>"]}}', f'["{unique}.in.>"], max_age: 1d}}'))
    assert (await ensure_streams(js, changed.config))[f"IN{unique}"] == "updated"
    assert (await js.stream_info(f"IN{unique}")).config.max_age == 86400


async def test_graceful_stop_hands_back_what_it_has_not_finished(tmp_path: Path, nats_url: str, js, unique: str):
    """On stop, calls under way finish and are acked; unstarted messages are handed back at once,
    not left to wait for ack_wait; a new runner then does the rest, each message once."""
    async with HttpSink() as sink:
        sink.set_delay(0.2)
        project = project_from(tmp_path, config_for(unique, f"""
    endpoints:
      target: {{adapter: http, base_url: "{sink.url}"}}
        """), f"""
        name: {unique}
        source: {{subject: {unique}.in.x}}
        steps:
          - call: {{endpoint: target}}
        limits: {{concurrency: 2}}
        ack_wait: 60s
        """)
        await ensure_streams(js, project.config)
        for i in range(40):
            await js.publish(f"{unique}.in.x", json.dumps({"i": i}).encode(), headers={"ce-id": f"m{i}"})
        hub = await started_hub(project, nats_url)
        await sink.wait_for(2)
        await hub.stop()
        done_first = hub.runners[unique].stats.acked
        assert 2 <= done_first < 40
        sink.set_delay(0)
        hub2 = await started_hub(project, nats_url)
        try:
            # ack_wait is 60 s: the rest arriving within wait_for's 10 s proves they were handed back
            got = await sink.wait_for(40)
            ids = [r.body["i"] for r in got]
            assert sorted(set(ids)) == list(range(40))
            await wait_until(lambda: settled(js, f"IN{unique}", unique))
            assert hub.runners[unique].stats.acked + hub2.runners[unique].stats.acked == 40
        finally:
            await hub2.stop()


async def test_a_subject_made_from_the_payload_that_no_stream_captures_is_dead_lettered_by_name(
        tmp_path: Path, nats_url: str, js, unique: str):
    """`publish: out.{kind}` with a kind config never planned for: the DLQ record names the subject."""
    project = project_from(tmp_path, f"""
    streams:
      - {{name: IN{unique}, subjects: ["{unique}.in.>"]}}
      - {{name: OUT{unique}, subjects: ["{unique}.out.*"]}}
    """, f"""
    name: {unique}
    source: {{subject: {unique}.in.x}}
    steps:
      - publish: {unique}.out.{{kind}}
    """)
    hub = await started_hub(project, nats_url)
    try:
        dlq = await StreamReader.open(js, f"dlq.{unique}")
        out = await StreamReader.open(js, f"{unique}.out.*")
        await js.publish(f"{unique}.in.x", b'{"kind": "a.b"}', headers={"ce-id": "nested"})
        await js.publish(f"{unique}.in.x", b'{"kind": "ok"}', headers={"ce-id": "fine"})
        record = (await dlq.wait_for(1))[0]
        assert record.headers["Hub-Dlq-Error-Class"] == "RoutingError"
        assert f"no stream captures '{unique}.out.a.b'" in record.headers["Hub-Dlq-Error"]
        assert (await out.wait_for(1))[0].subject == f"{unique}.out.ok"
    finally:
        await hub.stop()
